"""Kubeflow / Kubernetes deployment, checked offline: no cluster, no Docker, no kustomize binary.

* The KFP v2 compile (`pipeline/kubeflow_runner.py`), through its CLI (a subprocess) and its Python
  API: every component of `create_pipeline(...)` is in the spec with the same dependency edges, runs
  in the configured image with the Beam args, and the pipeline root is set; the Vertex PipelineJob
  JSON and the KFP package YAML parse as the protos the clients send.
* Local and Kubeflow pipelines are the same definition (ids, edges, component types).
* `deploy/k8s`: a small kustomize renderer (resources, configMapGenerator, images, strategic-merge
  patches) and a strict validator against the Kubernetes OpenAPI models of the official `kubernetes`
  client (unknown fields and wrong types fail), plus cross-references between the objects.
* The pipeline image's Dockerfile and .dockerignore.
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "k8s" / "base"
GPU = ROOT / "deploy" / "k8s" / "overlays" / "gpu"

IMAGE = "registry.example.com/tower-recs-pipeline:test"
BUCKET = "gs://test-bucket"
PIPELINE_ROOT = "gs://test-bucket/pipeline_root/tower-recs"
BEAM_ARGS = ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west1",
             "--temp_location=gs://test-bucket/tmp"]
TFX_ENTRYPOINT = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
# The pipeline's override mechanism (pipeline/overrides.py) reaches the compiled components' parameters.
CONFIG_OVERRIDES = {"TOWER_RECS_MODEL_TEMPERATURE": "0.05", "TOWER_RECS_EVAL_KS": "[10, 50]",
                    "TOWER_RECS_SERVING_CHECK_LATENCY_CALLS": "7"}


def _cli_args(output: Path) -> list[str]:
    return ["--output", str(output), "--image", IMAGE, "--bucket", BUCKET, "--pipeline_root", PIPELINE_ROOT,
            "--epochs", "2", "--train_steps", "100", "--eval_steps", "10", "--", *BEAM_ARGS]


def _subprocess_env(tmp: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    # The defaults under test must not come from a developer's shell.
    for name in ("TOWER_RECS_IMAGE", "TOWER_RECS_BUCKET", "TOWER_RECS_KFP_PIPELINE_ROOT", "TOWER_RECS_KFP_DATA",
                 "TOWER_RECS_KFP_SERVING_MODEL_DIR", "TOWER_RECS_KFP_BEAM_PIPELINE_ARGS"):
        env.pop(name, None)
    if tmp is not None:  # the local runner's outputs and data (configs.py reads them at import)
        env.update(TOWER_RECS_OUTPUT_DIR=str(tmp / "outputs"), TOWER_RECS_DATA=str(tmp / "data"))
        env.update(CONFIG_OVERRIDES)
    return env


# ---------------------------------------------------------------------------------------------
# Compile. Importing TFX costs ~40 s of CPU, so it happens once, in one child process that runs
# (1) the CLI exactly as `python -m pipeline.kubeflow_runner ...` (runpy, as __main__),
# (2) the Python API: build(settings) + compile_pipeline(...), and (3) local_runner.build(),
# and reports facts read off the pipeline objects. This process then checks the files against them.
# ---------------------------------------------------------------------------------------------

_CHILD = r'''
import json, os, runpy, sys
out, cli_argv, settings = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])

sys.argv = ["pipeline.kubeflow_runner", *cli_argv]          # 1. the CLI, as `python -m` runs it
try:
    runpy.run_module("pipeline.kubeflow_runner", run_name="__main__", alter_sys=True)
except SystemExit as e:
    if e.code not in (0, None):
        raise

from pipeline import kubeflow_runner, local_runner            # 2. the Python API

kfp = kubeflow_runner.build(kubeflow_runner.KubeflowSettings(**settings))
kubeflow_runner.compile_pipeline(kfp, settings["image"], os.path.join(out, "api.json"),
                                 os.path.join(out, "api.yaml"))
local = local_runner.build()                                  # 3. the local pipeline


def facts(p):
    return {
        "ids": [c.id for c in p.components],
        "edges": {c.id: sorted(u.id for u in c.upstream_nodes) for c in p.components},
        "shape": [[c.id, type(c).__name__, type(getattr(c, "executor_spec", None)).__name__,
                   getattr(getattr(c, "executor_spec", None), "executor_class", type(None)).__name__,
                   sorted(getattr(c, "exec_properties", {}) or {})] for c in p.components],
        "name": p.pipeline_info.pipeline_name,
        "root": p.pipeline_info.pipeline_root,
        "beam": p.beam_pipeline_args,
        "has_metadata_config": p.metadata_connection_config is not None,
    }


with open(os.path.join(out, "facts.json"), "w") as f:
    json.dump({"kfp": facts(kfp), "local": facts(local)}, f)
'''


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp")
    settings = dict(image=IMAGE, bucket=BUCKET, pipeline_root=PIPELINE_ROOT, beam_pipeline_args=BEAM_ARGS,
                    epochs=2, train_steps=100, eval_steps=10)
    res = subprocess.run([sys.executable, "-c", _CHILD, str(out), json.dumps(_cli_args(out / "cli.json")),
                          json.dumps(settings)], cwd=ROOT, env=_subprocess_env(out), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[res.stderr.rfind("Traceback"):][-4000:] or res.stdout[-2000:]
    facts = json.loads((out / "facts.json").read_text())
    return out, facts, res.stdout


@pytest.fixture(scope="module")
def runner():
    from pipeline import kubeflow_runner  # light: TFX is imported only when compiling

    return kubeflow_runner


def _task_nodes(tasks, ids) -> dict[str, str]:
    """Task name -> component id: the same, or `<id>-<channel>-resolver` for the tasks KFP v2 makes of a
    Resolver node (one per output channel)."""
    mapping = {}
    for task in tasks:
        owners = [i for i in ids if task == i or task.startswith(i + "-")]
        assert owners, f"task {task} is not a node of create_pipeline(...)"
        mapping[task] = max(owners, key=len)
    return mapping


def _check_spec(job: dict, facts: dict) -> None:
    """The compiled PipelineJob holds exactly the pipeline's nodes, edges, image and Beam args."""
    spec = job["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    node_of = _task_nodes(tasks, facts["ids"])
    assert set(node_of.values()) == set(facts["ids"]), "every node of create_pipeline(...) is compiled"
    kinds = {cid: kind for cid, kind, *_ in facts["shape"]}
    depends = {cid: set() for cid in facts["ids"]}
    for task, body in tasks.items():
        depends[node_of[task]] |= {node_of[d] for d in body.get("dependentTasks", [])} - {node_of[task]}
    assert depends == {cid: set(up) for cid, up in facts["edges"].items()}, "same dependency edges"
    executors = spec["deploymentSpec"]["executors"]
    containers = 0
    for task, body in tasks.items():
        executor = executors[spec["components"][body["componentRef"]["name"]]["executorLabel"]]
        if kinds[node_of[task]] in ("Resolver", "Importer"):  # run by the KFP driver, no container
            assert set(executor) <= {"resolver", "importer"}, (task, executor)
            continue
        container = executor["container"]
        containers += 1
        assert container["image"] == IMAGE, task
        assert container["command"] == TFX_ENTRYPOINT, task
        args = container["args"]
        assert args[-len(BEAM_ARGS):] == BEAM_ARGS, (task, args)
        assert not any("direct_running_mode" in a for a in args), "'--' args replace the default Beam args"
    assert containers >= len(facts["ids"]) - sum(k in ("Resolver", "Importer") for k in kinds.values())
    assert job["runtimeConfig"]["gcsOutputDirectory"] == PIPELINE_ROOT
    assert spec["pipelineInfo"]["name"] == facts["name"]
    assert spec["schemaVersion"] == "2.1.0"

    text = json.dumps(job)
    # Paths in the spec are bucket URIs or paths inside the image, never this checkout's.
    assert str(ROOT) not in text
    assert f'"{BUCKET}/data/interactions"' in text and f'"{BUCKET}/data/items"' in text
    assert f"{BUCKET}/serving_model/tower_recs" in text
    ignored = _dockerignore_patterns()
    in_image = set(re.findall(r"/pipeline/[\w./-]+", text))
    assert {"/pipeline/schema/interactions/schema.pbtxt", "/pipeline/schema/items/schema.pbtxt",
            "/pipeline/models/minilm/preprocess", "/pipeline/models/minilm/encoder"} <= in_image
    for path in in_image:
        rel = path[len("/pipeline/"):]
        if rel.startswith("models/minilm"):
            continue  # built in the image by the Dockerfile (see test_dockerfile_builds_encoder_where_runner_points)
        assert (ROOT / rel).exists(), path
        assert not _ignored(rel, ignored), f"{rel} is referenced by the spec but excluded by .dockerignore"


def _check_kfp_package(path: Path, facts: dict) -> None:
    """The YAML package parses exactly as `kfp.Client().create_run_from_pipeline_package` reads it."""
    from kfp.client import client as kfp_client

    doc = kfp_client._extract_pipeline_yaml(str(path))  # what create_run_from_pipeline_package sends
    assert set(_task_nodes(doc.pipeline_spec.root.dag.tasks, facts["ids"]).values()) == set(facts["ids"])
    assert doc.pipeline_spec.default_pipeline_root == PIPELINE_ROOT
    assert doc.pipeline_spec.schema_version == "2.1.0"


def _check_pipeline_job_proto(path: Path) -> None:
    """The JSON is a valid PipelineJob (what aiplatform.PipelineJob(template_path=...) loads)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    job = json_format.Parse(path.read_text(), pipeline_spec_pb2.PipelineJob())  # unknown fields raise
    assert job.runtime_config.gcs_output_directory == PIPELINE_ROOT


def test_compile_python_api(compiled):
    out, facts, _ = compiled
    _check_spec(json.loads((out / "api.json").read_text()), facts["kfp"])
    _check_pipeline_job_proto(out / "api.json")
    _check_kfp_package(out / "api.yaml", facts["kfp"])


def test_compile_cli(compiled):
    out, facts, stdout = compiled
    job = json.loads((out / "cli.json").read_text())
    _check_spec(job, facts["kfp"])
    _check_pipeline_job_proto(out / "cli.json")
    _check_kfp_package(out / "cli.yaml", facts["kfp"])
    summary, _ = json.JSONDecoder().raw_decode(stdout[stdout.index("{"):])  # what the CLI prints
    assert summary["components"] == facts["kfp"]["ids"] and summary["image"] == IMAGE
    # The trainer flags reach the CatalogTrainer's parameters.
    params = job["pipelineSpec"]["root"]["dag"]["tasks"]["CatalogTrainer"]["inputs"]["parameters"]
    assert json.loads(params["train_args"]["runtimeValue"]["constant"]) == {"num_steps": 100}
    assert json.loads(params["eval_args"]["runtimeValue"]["constant"]) == {"num_steps": 10}
    model = json.loads(params["custom_config"]["runtimeValue"]["constant"])["model"]
    assert model["epochs"] == 2
    assert model["encoder_handle"] == "/pipeline/models/minilm/encoder"
    assert model["temperature"] == 0.05                                   # TOWER_RECS_MODEL_TEMPERATURE

    def config_of(task):
        return json.loads(job["pipelineSpec"]["root"]["dag"]["tasks"][task]["inputs"]["parameters"]["config"]
                          ["runtimeValue"]["constant"])

    assert config_of("RetrievalEvaluator")["ks"] == [10, 50]              # TOWER_RECS_EVAL_KS
    assert config_of("ServingCheck")["latency_calls"] == 7                # TOWER_RECS_SERVING_CHECK_LATENCY_CALLS


def test_runner_pipeline_settings(compiled):
    kfp = compiled[1]["kfp"]
    assert kfp["root"] == PIPELINE_ROOT
    assert kfp["beam"] == BEAM_ARGS
    assert not kfp["has_metadata_config"]  # KFP / Vertex manage ML Metadata


def test_local_and_kubeflow_pipelines_are_the_same_definition(compiled):
    local, kfp = compiled[1]["local"], compiled[1]["kfp"]
    assert len(kfp["ids"]) >= 2
    assert local["shape"] == kfp["shape"]  # ids, component classes, executors, parameter names
    assert local["edges"] == kfp["edges"]
    assert local["name"] == kfp["name"]
    assert local["has_metadata_config"] and not kfp["has_metadata_config"]
    assert local["root"] != kfp["root"] and "://" in kfp["root"]


def test_cli_help_is_fast_and_documents_flags():
    res = subprocess.run([sys.executable, "-m", "pipeline.kubeflow_runner", "--help"], cwd=ROOT,
                         env=_subprocess_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for flag in ("--output", "--kfp_package", "--image", "--bucket", "--pipeline_root", "--data_root",
                 "--serving_model_dir", "--beam_pipeline_args", "--epochs", "--train_steps", "--eval_steps"):
        assert flag in res.stdout, flag


def test_cli_exits_2_on_a_local_pipeline_root():
    res = subprocess.run([sys.executable, "-m", "pipeline.kubeflow_runner", "--pipeline_root", "/local/root"],
                         cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--pipeline_root=/local/root is a local path" in res.stderr


@pytest.mark.parametrize("flag,value", [("--pipeline_root", "/local/root"), ("--data_root", "minio://mlpipeline/d")])
def test_cli_rejects_paths_steps_cannot_read(runner, flag, value, capsys):
    assert runner.main(["--output", "unused.json", flag, value]) == 2
    assert flag in capsys.readouterr().err


def test_flags_and_env_defaults(runner, monkeypatch):
    monkeypatch.setenv("TOWER_RECS_BUCKET", "s3://minio-bucket")
    monkeypatch.setenv("TOWER_RECS_IMAGE", "img:env")
    monkeypatch.setenv("TOWER_RECS_KFP_BEAM_PIPELINE_ARGS", "--runner=FlinkRunner --flink_master=flink:8081")
    args, s = runner.parse_args(["--output", "x.json"])
    kwargs = runner.resolve(s)
    assert s.image == "img:env"
    assert kwargs["pipeline_root"].startswith("s3://minio-bucket/pipeline_root/")
    assert kwargs["interactions_path"] == "s3://minio-bucket/data/interactions"
    assert kwargs["serving_model_dir"] == "s3://minio-bucket/serving_model/tower_recs"
    assert kwargs["beam_pipeline_args"] == ["--runner=FlinkRunner", "--flink_master=flink:8081"]
    assert kwargs["metadata_connection_config"] is None
    assert kwargs["interactions_schema_path"] == "/pipeline/schema/interactions/schema.pbtxt"
    _, s = runner.parse_args(["--beam_pipeline_args=--runner=FlinkRunner --environment_type=EXTERNAL",
                              "--", "--parallelism=4"])
    assert runner.resolve(s)["beam_pipeline_args"] == [
        "--runner=FlinkRunner", "--environment_type=EXTERNAL", "--parallelism=4"]
    assert runner._default_kfp_package("outputs/kubeflow/tower-recs.json") == "outputs/kubeflow/tower-recs.yaml"


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests: render (kustomize subset) and validate against the client's models
# ---------------------------------------------------------------------------------------------

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


def _one(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _subset(selector: dict, labels: dict) -> bool:
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
        if not _subset(dep["spec"]["selector"].get("matchLabels", {}), pod_labels(dep)):
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
        targets = [d for d in deployments.values() if _subset(svc["spec"].get("selector", {}), pod_labels(d))]
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
        if not any(_subset(pdb["spec"]["selector"].get("matchLabels", {}), pod_labels(d))
                   for d in deployments.values()):
            errors.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: selector matches no pods")
    return errors


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
            if path.parent == GPU:  # patches are partial objects: no unknown fields, right types
                assert not schema_errors(doc, MODELS[(doc["apiVersion"], doc["kind"])], path.name)
            else:
                assert not validate(doc), (path, validate(doc))
        if path.resolve() not in listed:
            assert path.name == "model-loader-pod.yaml", f"{path} is in no kustomization"


def test_model_loader_pod_mounts_the_serving_pvc(base_objects):
    pod = yaml.safe_load((BASE / "model-loader-pod.yaml").read_text())
    assert not validate(pod)
    assert not reference_errors(base_objects + [pod])
    dep = _one(base_objects, "Deployment")
    serving_mounts = {m["name"]: m["mountPath"] for m in dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    pvc = _one(base_objects, "PersistentVolumeClaim")["metadata"]["name"]
    claim_volume = [v["name"] for v in pod["spec"]["volumes"] if v["persistentVolumeClaim"]["claimName"] == pvc]
    loader_mount = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == claim_volume[0]][0]
    assert loader_mount["mountPath"] == serving_mounts["models"] and not loader_mount.get("readOnly")
    assert pod["metadata"]["namespace"] == dep["metadata"]["namespace"]


def _serving_container(objects) -> dict:
    return _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_serving_deployment_matches_tf_serving_config(base_objects):
    from pipeline import configs

    c = _serving_container(base_objects)
    assert c["image"] == "tensorflow/serving:2.16.1"
    args = c["args"]
    for flag in ("--model_config_file=/config/models.config", "--batching_parameters_file=/config/batching_parameters.txt",
                 "--monitoring_config_file=/config/monitoring.config", "--port=8500", "--rest_api_port=8501"):
        assert flag in args
    assert any(a.startswith("--enable_batching") for a in args)
    cm = _one(base_objects, "ConfigMap")["data"]
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
    svc_ports = {p["name"]: p["port"] for p in _one(base_objects, "Service")["spec"]["ports"]}
    assert svc_ports == {"grpc": 8500, "http": 8501}
    metrics_path = re.search(r'path:\s*"([^"]+)"', cm["monitoring.config"]).group(1)
    annotations = _one(base_objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == metrics_path and annotations["prometheus.io/port"] == "8501"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    hpa = _one(base_objects, "HorizontalPodAutoscaler")
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
    spec = _one(gpu_objects, "Deployment")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    base_c = _serving_container(base_objects)
    # Everything but image/resources is the base's: same args, probes, mounts.
    for key in ("args", "ports", "readinessProbe", "livenessProbe", "startupProbe", "volumeMounts", "command"):
        assert c[key] == base_c[key], key
    assert _one(gpu_objects, "ConfigMap") == _one(base_objects, "ConfigMap")


def _mutated(objects, kind, mutate):
    objects = copy.deepcopy(objects)
    mutate(_one(objects, kind))
    return objects


def test_validator_rejects_typo_and_wrong_types(base_objects):
    dep = copy.deepcopy(_one(base_objects, "Deployment"))
    spec = dep["spec"]["template"]["spec"]
    spec["contianers"] = spec.pop("containers")
    errors = validate(dep)
    assert any("spec.template.spec.contianers: unknown field" in e and "containers" in e for e in errors), errors

    dep = copy.deepcopy(_one(base_objects, "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    assert any("httpGet.pathh" in e for e in validate(dep))

    dep = copy.deepcopy(_one(base_objects, "Deployment"))
    dep["spec"]["replicas"] = "2"
    assert any("spec.replicas: expected int" in e for e in validate(dep))

    hpa = copy.deepcopy(_one(base_objects, "HorizontalPodAutoscaler"))
    hpa["spec"]["targetCPUUtilizationPercentage"] = 70  # autoscaling/v1 field in a v2 object
    assert any("targetCPUUtilizationPercentage: unknown field" in e for e in validate(hpa))

    svc = copy.deepcopy(_one(base_objects, "Service"))
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
    cm = _one(base_objects, "ConfigMap")["metadata"]["name"]
    assert re.fullmatch(r"tower-recs-serving-config-[0-9a-f]{10}", cm)
    vols = _one(base_objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": cm}} in vols
    assert all(o["metadata"].get("namespace") == "tower-recs" for o in gpu_objects if o["kind"] != "Namespace")
    assert _one(gpu_objects, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] <= \
        _one(base_objects, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]


# ---------------------------------------------------------------------------------------------
# The pipeline image
# ---------------------------------------------------------------------------------------------

def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the root Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        instr, _, rest = current.strip().partition(" ")
        lines.append((instr.upper(), rest.strip()))
        current = ""
    return lines


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for instr, rest in _dockerfile():
        if instr == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip().strip("/") for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's matching, closely enough: patterns are anchored at the context root and exclude a
    directory with everything under it; a leading `**/` matches at any depth. No `!` patterns here."""
    assert not any(p.startswith("!") for p in patterns), "exceptions are not modelled"
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        if pat.startswith("**/"):
            subpaths = ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
            if any(fnmatch.fnmatch(p, pat[3:]) for p in subpaths):
                return True
        elif any(fnmatch.fnmatch(p, pat) for p in prefixes):
            return True
    return False


def test_dockerfile_base_env_and_locked_install():
    instrs = _dockerfile()
    assert instrs[0] == ("FROM", "tensorflow/tfx:1.16.0")
    assert [r for i, r in instrs if i == "FROM"] == ["tensorflow/tfx:1.16.0"]
    env = _dockerfile_env()
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    assert env["PYTHONPATH"] == "/pipeline"
    runs = [r for i, r in instrs if i == "RUN"]
    copies = [r for i, r in instrs if i == "COPY"]
    # The lock is copied, exported frozen and installed without re-resolving.
    lock_copy = next(k for k, (i, r) in enumerate(instrs) if i == "COPY" and "uv.lock" in r.split())
    assert {"pyproject.toml", "uv.lock", ".python-version"} <= set(instrs[lock_copy][1].split())
    install = next(k for k, (i, r) in enumerate(instrs) if i == "RUN" and "uv export" in r)
    assert install > lock_copy
    cmd = instrs[install][1]
    assert "--frozen" in cmd and "--no-hashes" in cmd and "uv pip install" in cmd and "--no-deps" in cmd
    # uv itself is pinned, to the Makefile's version.
    pin = re.search(r"uv==\$\{UV_VERSION\}|uv==([\d.]+)", " ".join(runs))
    assert pin, "uv must be installed pinned"
    arg_version = next((r.split("=", 1)[1] for i, r in instrs if i == "ARG" and r.startswith("UV_VERSION=")), None)
    makefile = ROOT / "Makefile"
    if makefile.exists() and arg_version:
        m = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", makefile.read_text(), re.M)
        if m:
            assert arg_version == m.group(1)
    assert any(r.split()[:2] == [".", "/pipeline"] for r in copies), "the project is copied to /pipeline"


def test_dockerfile_builds_encoder_where_runner_points(runner):
    runs = [r for i, r in _dockerfile() if i == "RUN"]
    assert any("python -m encoder.export --out /pipeline/models/minilm" in r for r in runs)
    workdir = [r for i, r in _dockerfile() if i == "WORKDIR"][-1]
    assert workdir == runner.CONTAINER_PROJECT_DIR == _dockerfile_env()["PYTHONPATH"]
    assert f"{runner.CONTAINER_PROJECT_DIR}/{runner.ENCODER_DIR}" == "/pipeline/models/minilm"


def test_dockerignore_keeps_code_and_drops_generated_files():
    patterns = _dockerignore_patterns()
    for rel in (".venv", "outputs", "models", ".git", "data/sample", "pipeline/__pycache__/x.pyc"):
        assert _ignored(rel, patterns), rel
    for rel in ("pyproject.toml", "uv.lock", ".python-version", "pipeline/pipeline.py", "trainer/run_fn.py",
                "encoder/export.py", "data/prepare.py", "schema/items/schema.pbtxt", "serving/__init__.py"):
        assert not _ignored(rel, patterns), rel
    # `docker build -f serving/Dockerfile .` uses the same context and .dockerignore.
    serving = ROOT / "serving" / "Dockerfile"
    if serving.exists() and not (ROOT / "serving" / "Dockerfile.dockerignore").exists():
        text = re.sub(r"\\\n", " ", serving.read_text())
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0].upper() == "COPY" and not any(p.startswith("--from") for p in parts):
                for src in (p for p in parts[1:-1] if not p.startswith("--")):
                    assert not _ignored(src.strip("./"), patterns), f"serving/Dockerfile copies ignored {src}"


