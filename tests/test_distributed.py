"""Multi-worker training (trainer/distribution.py) and the cluster runners' settings
(pipeline/beam_runners.py, pipeline/vertex_training.py), checked offline.

The `slow` tests start real TF worker processes on 127.0.0.1 with their own TF_CONFIG
(benchmarks/distributed.py's worker, tiny towers, 2 epochs): ~1.5 min together on 2 busy cores.
"""
import json
import os

import pytest

from pipeline import beam_runners, vertex_training
from trainer import distribution

# Workers with the same seed see the same global batches; each replica's in-batch softmax has half the
# negatives, so the trained weights differ a little: validation loss within 3% of the 1-process run.
EVAL_LOSS_RTOL = 0.03


def _config(workers, task_type="worker", index=0, chief=None):
    cluster = {"worker": workers}
    if chief:
        cluster["chief"] = chief
    return {"cluster": cluster, "task": {"type": task_type, "index": index}}


def test_tf_config_roles():
    one = _config(["h:1"])
    assert not distribution.is_multi_worker(one) and distribution.is_chief(one)
    two = _config(["h:1", "h:2"], index=1)
    assert distribution.is_multi_worker(two) and not distribution.is_chief(two)
    assert distribution.is_chief(_config(["h:1", "h:2"], index=0))
    # With a "chief" task (Vertex), worker 0 is not the chief.
    vertex = _config(["h:2"], index=0, chief=["h:1"])
    assert not distribution.is_chief(vertex)
    assert distribution.is_chief({**vertex, "task": {"type": "chief", "index": 0}})
    assert [t[0] for t in distribution.training_tasks(vertex)] == ["chief", "worker"]
    with pytest.raises(ValueError, match="TF_CONFIG is not JSON"):
        distribution.tf_config({"TF_CONFIG": "{worker: 1}"})


def test_wait_for_peers_names_the_unreachable_worker():
    from benchmarks.distributed import free_ports

    port = free_ports(1)[0]
    config = _config(["127.0.0.1:1", f"127.0.0.1:{port}"], index=0)
    with pytest.raises(TimeoutError, match=f"worker 1 at 127.0.0.1:{port}.*TOWER_RECS_WORKER_CONNECT_TIMEOUT_S"):
        distribution.wait_for_peers(config, timeout_s=1)


@pytest.mark.slow
def test_two_workers_export_one_model_and_match_one_process():
    from distributed_runs import training_run

    (single,), _ = training_run(workers=1)
    (chief, other), out = training_run(workers=2)
    assert single["strategy"] == "OneDevice (default)" and single["workers"] == 1
    assert chief["strategy"] == other["strategy"] == "MultiWorkerMirroredStrategy"
    assert chief["workers"] == 2 and chief["replicas"] == 2
    assert chief["chief"] and not other["chief"]
    # One serving model: the chief's, where it was asked for; the other worker's scratch copy is gone.
    assert os.path.isfile(os.path.join(out, "export", "saved_model.pb"))
    assert chief["export_dir"] == os.path.join(out, "export")
    assert other["export_dir"] != chief["export_dir"] and not os.path.exists(other["export_dir"])
    # Both workers stepped through the same global batches in lockstep: identical losses.
    assert chief["loss"] == other["loss"] and chief["eval_loss"] == other["eval_loss"]
    assert chief["eval_loss"] == pytest.approx(single["eval_loss"], rel=EVAL_LOSS_RTOL)


@pytest.mark.slow
def test_unreachable_worker_fails_fast_naming_it(tmp_path):
    from benchmarks.distributed import cluster_tf_configs, free_ports, run_workers
    from distributed_runs import TINY

    configs = cluster_tf_configs(free_ports(2))
    missing = json.loads(configs[1])["cluster"]["worker"][1]
    with pytest.raises(RuntimeError) as failure:  # only the chief is started: worker 1 never answers
        run_workers(1, str(tmp_path), [*TINY, "--export-dir", str(tmp_path / "export")], timeout_s=90,
                    tf_configs=configs[:1], extra_env={distribution.CONNECT_TIMEOUT_ENV: "3"})
    assert f"did not answer within 3 s: worker 1 at {missing}" in str(failure.value)
    assert not (tmp_path / "export").exists(), "nothing is written when the cluster never formed"


# -- Beam runners ----------------------------------------------------------------------------------
DIRECT = ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]


def test_direct_runner_keeps_the_default_args_and_appends_extras():
    image = "--sdk_container_image=tower-recs-pipeline:latest"
    assert beam_runners.beam_pipeline_args({}, DIRECT) == DIRECT + [image]
    env = {"TOWER_RECS_BEAM_RUNNER": "direct", "TOWER_RECS_BEAM_EXTRA_ARGS": "--direct_num_workers=4"}
    assert beam_runners.beam_pipeline_args(env, DIRECT) == DIRECT + ["--direct_num_workers=4", image]
    own = {"TOWER_RECS_BEAM_EXTRA_ARGS": "--setup_file=./setup.py"}   # the user's own dependency flag wins
    assert beam_runners.beam_pipeline_args(own, DIRECT) == DIRECT + ["--setup_file=./setup.py"]


