"""Kubernetes manifests checked offline (no cluster, no kustomize binary): tooling for the deploy tests.

* `kustomize_build(directory)`: renders a kustomization the way `kubectl apply -k` does, for the
  features deploy/k8s uses (resources, configMapGenerator with its name hash, images, strategic-merge
  patches); any other feature fails loudly.
* `validate(obj)`: a strict check against the Kubernetes OpenAPI models of the official `kubernetes`
  client (unknown fields and wrong types fail), then the client's own deserialization.
* `reference_errors(objects)`: cross-object links kubectl would not check (selectors, ports,
  ConfigMap keys, volumes, HPA targets).

    objects = kustomize_build(BASE)
    assert not [e for o in objects for e in validate(o)] and not reference_errors(objects)
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "k8s" / "base"
GPU = ROOT / "deploy" / "k8s" / "overlays" / "gpu"

MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("v1", "Service"): "V1Service",
    ("v1", "Pod"): "V1Pod",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}
_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images", "patches"}
_PRIMITIVES = {"str": str, "int": int, "float": (int, float), "bool": bool, "datetime": str, "date": str}


def _model_class(name: str):
    from kubernetes import client

    return getattr(client, name)


def schema_errors(data, type_name: str, path: str = "") -> list[str]:
    """Strict check of `data` against a kubernetes-client model: unknown fields and wrong types fail."""
    if type_name == "object":  # IntOrString, Quantity-like and free-form fields
        return []
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(data, list):
            return [f"{path}: expected a list, got {type(data).__name__}"]
        return [e for i, v in enumerate(data) for e in schema_errors(v, m.group(1), f"{path}[{i}]")]
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        if not isinstance(data, dict):
            return [f"{path}: expected a map, got {type(data).__name__}"]
        return [e for k, v in data.items() for e in schema_errors(v, m.group(1), f"{path}.{k}")]
    if type_name in _PRIMITIVES:
        ok = isinstance(data, _PRIMITIVES[type_name]) and not (type_name in ("int", "float")
                                                               and isinstance(data, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {type(data).__name__} {data!r}"]
    klass = _model_class(type_name)
    if not isinstance(data, dict):
        return [f"{path}: expected {type_name} (a map), got {type(data).__name__}"]
    fields = {json_key: attr for attr, json_key in klass.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            errors.append(f"{path}.{key}: unknown field of {type_name}" + (f" (did you mean {hint[0]}?)" if hint else ""))
        elif value is not None:
            errors += schema_errors(value, klass.openapi_types[fields[key]], f"{path}.{key}")
    return errors


def validate(obj: dict) -> list[str]:
    """Schema errors of one manifest, then the client's own deserialization (required fields, enums)."""
    from kubernetes import client

    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in MODELS:
        return [f"{key}: no model for this apiVersion/kind"]
    name = f"{obj['kind']}/{obj.get('metadata', {}).get('name')}"
    errors = schema_errors(obj, MODELS[key], name)
    if not errors:
        class _Response:
            data = json.dumps(obj)
        try:
            client.ApiClient().deserialize(_Response(), MODELS[key])
        except (ValueError, TypeError) as e:
            errors.append(f"{name}: {e}")
    return errors


def _smp(base, patch):
    """Strategic merge patch, the subset these manifests use: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _smp(out[k], v) if k in out else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [dict(x) for x in base]
        for item in patch:
            match = [i for i, x in enumerate(out) if x["name"] == item["name"]]
            if match:
                out[match[0]] = _smp(out[match[0]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _pod_specs(obj: dict) -> list[dict]:
    if obj["kind"] == "Pod":
        return [obj["spec"]]
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [obj["spec"]["template"]["spec"]]
    return []


def kustomize_build(directory: Path) -> list[dict]:
    """Renders a kustomization the way `kubectl apply -k` does, for the features used here (others fail)."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(k) - _KUSTOMIZATION_KEYS
    assert not unsupported, f"{directory}: kustomization features this renderer does not model: {unsupported}"
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    objects: list[dict] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            objects += kustomize_build(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    renamed = {}
    for gen in k.get("configMapGenerator", []):
        assert set(gen) <= {"name", "files", "literals"}, gen
        data = {}
        for entry in gen.get("files", []):
            key, _, rel = entry.rpartition("=") if "=" in entry else (os.path.basename(entry), "", entry)
            data[key] = (directory / rel).read_text()
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
        renamed[gen["name"]] = f"{gen['name']}-{digest}"
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": renamed[gen["name"]]},
                        "data": data})
    for obj in objects:  # name references to generated ConfigMaps
        for spec in _pod_specs(obj):
            for vol in spec.get("volumes", []):
                if "configMap" in vol and vol["configMap"]["name"] in renamed:
                    vol["configMap"]["name"] = renamed[vol["configMap"]["name"]]
    for patch in k.get("patches", []):
        assert set(patch) == {"path"}, f"only patch files naming their target are modelled: {patch}"
        p = yaml.safe_load((directory / patch["path"]).read_text())
        targets = [o for o in objects if o["kind"] == p["kind"] and o["metadata"]["name"] == p["metadata"]["name"]]
        assert len(targets) == 1, f"patch {patch['path']} matches {len(targets)} objects"
        targets[0].update(_smp(targets[0], p))
    for img in k.get("images", []):
        for obj in objects:
            for spec in _pod_specs(obj):
                for c in spec.get("containers", []) + spec.get("initContainers", []):
                    name, _, tag = c["image"].partition(":")
                    if name == img["name"]:
                        c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = k["namespace"]
    return objects


