"""serving.client: the Python client and the `recommend` CLI, over gRPC and REST, against a local server."""
import csv
import os
import subprocess
import sys

import pytest

from serving.client import RecommendError, RecommenderClient, main
from serving.synthetic_model import build_synthetic_model
from serving.testing import ServerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tower_recs"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / MODEL)
    build_synthetic_model(base, 7, num_items=50, seed=3, warmup=0)
    with ServerProcess(base, MODEL, log_path=str(tmp_path_factory.mktemp("log") / "server.log")) as srv:
        yield srv


@pytest.fixture(scope="module")
def items_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("items") / "items.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "categories", "description"])
        for i in range(50):
            w.writerow([f"item_{i}", f"Title {i}", "c", "d"])
    return str(path)


def test_recommend_grpc_and_rest_agree(server):
    g = RecommenderClient(server.grpc_target, MODEL)
    r = RecommenderClient(model_name=MODEL, rest_url=server.rest_url)
    recs = g.recommend("user_1", k=10, history=["item_1", "item_2"], exclude=["item_3"])
    assert len(recs) == 10 and all(isinstance(i, str) and isinstance(s, float) for i, s in recs)
    assert "item_3" not in [i for i, _ in recs]
    assert [s for _, s in recs] == sorted((s for _, s in recs), reverse=True)
    rest = r.recommend("user_1", k=10, history=["item_1", "item_2"], exclude=["item_3"])
    assert [i for i, _ in rest] == [i for i, _ in recs]
    assert [s for _, s in rest] == pytest.approx([s for _, s in recs], rel=1e-5)

    # fewer items than k once excluded: the padding the model returns is dropped
    assert len(g.recommend("user_1", k=100, exclude=[f"item_{i}" for i in range(45)])) == 5
    # ragged histories/excludes are padded with "" per batch (on the left, so rows start with "")
    batch = g.recommend_batch(["user_1", "user_2", "nobody"], k=3,
                              histories=[["item_1", "item_2"], [], ["item_4"]], excludes=[[], ["item_5"], []])
    assert [len(b) for b in batch] == [3, 3, 3]
    single = g.recommend("user_1", 3, ["item_1", "item_2"])
    assert [i for i, _ in batch[0]] == [i for i, _ in single]
    assert [x for _, x in batch[0]] == pytest.approx([x for _, x in single], rel=1e-5)
    rest_batch = r.recommend_batch(["user_1", "user_2", "nobody"], k=3, histories=[["item_1", "item_2"], [], ["item_4"]],
                                   excludes=[[], ["item_5"], []])
    assert [[i for i, _ in b] for b in rest_batch] == [[i for i, _ in b] for b in batch]
    g.close()


def test_client_errors(server):
    g = RecommenderClient(server.grpc_target, MODEL)
    with pytest.raises(ValueError, match="k must be at least 1"):
        g.recommend("user_1", k=0)
    with pytest.raises(RecommendError) as e:
        g.recommend("user_1", k=1000)
    assert e.value.code == "INVALID_ARGUMENT" and "k" in e.value.message
    with pytest.raises(RecommendError) as e:
        RecommenderClient(model_name=MODEL, rest_url=server.rest_url).recommend("user_1", k=1000)
    assert e.value.code == "HTTP 400"
    with pytest.raises(RecommendError) as e:
        RecommenderClient(server.grpc_target, "other_model").recommend("user_1")
    assert e.value.code == "NOT_FOUND"
    assert g.recommend("user_1", k=2)  # still serving
    assert main(["--user", "u", "--target", server.grpc_target, "--k", "1000"]) == 1


def _cli(args):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "serving.client", *args], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["rank", "item_id", "score"]
    return [line.split(None, 3) for line in lines[1:]]


def test_cli_grpc_and_rest_print_k_results(server, items_csv):
    common = ["--user", "user_2", "--k", "7", "--history", "item_1", "item_9", "--exclude", "item_4",
              "--items", items_csv]
    g = _cli(common + ["--target", server.grpc_target])
    r = _cli(common + ["--rest", "--rest_url", server.rest_url])
    assert len(g) == 7 and [row[0] for row in g] == [str(i) for i in range(1, 8)]
    assert g == r                                  # same ranks, ids, scores (4 decimals) and titles
    assert all(row[3] == f"Title {row[1].split('_')[1]}" for row in g)
    assert "item_4" not in [row[1] for row in g]