def test_tfx_does_not_stage_a_copy_of_itself_for_the_direct_runner(tmp_path, monkeypatch):
    """Without a dependency flag TFX builds a ~42 MB sdist of itself in a fresh temp dir for every Beam
    component run and never deletes it; the DirectRunner never reads it."""
    from tfx.utils import dependency_utils

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)       # re-read TMPDIR
    for mode in DIRECT, ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]:
        args = beam_runners.beam_pipeline_args({}, mode)
        assert dependency_utils.make_beam_dependency_flags(args) == args
    assert list(tmp_path.iterdir()) == []


def test_dataflow_args_and_missing_options():
    env = {"TOWER_RECS_BEAM_RUNNER": "dataflow", "TOWER_RECS_DATAFLOW_PROJECT": "p",
           "TOWER_RECS_DATAFLOW_REGION": "europe-west4", "TOWER_RECS_DATAFLOW_TEMP_LOCATION": "gs://b/tmp",
           "TOWER_RECS_IMAGE": "reg/tower-recs-pipeline:1", "TOWER_RECS_DATAFLOW_MAX_NUM_WORKERS": "20"}
    args = beam_runners.beam_pipeline_args(env, DIRECT)
    assert args[:4] == ["--runner=DataflowRunner", "--project=p", "--region=europe-west4", "--temp_location=gs://b/tmp"]
    assert "--sdk_container_image=reg/tower-recs-pipeline:1" in args and "--max_num_workers=20" in args
    assert not set(DIRECT) & set(args)
    for name in ("TOWER_RECS_DATAFLOW_PROJECT", "TOWER_RECS_DATAFLOW_REGION", "TOWER_RECS_DATAFLOW_TEMP_LOCATION"):
        with pytest.raises(beam_runners.BeamRunnerError, match=f"BEAM_RUNNER=dataflow needs {name}"):
            beam_runners.beam_pipeline_args({k: v for k, v in env.items() if k != name})
    with pytest.raises(beam_runners.BeamRunnerError, match="DATAFLOW_TEMP_LOCATION=tmp/beam: Dataflow needs a gs://"):
        beam_runners.beam_pipeline_args({**env, "TOWER_RECS_DATAFLOW_TEMP_LOCATION": "tmp/beam"})


@pytest.mark.parametrize("runner,setting", [("flink", "FLINK_MASTER"), ("spark", "SPARK_JOB_ENDPOINT")])
def test_portable_runners(runner, setting):
    env = {"TOWER_RECS_BEAM_RUNNER": runner.upper(), f"TOWER_RECS_{setting}": "jobserver:8099",
           f"TOWER_RECS_{runner.upper()}_PARALLELISM": "8"}
    args = beam_runners.beam_pipeline_args(env, DIRECT)
    assert args == ["--runner=PortableRunner", "--job_endpoint=jobserver:8099", "--environment_type=DOCKER",
                    "--environment_config=tower-recs-pipeline:latest", "--parallelism=8"]
    with pytest.raises(beam_runners.BeamRunnerError, match=f"needs TOWER_RECS_{setting}"):
        beam_runners.beam_pipeline_args({"TOWER_RECS_BEAM_RUNNER": runner})
    with pytest.raises(beam_runners.BeamRunnerError, match="expected host:port"):
        beam_runners.beam_pipeline_args({**env, f"TOWER_RECS_{setting}": "jobserver"})


def test_unknown_runner_fails_when_the_pipeline_is_configured():
    import subprocess
    import sys

    with pytest.raises(beam_runners.BeamRunnerError, match="'prism' is not a runner: expected one of direct"):
        beam_runners.beam_pipeline_args({"TOWER_RECS_BEAM_RUNNER": "prism"})
    # configs.py (what the tfx CLI and the Kubeflow compile import) fails with that message.
    env = dict(os.environ, TOWER_RECS_BEAM_RUNNER="dataflow", TF_USE_LEGACY_KERAS="1",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", "import pipeline.configs"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0 and "BEAM_RUNNER=dataflow needs TOWER_RECS_DATAFLOW_PROJECT" in res.stderr


# -- Vertex ----------------------------------------------------------------------------------------
@pytest.mark.slow  # imports the Vertex AI client (~10-60 s)
def test_vertex_worker_pools_parse_as_a_custom_job_spec():
    from google.cloud import aiplatform_v1

    specs = vertex_training.worker_pool_specs("reg/tower-recs-pipeline:1-gpu", workers=3, gpus=2,
                                              accelerator="NVIDIA_L4")
    job = aiplatform_v1.types.CustomJobSpec(worker_pool_specs=specs)  # unknown fields / bad enums raise
    assert [p.replica_count for p in job.worker_pool_specs] == [1, 2]
    machine = job.worker_pool_specs[1].machine_spec
    assert machine.accelerator_type.name == "NVIDIA_L4" and machine.accelerator_count == 2
    assert job.worker_pool_specs[0].container_spec.image_uri == "reg/tower-recs-pipeline:1-gpu"
    assert "accelerator_type" not in vertex_training.worker_pool_specs("i")[0]["machine_spec"]
    config = vertex_training.trainer_custom_config("proj", "europe-west4", "i", workers=2)
    assert config["ai_platform_enable_vertex"] is True and config["ai_platform_vertex_region"] == "europe-west4"
    assert len(config["ai_platform_training_args"]["job_spec"]["worker_pool_specs"]) == 2
    with pytest.raises(ValueError, match="at least 1"):
        vertex_training.worker_pool_specs("i", workers=0)
