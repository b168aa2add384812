"""The KFP v2 compile of the pipeline (`pipeline/kubeflow_runner.py`), checked offline.

Through its CLI (a subprocess) and its Python API: every component of `create_pipeline(...)` is in
the spec with the same dependency edges, runs in the configured image with the Beam args, and the
pipeline root is set; the Vertex PipelineJob JSON and the KFP package YAML parse as the protos the
clients send. Local and Kubeflow pipelines are the same definition (ids, edges, component types).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from docker_files import dockerignore_patterns, is_ignored

ROOT = Path(__file__).resolve().parents[1]

IMAGE = "registry.example.com/tower-recs-pipeline:test"
BUCKET = "gs://test-bucket"
PIPELINE_ROOT = "gs://test-bucket/pipeline_root/tower-recs"
BEAM_ARGS = ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west1",
             "--temp_location=gs://test-bucket/tmp"]
TFX_ENTRYPOINT = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
# The pipeline's override mechanism (pipeline/overrides.py) reaches the compiled components' parameters.
CONFIG_OVERRIDES = {"TOWER_RECS_MODEL_TEMPERATURE": "0.05", "TOWER_RECS_EVAL_KS": "[10, 50]",
                    "TOWER_RECS_SERVING_CHECK_LATENCY_CALLS": "7",
                    # The Trainer's GPU request (pipeline/configs.py -> kubeflow_runner.apply_resources).
                    "TOWER_RECS_TRAINER_GPUS": "2", "TOWER_RECS_TRAINER_ACCELERATOR": "NVIDIA_L4"}


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
    ignored = dockerignore_patterns()
    in_image = set(re.findall(r"/pipeline/[\w./-]+", text))
    assert {"/pipeline/schema/interactions/schema.pbtxt", "/pipeline/schema/items/schema.pbtxt",
            "/pipeline/models/minilm/preprocess", "/pipeline/models/minilm/encoder"} <= in_image
    for path in in_image:
        rel = path[len("/pipeline/"):]
        if rel.startswith("models/minilm"):
            continue  # built in the image by the Dockerfile (see test_dockerfile_builds_encoder_where_runner_points)
        assert (ROOT / rel).exists(), path
        assert not is_ignored(rel, ignored), f"{rel} is referenced by the spec but excluded by .dockerignore"


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


@pytest.mark.slow
def test_compile_python_api(compiled):
    out, facts, _ = compiled
    _check_spec(json.loads((out / "api.json").read_text()), facts["kfp"])
    _check_pipeline_job_proto(out / "api.json")
    _check_kfp_package(out / "api.yaml", facts["kfp"])


@pytest.mark.slow
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


@pytest.mark.slow
def test_runner_pipeline_settings(compiled):
    kfp = compiled[1]["kfp"]
    assert kfp["root"] == PIPELINE_ROOT
    assert kfp["beam"] == BEAM_ARGS
    assert not kfp["has_metadata_config"]  # KFP / Vertex manage ML Metadata


@pytest.mark.slow
def test_local_and_kubeflow_pipelines_are_the_same_definition(compiled):
    local, kfp = compiled[1]["local"], compiled[1]["kfp"]
    assert len(kfp["ids"]) >= 2
    # The one intended difference: KFP v2 compiles only TFX's stock resolver strategies, so the evaluator's
    # baselines come from LatestBlessedModelResolver there (pipeline.create_pipeline(baseline_resolution=...)).
    # The catalogue-embeddings cache uses LatestArtifactStrategy and the Trainer's warm-start base model
    # LatestBlessedModelStrategy, stock strategies, so they are in both (on KFP the latter is also the baseline).
    local_only = {"LatestPushedModelResolver", "RecentBlessedModelsResolver"}
    shared = {"LatestCatalogEmbeddingsResolver", "LatestBlessedModelResolver"}
    assert {s[0] for s in local["shape"] if s[1] == "Resolver"} == local_only | shared
    assert {s[0] for s in kfp["shape"] if s[1] == "Resolver"} == shared
    for facts in (local, kfp):
        assert "LatestBlessedModelResolver" in facts["edges"]["CatalogTrainer"]

    def same(facts, resolvers):
        shape = [s for s in facts["shape"] if s[0] not in resolvers]
        # The evaluator's baseline edges are the intended difference.
        edges = {c: sorted(set(up) - resolvers - ({"LatestBlessedModelResolver"} if c == "RetrievalEvaluator"
                                                   else set()))
                 for c, up in facts["edges"].items() if c not in resolvers}
        return shape, edges
    assert same(local, local_only) == same(kfp, set())  # ids, component classes, executors, parameter names, edges
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


def test_cli_rejects_a_local_request_log_dir(runner, monkeypatch, capsys):
    from pipeline import configs

    monkeypatch.setattr(configs, "REQUEST_LOG_DIR", "/local/request_log")
    assert runner.main(["--output", "unused.json"]) == 2
    assert "TOWER_RECS_REQUEST_LOG_DIR=/local/request_log is a local path" in capsys.readouterr().err


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


def test_components_request_resources_and_the_trainer_its_gpus(compiled, runner):
    """Every executor container has CPU/memory requests; only the Trainer asks for the configured GPUs."""
    out, facts, _ = compiled
    job = json.loads((out / "cli.json").read_text())
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    containers = {name: body["container"] for name, body in executors.items() if "container" in body}
    assert containers
    trainer = [name for name in containers if name.startswith(runner.TRAINER_ID)]
    assert len(trainer) == 1, sorted(containers)
    for name, container in containers.items():
        resources = container.get("resources", {})
        component = name.rsplit("_executor", 1)[0]
        cpu, memory = runner.COMPONENT_RESOURCES.get(component, runner.DEFAULT_RESOURCES)
        assert resources.get("cpuRequest") == cpu and resources.get("memoryRequest") == memory, (name, resources)
        if name in trainer:
            assert resources["accelerator"] == {"type": "NVIDIA_L4", "count": "2"}
        else:
            assert "accelerator" not in resources, name
    # The Trainer's run fails instead of training on CPU when the GPU is missing.
    props = json.dumps(job["pipelineSpec"]["root"]["dag"]["tasks"][runner.TRAINER_ID])
    assert '\\"require_gpu\\": true' in props or '"require_gpu": true' in props
