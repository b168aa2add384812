"""End to end: the real `tfx` CLI runs the whole pipeline and the pushed model serves like TF Serving would load it."""
import csv
import json
import os
import subprocess
import sys
import textwrap

# A TF Serving stand-in: only TensorFlow and TF Text (the ops stock TF Serving links), none of this project.
_FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    request = json.loads(sys.argv[2])
    loaded = tf.saved_model.load(sys.argv[1])
    result = loaded.signatures["serving_default"](
        user_id=tf.constant(request["user_id"]), history=tf.constant(request["history"], tf.string),
        exclude=tf.constant(request["exclude"], tf.string), k=tf.constant(request["k"], tf.int32))
    project = sorted(m for m in sys.modules if m.split(".")[0] in ("trainer", "pipeline", "tfx", "tensorflow_hub",
                                                                 "tensorflow_recommenders", "tensorflow_transform"))
    print(json.dumps({"item_ids": [[i.decode() for i in row] for row in result["item_ids"].numpy()],
                      "scores": result["scores"].numpy().tolist(), "imported": project,
                      "signatures": sorted(loaded.signatures.keys())}))
""")


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _versions(model_base):
    return sorted(d for d in os.listdir(model_base) if d.isdigit())


def _serve(version_dir, request):
    result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, version_dir, json.dumps(request)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cli_pushes_one_versioned_savedmodel_with_warmup(cli_pipeline_run):
    versions = _versions(cli_pipeline_run["model_base"])
    assert len(versions) == 1, versions
    version_dir = os.path.join(cli_pipeline_run["model_base"], versions[0])
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert os.path.getsize(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")) > 0


def test_pushed_model_recommends_k_distinct_catalogue_items_in_a_fresh_process(cli_pipeline_run):
    data = cli_pipeline_run["data"]
    catalogue = {r["item_id"] for r in _rows(os.path.join(data, "items", "items.csv"))}
    known_user = _rows(os.path.join(data, "interactions", "train", "interactions.csv"))[0]["user_id"]
    version_dir = os.path.join(cli_pipeline_run["model_base"], _versions(cli_pipeline_run["model_base"])[0])

    answer = _serve(version_dir, {"user_id": [known_user, "a-user-never-seen"], "history": [[], []],
                                  "exclude": [[], []], "k": 10})
    assert answer["imported"] == [], f"serving needed project/TFX modules: {answer['imported']}"
    assert {"serving_default", "serve_tf_examples", "query_embedding", "candidate_embedding"} <= set(
        answer["signatures"])
    for ids, scores in zip(answer["item_ids"], answer["scores"]):
        assert len(ids) == 10 and len(set(ids)) == 10
        assert set(ids) <= catalogue
        assert scores == sorted(scores, reverse=True)


def test_cold_catalogue_items_are_in_the_served_index(cli_pipeline_run):
    """Items nobody interacted with are still recommendable: exclude every warm item and they are what is left."""
    data = cli_pipeline_run["data"]
    catalogue = {r["item_id"] for r in _rows(os.path.join(data, "items", "items.csv"))}
    interacted = set()
    for split in ("train", "eval"):
        interacted |= {r["item_id"] for r in _rows(os.path.join(data, "interactions", split, "interactions.csv"))}
    cold = catalogue - interacted
    assert cold, "the tiny data set should have catalogue items without interactions"
    version_dir = os.path.join(cli_pipeline_run["model_base"], _versions(cli_pipeline_run["model_base"])[0])
    answer = _serve(version_dir, {"user_id": ["u0001"], "history": [[]], "exclude": [sorted(interacted)],
                                  "k": min(len(cold), 10)})
    assert set(answer["item_ids"][0]) <= cold
    assert all(s > -1e30 for s in answer["scores"][0])