def one_object(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _port_names(container: dict) -> tuple[set, set]:
    ports = container.get("ports", [])
    return {p["name"] for p in ports if "name" in p}, {p["containerPort"] for p in ports}


def reference_errors(objects: list[dict]) -> list[str]:
    """Cross-object checks kubectl would not catch until pods fail to schedule, start or get traffic."""
    errors = []
    by_kind = lambda kind: [o for o in objects if o["kind"] == kind]  # noqa: E731
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in by_kind("ConfigMap")}
    claims = {o["metadata"]["name"] for o in by_kind("PersistentVolumeClaim")}
    deployments = {o["metadata"]["name"]: o for o in by_kind("Deployment")}
    namespaces = {o.get("metadata", {}).get("namespace") for o in objects if o["kind"] != "Namespace"}
    if len(namespaces) != 1:
        errors.append(f"objects are spread over namespaces {namespaces}")
    declared = {o["metadata"]["name"] for o in by_kind("Namespace")}
    if declared and not namespaces <= declared:
        errors.append(f"namespaces {namespaces - declared} are not declared")

    def pod_labels(dep):
        return dep["spec"]["template"]["metadata"].get("labels", {})

    for dep in deployments.values():
        name = dep["metadata"]["name"]
        if not _selects(dep["spec"]["selector"].get("matchLabels", {}), pod_labels(dep)):
            errors.append(f"Deployment/{name}: selector does not match its pod template labels")
    for obj in objects:
        for spec in _pod_specs(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in spec["containers"]:
                names, numbers = _port_names(c)
                for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                    probe = c.get(probe_name)
                    if not probe:
                        continue
                    for handler in ("httpGet", "tcpSocket", "grpc"):
                        if handler in probe:
                            port = probe[handler]["port"]
                            if port not in (names if isinstance(port, str) else numbers):
                                errors.append(f"{where}: {probe_name} port {port!r} is not a container port")
                env = {e["name"] for e in c.get("env", [])}
                for arg in c.get("command", []) + c.get("args", []):
                    for var in re.findall(r"\$\((\w+)\)", arg):
                        if var not in env:
                            errors.append(f"{where}: {arg!r} uses $({var}), which is not in env")
                mounts = {}
                for m in c.get("volumeMounts", []):
                    if m["name"] not in volumes:
                        errors.append(f"{where}: volumeMount {m['name']!r} has no volume")
                    else:
                        mounts[m["mountPath"].rstrip("/")] = volumes[m["name"]]
                # Every file an argument points into a ConfigMap mount must be a key of that ConfigMap.
                for arg in c.get("args", []):
                    _, _, value = arg.partition("=")
                    for mount_path, vol in mounts.items():
                        if "configMap" in vol and value.startswith(mount_path + "/"):
                            key = value[len(mount_path) + 1:]
                            if key not in config_maps.get(vol["configMap"]["name"], {}):
                                errors.append(f"{where}: {arg} names {key!r}, not a key of ConfigMap "
                                              f"{vol['configMap']['name']}")
            for vol in volumes.values():
                if "configMap" in vol:
                    cm = vol["configMap"]["name"]
                    if cm not in config_maps:
                        errors.append(f"{where}: volume {vol['name']} uses missing ConfigMap {cm}")
                    for item in vol["configMap"].get("items", []):
                        if item["key"] not in config_maps.get(cm, {}):
                            errors.append(f"{where}: ConfigMap {cm} has no key {item['key']}")
                if "persistentVolumeClaim" in vol and vol["persistentVolumeClaim"]["claimName"] not in claims:
                    errors.append(f"{where}: volume {vol['name']} uses missing PVC "
                                  f"{vol['persistentVolumeClaim']['claimName']}")
    for svc in by_kind("Service"):
        name = svc["metadata"]["name"]
        targets = [d for d in deployments.values() if _selects(svc["spec"].get("selector", {}), pod_labels(d))]
        if not targets:
            errors.append(f"Service/{name}: selector matches no Deployment's pods")
        for dep in targets:
            names, numbers = set(), set()
            for c in dep["spec"]["template"]["spec"]["containers"]:
                n, p = _port_names(c)
                names, numbers = names | n, numbers | p
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                if target not in (names if isinstance(target, str) else numbers):
                    errors.append(f"Service/{name}: targetPort {target!r} is not a port of Deployment/"
                                  f"{dep['metadata']['name']}")
    for hpa in by_kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        dep = deployments.get(ref["name"])
        if ref.get("apiVersion") != "apps/v1" or ref["kind"] != "Deployment" or dep is None:
            errors.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: target {ref} does not exist")
            continue
        uses_cpu = any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", []))
        for c in dep["spec"]["template"]["spec"]["containers"]:
            if uses_cpu and "cpu" not in c.get("resources", {}).get("requests", {}):
                errors.append(f"HPA on CPU utilization needs a CPU request on container {c['name']}")
        if hpa["spec"]["minReplicas"] > hpa["spec"]["maxReplicas"]:
            errors.append("HPA minReplicas > maxReplicas")
    for pdb in by_kind("PodDisruptionBudget"):
        if not any(_selects(pdb["spec"]["selector"].get("matchLabels", {}), pod_labels(d))
                   for d in deployments.values()):
            errors.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: selector matches no pods")
    return errors
