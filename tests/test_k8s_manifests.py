"""deploy/k8s: the rendered manifests are valid Kubernetes objects, linked to each other and to the
TF Serving configuration (tooling in tests/k8s_manifests.py)."""
import copy
import importlib
import json
import re

import pytest
import yaml

from k8s_manifests import (BASE, GPU, MODELS, ROOT, kustomize_build, one_object, reference_errors, schema_errors,
                           validate)


@pytest.fixture(scope="module")
def base_objects():
    return kustomize_build(BASE)


@pytest.fixture(scope="module")
def gpu_objects():
    return kustomize_build(GPU)


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_manifests_validate_against_kubernetes_models(overlay, base_objects, gpu_objects):
    objects = base_objects if overlay == "base" else gpu_objects
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["Namespace", "PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "ConfigMap"])
    errors = [e for o in objects for e in validate(o)]
    assert not errors, "\n".join(errors)
    assert not reference_errors(objects), "\n".join(reference_errors(objects))


def test_every_manifest_file_is_valid():
    """Each YAML under deploy/k8s: a resource or patch of a kustomization, or a standalone manifest."""
    files = sorted(p for p in (ROOT / "deploy" / "k8s").rglob("*.yaml") if p.name != "kustomization.yaml")
    listed = set()
    for kfile in (ROOT / "deploy" / "k8s").rglob("kustomization.yaml"):
        k = yaml.safe_load(kfile.read_text())
        listed |= {(kfile.parent / r).resolve() for r in k.get("resources", [])}
        listed |= {(kfile.parent / p["path"]).resolve() for p in k.get("patches", [])}
    for path in files:
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            if doc.get("kind") == "TFJob":  # a Kubeflow CRD: checked by tfjob_errors below
                assert not tfjob_errors(doc), (path, tfjob_errors(doc))
            elif path.parent == GPU:  # patches are partial objects: no unknown fields, right types
                assert not schema_errors(doc, MODELS[(doc["apiVersion"], doc["kind"])], path.name)
            else:
                assert not validate(doc), (path, validate(doc))
        if path.resolve() not in listed:
            assert path.name == "model-loader-pod.yaml", f"{path} is in no kustomization"


def test_model_loader_pod_mounts_the_serving_pvc(base_objects):
    pod = yaml.safe_load((BASE / "model-loader-pod.yaml").read_text())
    assert not validate(pod)
    assert not reference_errors(base_objects + [pod])
    dep = one_object(base_objects, "Deployment")
    serving_mounts = {m["name"]: m["mountPath"] for m in dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    pvc = one_object(base_objects, "PersistentVolumeClaim")["metadata"]["name"]
    claim_volume = [v["name"] for v in pod["spec"]["volumes"] if v["persistentVolumeClaim"]["claimName"] == pvc]
    loader_mount = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == claim_volume[0]][0]
    assert loader_mount["mountPath"] == serving_mounts["models"] and not loader_mount.get("readOnly")
    assert pod["metadata"]["namespace"] == dep["metadata"]["namespace"]


def _serving_container(objects) -> dict:
    return one_object(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_serving_deployment_matches_tf_serving_config(base_objects):
    from pipeline import configs

    c = _serving_container(base_objects)
    assert c["image"] == "tensorflow/serving:2.16.1"
    args = c["args"]
    for flag in ("--model_config_file=/config/models.config", "--batching_parameters_file=/config/batching_parameters.txt",
                 "--monitoring_config_file=/config/monitoring.config", "--port=8500", "--rest_api_port=8501"):
        assert flag in args
    assert any(a.startswith("--enable_batching") for a in args)
    cm = one_object(base_objects, "ConfigMap")["data"]
    model_name = re.search(r'name:\s*"([^"]+)"', cm["models.config"]).group(1)
    base_path = re.search(r'base_path:\s*"([^"]+)"', cm["models.config"]).group(1)
    assert model_name == configs.MODEL_NAME == "tower_recs"
    assert base_path == f"/models/{model_name}"
    pvc_mount = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "models"][0]
    assert base_path.startswith(pvc_mount + "/")
    assert c["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{model_name}"
    assert c["readinessProbe"]["httpGet"]["port"] == "http" and c["livenessProbe"]["tcpSocket"]["port"] == "grpc"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    svc_ports = {p["name"]: p["port"] for p in one_object(base_objects, "Service")["spec"]["ports"]}
    assert svc_ports == {"grpc": 8500, "http": 8501}
    metrics_path = re.search(r'path:\s*"([^"]+)"', cm["monitoring.config"]).group(1)
    annotations = one_object(base_objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == metrics_path and annotations["prometheus.io/port"] == "8501"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    hpa = one_object(base_objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize("name", ["models.config", "batching_parameters.txt", "monitoring.config"])
def test_configmap_files_match_serving_config(name):
    serving = ROOT / "serving" / "config" / name
    if not serving.exists():
        pytest.skip(f"{serving} not written yet")
    assert (BASE / "config" / name).read_text() == serving.read_text(), (
        f"copy serving/config/{name} to deploy/k8s/base/config/{name}")


def test_gpu_overlay(base_objects, gpu_objects):
    c = _serving_container(gpu_objects)
    assert c["image"] == "tensorflow/serving:2.16.1-gpu"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    spec = one_object(gpu_objects, "Deployment")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    base_c = _serving_container(base_objects)
    # Everything but image/resources is the base's: same args, probes, mounts.
    for key in ("args", "ports", "readinessProbe", "livenessProbe", "startupProbe", "volumeMounts", "command"):
        assert c[key] == base_c[key], key
    assert one_object(gpu_objects, "ConfigMap") == one_object(base_objects, "ConfigMap")


def _mutated(objects, kind, mutate):
    objects = copy.deepcopy(objects)
    mutate(one_object(objects, kind))
    return objects


def test_validator_rejects_typo_and_wrong_types(base_objects):
    dep = copy.deepcopy(one_object(base_objects, "Deployment"))
    spec = dep["spec"]["template"]["spec"]
    spec["contianers"] = spec.pop("containers")
    errors = validate(dep)
    assert any("spec.template.spec.contianers: unknown field" in e and "containers" in e for e in errors), errors

    dep = copy.deepcopy(one_object(base_objects, "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    assert any("httpGet.pathh" in e for e in validate(dep))

    dep = copy.deepcopy(one_object(base_objects, "Deployment"))
    dep["spec"]["replicas"] = "2"
    assert any("spec.replicas: expected int" in e for e in validate(dep))

    hpa = copy.deepcopy(one_object(base_objects, "HorizontalPodAutoscaler"))
    hpa["spec"]["targetCPUUtilizationPercentage"] = 70  # autoscaling/v1 field in a v2 object
    assert any("targetCPUUtilizationPercentage: unknown field" in e for e in validate(hpa))

    svc = copy.deepcopy(one_object(base_objects, "Service"))
    del svc["spec"]["ports"][0]["port"]  # required
    assert validate(svc)


def test_reference_checks_catch_broken_links(base_objects):
    def svc_selector(s):
        s["spec"]["selector"] = {"app.kubernetes.io/name": "tower-recs-servin"}

    def probe_port(d):
        d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "rest"

    def config_key(d):
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        args[args.index("--model_config_file=/config/models.config")] = "--model_config_file=/config/model.config"

    def hpa_target(h):
        h["spec"]["scaleTargetRef"]["name"] = "tower-recs"

    for kind, mutate, expected in [("Service", svc_selector, "selector matches no"),
                                   ("Deployment", probe_port, "port 'rest'"),
                                   ("Deployment", config_key, "'model.config'"),
                                   ("HorizontalPodAutoscaler", hpa_target, "does not exist")]:
        errors = reference_errors(_mutated(base_objects, kind, mutate))
        assert any(expected in e for e in errors), (kind, expected, errors)


def test_renderer_applies_generator_hash_and_patches(base_objects, gpu_objects):
    cm = one_object(base_objects, "ConfigMap")["metadata"]["name"]
    assert re.fullmatch(r"tower-recs-serving-config-[0-9a-f]{10}", cm)
    vols = one_object(base_objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": cm}} in vols
    assert all(o["metadata"].get("namespace") == "tower-recs" for o in gpu_objects if o["kind"] != "Namespace")
    assert one_object(gpu_objects, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] <= \
        one_object(base_objects, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]


# -- the Trainer as a Kubeflow TFJob (deploy/k8s/training) -------------------------------------------
TRAINING = ROOT / "deploy" / "k8s" / "training"
# Fields of the Training Operator's kubeflow.org/v1 TFJob (a CRD: no model in the kubernetes client).
_TFJOB_SPEC = {"runPolicy", "tfReplicaSpecs", "successPolicy", "enableDynamicWorker"}
_RUN_POLICY = {"cleanPodPolicy", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished",
               "schedulingPolicy", "suspend"}
_REPLICA_TYPES = {"Chief", "Master", "Worker", "PS", "Evaluator"}
_REPLICA_SPEC = {"replicas", "restartPolicy", "template"}


def tfjob_errors(job: dict) -> list[str]:
    """TFJob fields by the operator's schema; each replica's pod template checked as a V1PodTemplateSpec."""
    from kubernetes import client

    errors = []
    if (job.get("apiVersion"), job.get("kind")) != ("kubeflow.org/v1", "TFJob"):
        errors.append(f"not a kubeflow.org/v1 TFJob: {job.get('apiVersion')} {job.get('kind')}")
    spec = job.get("spec", {})
    errors += [f"spec.{k}: unknown TFJob field" for k in set(spec) - _TFJOB_SPEC]
    errors += [f"spec.runPolicy.{k}: unknown field" for k in set(spec.get("runPolicy", {})) - _RUN_POLICY]
    for kind, replica in spec.get("tfReplicaSpecs", {}).items():
        if kind not in _REPLICA_TYPES:
            errors.append(f"tfReplicaSpecs.{kind}: not a TFJob replica type {sorted(_REPLICA_TYPES)}")
        errors += [f"{kind}.{k}: unknown field" for k in set(replica) - _REPLICA_SPEC]
        if replica.get("restartPolicy") not in ("Always", "OnFailure", "Never", "ExitCode"):
            errors.append(f"{kind}.restartPolicy: {replica.get('restartPolicy')!r}")
        errors += schema_errors(replica["template"], "V1PodTemplateSpec", f"{kind}.template")

        class _Response:
            data = json.dumps(replica["template"])
        try:
            client.ApiClient().deserialize(_Response(), "V1PodTemplateSpec")
        except (ValueError, TypeError) as e:
            errors.append(f"{kind}.template: {e}")
        # The operator finds the training container by this name (its ports and TF_CONFIG go there).
        if "tensorflow" not in [c["name"] for c in replica["template"]["spec"]["containers"]]:
            errors.append(f"{kind}: no container named 'tensorflow'")
    return errors


@pytest.fixture(scope="module")
def tfjob():
    objects = kustomize_build(TRAINING)
    assert [o["kind"] for o in objects] == ["TFJob"]
    return objects[0]


def test_tfjob_runs_the_trainer_executor_in_the_pipeline_image(tfjob):
    from pipeline import kubeflow_runner
    from trainer import distribution

    assert not tfjob_errors(tfjob), tfjob_errors(tfjob)
    assert tfjob["metadata"]["namespace"] == "tower-recs"
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert replicas["Chief"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    for kind in ("Chief", "Worker"):
        c = replicas[kind]["template"]["spec"]["containers"][0]
        assert c["image"].split(":")[0] == kubeflow_runner.DEFAULT_IMAGE.split(":")[0]
        assert c["command"] == ["python", "-m", "tfx.scripts.run_executor"]
        executor = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--executor_class_path="))
        module, _, name = executor.rpartition(".")
        assert getattr(importlib.import_module(module), name)  # the class exists in the image's TFX
        env = {e["name"] for e in c["env"]}
        assert distribution.CONNECT_TIMEOUT_ENV in env
        # Every $(VAR) in args is defined in env (Kubernetes leaves undefined ones as literal text).
        assert set(re.findall(r"\$\((\w+)\)", " ".join(c["args"]))) <= env
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_tfjob_checker_rejects_typos(tfjob):
    broken = copy.deepcopy(tfjob)
    broken["spec"]["tfReplicaSpecs"]["Workers"] = broken["spec"]["tfReplicaSpecs"].pop("Worker")
    broken["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    errors = tfjob_errors(broken)
    assert any("Workers: not a TFJob replica type" in e for e in errors)
    assert any("imagePullPolicyy: unknown field" in e for e in errors)
