"""One shared good pipeline run for tests/test_gates.py and tests/test_bad_data.py (not a test module).

The first test that needs it runs the real pipeline (`python -m pipeline.local_runner`, LocalDagRunner,
SQLite ML Metadata) once on sample data with the tiny encoder; later runs reuse its pipeline root and
metadata, so their data components come from the cache. Memoised at module level: pytest imports this
module once per session, so both test modules share the run.
"""
import os
import shutil
import subprocess
import sys
import tempfile

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STATE = {}


def env_for(run, data_dir=None, **extra):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=PROJECT_DIR, TF_CPP_MIN_LOG_LEVEL="2")
    env = {k: v for k, v in env.items() if not k.startswith("TOWER_RECS_")}
    env.update({
        "TOWER_RECS_DATA": data_dir or run["data"],
        "TOWER_RECS_OUTPUT_DIR": run["output"],
        "TOWER_RECS_MODEL_PREPROCESS_HANDLE": run["encoder"][0],
        "TOWER_RECS_MODEL_ENCODER_HANDLE": run["encoder"][1],
        # ModelConfig's default epochs (no TOWER_RECS_MODEL_EPOCHS): with the tiny encoder 1 epoch is no better
        # than MostPopular (ndcg@10 0.071 vs 0.109 on this data) and rightly not blessed; 6 epochs reached 0.158
        # (bar: 1.25 x 0.109).
        "TOWER_RECS_SERVING_CHECK_LATENCY_CALLS": "20",
    })
    env.update({f"TOWER_RECS_{k}": str(v) for k, v in extra.items()})
    return env


def run_pipeline(run, data_dir=None, **extra):
    return subprocess.run([sys.executable, "-m", "pipeline.local_runner"], cwd=PROJECT_DIR,
                          env=env_for(run, data_dir, **extra), capture_output=True, text=True, timeout=1500)


def latest_line(run):
    proc = subprocess.run([sys.executable, "-m", "pipeline.report", "--latest"], cwd=PROJECT_DIR,
                          env=env_for(run), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def snapshot(directory):
    """{relative path: (size, mtime_ns)} of every file under `directory`."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            st = os.stat(path)
            out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
    return out


def good_run(tiny_encoder):
    """The shared good run: {output, data, encoder, serving_dir, versions, untrained, log}.

    Before it, in the same fresh output dir, an untrained model (TRAIN_STEPS=1) runs first:
    `untrained` records what it left (its return code and the serving dir's versions, [] when
    nothing was pushed). The good run then takes the data components from the cache.
    """
    if "good" in _STATE:
        return _STATE["good"]
    from data.prepare import write_contract
    from data.sample import generate

    base = tempfile.mkdtemp(prefix="gate_run_")
    data_dir = os.path.join(base, "data")
    write_contract(*generate(seed=0), data_dir)
    run = {"base": base, "output": os.path.join(base, "out"), "data": data_dir, "encoder": tiny_encoder}
    run["serving_dir"] = os.path.join(run["output"], "serving_model", "tower_recs")
    first = run_pipeline(run, TRAIN_STEPS=1)
    run["untrained"] = {"returncode": first.returncode, "stderr": first.stderr[-5000:],
                        "versions": sorted(os.listdir(run["serving_dir"])) if os.path.isdir(run["serving_dir"]) else []}
    proc = run_pipeline(run)
    assert proc.returncode == 0, proc.stderr[-5000:]
    run["versions"] = sorted(os.listdir(run["serving_dir"]))
    run["log"] = proc.stderr
    _STATE["good"] = run
    import atexit

    atexit.register(shutil.rmtree, base, True)
    return run