def test_locked_export_installs_without_torch():
    """What the Dockerfile installs: `uv export --frozen` of the lock, with torch only under a never-true marker."""
    uv = shutil.which("uv", path=str(ROOT / ".tools" / "uv" / "bin")) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv not installed")
    res = subprocess.run([uv, "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-dev"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0 and "pyenv" in res.stderr:
        pytest.skip(f"uv shim not usable here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    reqs = [ln for ln in res.stdout.splitlines() if ln and not ln.startswith((" ", "#"))]
    pins = {ln.split("==")[0].lower(): ln for ln in reqs}
    assert pins["tfx"].startswith("tfx==1.16.0")
    assert pins["tensorflow"].startswith("tensorflow==2.16.2")
    for heavy in ("torch", "sentence-transformers"):
        if heavy in pins:
            assert "sys_platform == 'never'" in pins[heavy], pins[heavy]
    assert "tower-recs" not in pins


# ---------------------------------------------------------------------------------------------
# deploy/README.md: its commands match the code
# ---------------------------------------------------------------------------------------------

def _readme_commands() -> list[str]:
    text = (ROOT / "deploy" / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for cmd in re.sub(r"\\\n\s*", " ", block).splitlines():
            cmd = cmd.split("  #")[0].strip()
            if cmd and not cmd.startswith("#"):
                commands.append(cmd)
    return commands


def test_readme_runner_commands_parse(runner):
    cmds = [c for c in _readme_commands() if "-m pipeline.kubeflow_runner" in c and "--help" not in c]
    assert len(cmds) >= 3
    env = {"$PIPELINE_IMAGE": IMAGE, "$BUCKET": BUCKET, "$PROJECT": "p", "$REGION": "r"}
    for cmd in cmds:
        for k, v in env.items():
            cmd = cmd.replace(k, v)
        argv = shlex.split(cmd.split("-m pipeline.kubeflow_runner", 1)[1])
        args, s = runner.parse_args(argv)  # unknown flags exit
        runner.resolve(s)
        assert args.output == "outputs/kubeflow/tower-recs.json"
    makefile = ROOT / "Makefile"
    if makefile.exists():
        line = next((ln for ln in makefile.read_text().splitlines() if "-m pipeline.kubeflow_runner" in ln), None)
        if line:
            argv = shlex.split(line.split("-m pipeline.kubeflow_runner", 1)[1].replace("$(PIPELINE_NAME)", "tower-recs"))
            assert runner.parse_args(argv)[0].output == "outputs/kubeflow/tower-recs.json"


def test_readme_paths_exist():
    cmds = _readme_commands()
    for cmd in cmds:
        for m in re.finditer(r"kubectl apply -k (\S+)", cmd):
            assert (ROOT / m.group(1) / "kustomization.yaml").exists(), cmd
        for m in re.finditer(r"kubectl (?:apply|delete) -f (\S+)", cmd):
            assert (ROOT / m.group(1)).exists(), cmd
        for m in re.finditer(r"docker build -f (\S+)", cmd):
            assert (ROOT / m.group(1)).exists(), cmd
    text = (ROOT / "deploy" / "README.md").read_text()
    pod = yaml.safe_load((BASE / "model-loader-pod.yaml").read_text())
    assert f"pod/{pod['metadata']['name']}" in text and f"-n {pod['metadata']['namespace']}" in text
    assert "deployment/tower-recs-serving tensorflow-serving=" in text
    assert "create_run_from_pipeline_package" in text and "template_path=" in text
