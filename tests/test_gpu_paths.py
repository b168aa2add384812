"""The GPU code paths, exercised on CPU: a GPU requested but not visible fails the run (overridable),
XLA only where a GPU is, MirroredStrategy over two logical CPU devices and bfloat16 mixed precision
each train, export and match the single-device float32 run.

The `slow` test trains three tiny models in worker processes (a logical-device split must happen
before TensorFlow starts): ~1 min on 2 busy cores.
"""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from trainer import distribution

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Validation loss of the same seeded run: two replicas (each its half of every global batch, so half
# the in-batch negatives) within 3%, bfloat16 towers (8-bit mantissa) within 3%.
EVAL_LOSS_RTOL = 0.03


def test_gpu_requested_but_not_visible_fails_with_the_override_named():
    assert not tf.config.list_physical_devices("GPU"), "this test is for machines without a GPU"
    with pytest.raises(distribution.GpuNotVisibleError, match="sees none.*TOWER_RECS_MODEL_REQUIRE_GPU=0"):
        distribution.choose_strategy(require_gpu=True, environ={})
    assert distribution.choose_strategy(require_gpu=False, environ={}).num_replicas_in_sync == 1


def test_xla_only_where_a_gpu_is_visible():
    assert distribution.use_xla(jit_compile=False, xla_on_gpu=True) is False  # CPU: off (8x slower measured)
    assert distribution.use_xla(jit_compile=True, xla_on_gpu=False) is True    # forced


_CONFIG_CASES = r"""
import importlib, json, os
from pipeline import configs
out = []
for env in ({}, {"TOWER_RECS_TRAINER_GPUS": "1"},
            {"TOWER_RECS_TRAINER_GPUS": "1", "TOWER_RECS_MODEL_REQUIRE_GPU": "0"}):
    os.environ.update(env)
    importlib.reload(configs)  # configs.py reads the environment at import
    out.append([configs.MODEL_CONFIG.require_gpu, configs.TRAINER_GPUS])
    for name in env:
        del os.environ[name]
print(json.dumps(out))
"""


def test_trainer_gpus_setting_requires_the_gpu_unless_overridden():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWER_RECS_")}
    res = subprocess.run([sys.executable, "-c", _CONFIG_CASES], cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env=dict(env, TF_USE_LEGACY_KERAS="1", PYTHONPATH=ROOT))
    assert res.returncode == 0, res.stderr[-2000:]
    default, requested, overridden = json.loads(res.stdout.strip().splitlines()[-1])
    assert default == [False, 0]
    assert requested == [True, 1]           # TOWER_RECS_TRAINER_GPUS=1: a CPU-only pod fails the run
    assert overridden == [False, 1]         # ... unless TOWER_RECS_MODEL_REQUIRE_GPU=0


@pytest.mark.slow
def test_mirrored_and_mixed_precision_match_single_device_float32():
    from distributed_runs import training_run

    runs = {}
    for name, flags in {"float32": (), "mirrored": ("--logical-cpus", "2"), "bf16": ("--mixed-precision",)}.items():
        (runs[name],), out = training_run(workers=1, flags=flags)
        assert os.path.isfile(os.path.join(out, "export", "saved_model.pb")), f"{name}: no exported model"
    assert runs["mirrored"]["strategy"] == "MirroredStrategy" and runs["mirrored"]["replicas"] == 2
    assert len(runs["mirrored"]["devices"]) == 2
    assert runs["bf16"]["replicas"] == 1
    for name in ("mirrored", "bf16"):
        assert runs[name]["eval_loss"] == pytest.approx(runs["float32"]["eval_loss"], rel=EVAL_LOSS_RTOL), name
    # Not trivially equal: the variants really ran differently.
    assert runs["bf16"]["loss"] != runs["float32"]["loss"] and runs["mirrored"]["loss"] != runs["float32"]["loss"]
