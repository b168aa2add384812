"""Shared fixtures (a tiny TF Hub BERT built by the project's real export code, tiny contract data, one
pipeline run through the tfx CLI) and the `e2e` mark of the tests that use a pipeline run or a server.

Markers (pyproject.toml): `e2e` runs the pipeline or a server process, `slow` trains a model or runs
TFX/Beam executors or the full MiniLM. `make test-fast` runs neither; `make test` runs everything.
"""
import os

import pytest

# The one place the test process selects Keras 2 (TFRS 0.7.7 and TF Hub need it): conftest runs
# before any test module imports TensorFlow. Subprocesses get it in their `env=`.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fixtures that run the pipeline (`cli_pipeline_run`, below) or start a model server process (the
# `server` / `served` fixtures of tests/test_serving.py, test_client.py, test_serving_e2e.py): every
# test that uses one is `e2e`, whichever module it is in.
E2E_FIXTURES = frozenset({"cli_pipeline_run", "server", "served"})


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> tuple[str, str]:
    """(preprocess_path, encoder_path) of a tiny random-weight BERT with the real MiniLM vocabulary."""
    from encoder.export import build_hub_modules

    return build_hub_modules(str(tmp_path_factory.mktemp("tiny_bert")), tiny=True, seq_length=32)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """A small sample data set in the contract layout (see data/prepare.py)."""
    from data.prepare import write_contract
    from data.sample import generate

    out = str(tmp_path_factory.mktemp("tiny_data"))
    interactions, items = generate(n_users=60, n_items=120, n_interactions=2500, seed=7)
    write_contract(interactions, items, out)
    return out


@pytest.fixture(scope="session")
def cli_pipeline_run(tmp_path_factory, tiny_data, tiny_encoder) -> dict:
    """One run of the real pipeline through the real `tfx` CLI on tiny data; shared by the e2e tests.

    Returns the paths a user would look at: the serving base dir (<base>/<model_name>/<version>/),
    the data dir and the output dir, plus the CLI's output.
    """
    import subprocess
    import sys
    import time

    out = tmp_path_factory.mktemp("pipeline_out")
    env = dict(
        os.environ,
        TF_USE_LEGACY_KERAS="1",
        PYTHONPATH=PROJECT_DIR,
        LOCAL_HOME=str(out / "tfx_cli"),
        TOWER_RECS_PIPELINE_NAME="tower-recs-e2e",
        TOWER_RECS_DATA=tiny_data,
        TOWER_RECS_OUTPUT_DIR=str(out),
        TOWER_RECS_MODEL_PREPROCESS_HANDLE=tiny_encoder[0],
        TOWER_RECS_MODEL_ENCODER_HANDLE=tiny_encoder[1],
        TOWER_RECS_MODEL_EPOCHS="2",
        # This fixture checks the CLI, pushing and serving on 60 users x 120 items, where MostPopular is
        # unbeatable (ndcg@10 0.39 vs 0.20): no popularity bar here. The gates are tested in
        # tests/test_gates.py (sample data) and tests/test_gate_drift.py.
        TOWER_RECS_EVAL_POPULARITY_MARGIN="-1",
    )
    tfx = os.path.join(os.path.dirname(sys.executable), "tfx")
    runner = os.path.join(PROJECT_DIR, "pipeline", "local_runner.py")
    logs = []
    started = time.time()
    for command in ([tfx, "pipeline", "create", "--engine", "local", "--pipeline_path", runner],
                    [tfx, "run", "create", "--engine", "local", "--pipeline_name", "tower-recs-e2e"]):
        result = subprocess.run(command, env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=1200)
        logs.append(result.stdout + result.stderr)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{logs[-1][-6000:]}"
    return {
        "env": env,
        "output_dir": str(out),
        "model_base": str(out / "serving_model" / "tower_recs"),
        "data": tiny_data,
        "log": "\n".join(logs),
        "seconds": time.time() - started,
    }
