"""Catalogue refresh without retraining (`python -m pipeline.refresh_catalogue`, `make refresh-catalogue`).

The model the real `tfx` CLI pushed (session fixture `cli_pipeline_run`) is copied into this module's own base
path and served by the local server (production batching config); the refresh runs through the CLI's `main`
against that copy, with the pipeline's ML Metadata (the served catalogue's texts come from its lineage).
What a user sees is checked over gRPC Predict: the new item is recommended, the removed one never is, the other
answers are unchanged, no request fails during the swap, and a bad CSV changes nothing.
"""
import csv
import json
import os
import shutil
import threading
import time
import urllib.request

import pytest

from data.prepare import main as prepare_main
from data.source import DataError
from pipeline import refresh_catalogue
from serving import layout
from serving.client import RecommenderClient
from serving.testing import ServerProcess

MODEL = "tower_recs"
NEW_ITEM = "inew0001"


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write(path, rows, fields=("item_id", "title", "categories", "description")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _available_versions(srv):
    with urllib.request.urlopen(f"{srv.rest_url}/v1/models/{MODEL}", timeout=5) as r:
        return [int(v["version"]) for v in json.loads(r.read())["model_version_status"] if v["state"] == "AVAILABLE"]


def test_catalogue_csv_rules_and_next_version(tmp_path):
    good = _write(tmp_path / "good.csv", [{"item_id": "i1", "title": " Heat ", "categories": "Action|Crime",
                                           "description": ""}])
    catalogue = refresh_catalogue.read_catalogue_csv(good)
    assert catalogue.ids == ["i1"] and catalogue.texts() == ["Heat. Action, Crime"]
    misspelt = _write(tmp_path / "misspelt.csv", [{"item_id": "i1", "title": "Heat", "descripton": "x"}],
                      ("item_id", "title", "descripton"))
    with pytest.raises(DataError, match=r"misspelt.csv: line 1 \(header\): unknown column\(s\) \['descripton'\]"):
        refresh_catalogue.read_catalogue_csv(misspelt)
    # The next version is above every version there, even one "from the future" (a clock set back).
    os.makedirs(tmp_path / "base" / "99999999999")
    open(tmp_path / "base" / "99999999999" / layout.SAVED_MODEL_FILE, "w").close()
    assert refresh_catalogue.next_version(str(tmp_path / "base")) == 100000000000
    assert refresh_catalogue.next_version(str(tmp_path / "empty")) >= int(time.time()) - 1


def test_a_second_refresh_of_the_same_base_path_is_refused(tmp_path):
    from pipeline.components.gate_config import ServingCheckConfig
    from trainer.model_config import ModelConfig

    base = tmp_path / MODEL
    os.makedirs(base / "1")
    open(base / "1" / layout.SAVED_MODEL_FILE, "w").close()
    good = _write(tmp_path / "good.csv", [{"item_id": "i1", "title": "Heat", "categories": "", "description": ""}])
    with refresh_catalogue.exclusive(str(base)):   # a refresh in progress
        with pytest.raises(refresh_catalogue.RefreshRejected, match="another refresh of .* is running"):
            refresh_catalogue.refresh(good, str(base), MODEL, ModelConfig(), ServingCheckConfig())
    assert layout.version_dirs(str(base)) == [1]


@pytest.fixture(scope="module")
def served(cli_pipeline_run, tmp_path_factory):
    pushed = cli_pipeline_run["model_base"]
    (version,) = layout.version_dirs(pushed)
    base = str(tmp_path_factory.mktemp("refresh") / MODEL)
    shutil.copytree(os.path.join(pushed, str(version)), os.path.join(base, str(version)))
    srv = ServerProcess(base, MODEL, log_path=str(tmp_path_factory.mktemp("log") / "server.log"),
                        extra_args=["--file_system_poll_wait_seconds", "0.5"], ready_timeout_s=240).start()
    data = cli_pipeline_run["data"]
    train = _rows(os.path.join(data, "interactions", "train", "interactions.csv"))
    # The most active user and their last 20 items (chronological), as a client would send them.
    counts = {}
    for row in train:
        counts[row["user_id"]] = counts.get(row["user_id"], 0) + 1
    user = max(sorted(counts), key=counts.get)
    history = [r["item_id"] for r in sorted((r for r in train if r["user_id"] == user),
                                            key=lambda r: int(r["timestamp"]))][-20:]
    client = RecommenderClient(srv.grpc_target, MODEL)
    yield {"srv": srv, "base": base, "version": version, "data": data, "client": client,
           "items": _rows(os.path.join(data, "items", "items.csv")), "user": user, "history": history,
           "users": sorted(counts), "train_csv": os.path.join(data, "interactions", "train", "interactions.csv"),
           "metadata": os.path.join(cli_pipeline_run["output_dir"], "metadata", "tower-recs-e2e", "metadata.db")}
    client.close()
    srv.stop()


def _refresh(served, csv_path):
    return refresh_catalogue.main(["--items", csv_path, "--model_base_path", served["base"], "--model_name", MODEL,
                                   "--metadata_path", served["metadata"]])


def _prepare_error(served, items_csv, tmp_path, capsys):
    """data.prepare's message for the same item CSV (with the fixture's interactions)."""
    assert prepare_main(["--interactions", served["train_csv"], "--items", items_csv,
                         "--out", str(tmp_path / "prepared")]) == 2
    return capsys.readouterr().err.strip().splitlines()[0]


@pytest.mark.parametrize("case", ["unknown_column", "duplicate_id", "empty_title"])
def test_bad_csv_is_rejected_with_data_prepare_messages_and_nothing_changes(served, case, tmp_path, capsys):
    items = [dict(r) for r in served["items"]]
    fields = ("item_id", "title", "categories", "description")
    if case == "unknown_column":
        fields += ("descripton",)
        items[0]["descripton"] = "a misspelt column"
    elif case == "duplicate_id":
        items.append(dict(items[3], title="Another title"))
    else:
        items[5]["title"] = "   "
    bad_csv = _write(tmp_path / "bad.csv", items, fields)
    before = sorted(os.listdir(served["base"]))

    assert _refresh(served, bad_csv) == 2
    err = capsys.readouterr().err
    if case == "unknown_column":   # data.prepare ignores extra columns; the refresh names them
        assert f"{bad_csv}: line 1 (header): unknown column(s) ['descripton']" in err
    else:                          # the very message data.prepare prints for this file
        assert _prepare_error(served, bad_csv, tmp_path, capsys) in err
        assert ("line 7" if case == "empty_title" else "line 122") in err
    assert "The served version did not change." in err
    assert sorted(os.listdir(served["base"])) == before
    assert _available_versions(served["srv"]) == [served["version"]]


def test_refresh_serves_new_item_drops_removed_one_and_keeps_the_rest(served, tmp_path):
    client, user, history = served["client"], served["user"], served["history"]
    # The user's favourite history item (the served model's own ranking, nothing excluded) lends its text to a
    # brand-new item; the user's current top recommendation is removed from the catalogue.
    everything = [item for item, _ in client.recommend(user, k=100, history=history)]
    favourite = next(item for item in everything if item in history)
    before = client.recommend(user, k=10, history=history, exclude=history)
    removed = before[0][0]
    rows = [r for r in served["items"] if r["item_id"] != removed]
    source = next(r for r in served["items"] if r["item_id"] == favourite)
    rows.append(dict(source, item_id=NEW_ITEM))
    new_csv = _write(tmp_path / "catalogue.csv", rows)

    failures, answered, stop = [], [0], threading.Event()

    def traffic():   # a client sending requests without pause through the whole refresh and swap
        with RecommenderClient(served["srv"].grpc_target, MODEL) as c:
            while not stop.is_set():
                try:
                    c.recommend(user, k=10, history=history)
                    answered[0] += 1
                except Exception as e:  # noqa: BLE001 - every failure is reported
                    failures.append(repr(e))

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        assert _refresh(served, new_csv) == 0
        new_version = layout.version_dirs(served["base"])[-1]
        deadline = time.monotonic() + 120
        while _available_versions(served["srv"]) != [new_version] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _available_versions(served["srv"]) == [new_version]
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not failures and answered[0] > 0, failures[:3]

    with open(os.path.join(served["base"], f"refresh-{new_version}.json")) as f:
        record = json.load(f)
    # Unchanged items kept their vectors (the served texts came from the pipeline's lineage): one item embedded.
    assert record["items"] == {"total": len(rows), "new": 1, "changed": 0, "kept": len(rows) - 1, "removed": 1}
    assert record["previous_texts_from"] == "ML Metadata lineage"
    assert all(reason.startswith("PASS") for reason in record["serving_check"])

    # The new item is served: it reaches the user's top 100 on its text alone (where in it depends on the
    # popularity its text predicts, trainer/popularity.py).
    assert NEW_ITEM in [item for item, _ in client.recommend(user, k=100, history=history, exclude=history)]
    after = client.recommend(user, k=10, history=history, exclude=history)
    for answer in client.recommend_batch(served["users"], k=100):
        assert removed not in [item for item, _ in answer]
    # Same query tower and same vectors for every other item: the rest of the ranking is unchanged.
    kept_before = [(i, s) for i, s in before if i != removed]
    kept_after = [(i, s) for i, s in after if i != NEW_ITEM]
    n = min(len(kept_before), len(kept_after))
    assert [i for i, _ in kept_after[:n]] == [i for i, _ in kept_before[:n]]
    assert [s for _, s in kept_after[:n]] == pytest.approx([s for _, s in kept_before[:n]], abs=1e-5)

    # The same catalogue again changes nothing and pushes nothing.
    assert _refresh(served, new_csv) == 0
    assert layout.version_dirs(served["base"])[-1] == new_version
