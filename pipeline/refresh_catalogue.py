"""Catalogue refresh without retraining: a new item CSV becomes the next served model version.

    make refresh-catalogue ITEMS=new_catalogue.csv
    python -m pipeline.refresh_catalogue --items new_catalogue.csv [--model_base_path DIR] [--model_name NAME]

The CSV is the *full* new catalogue in `data.prepare`'s item format (item_id,title[,categories,description]);
items absent from it are removed from the served index. Each step is timed:

  validate  data.prepare's rules and messages (`data/validation.py`): ids, blank titles, duplicate ids; unknown
            columns are rejected too (a misspelt `descripton` would silently change every vector).
  load      the latest version's catalogue (ids, vectors, text fingerprints) and the towers to reuse.
  embed     only items that are new or whose text changed, with the served model's own `candidate_embedding`
            signature; every other item keeps its vector, read from the served model's index. What the served
            catalogue's texts were comes from the version itself (`CATALOGUE_FILE`, written by every refresh) or,
            for a version the pipeline pushed, from its lineage in ML Metadata (Pusher <- Trainer <- items).
  index     `trainer.retrieval_index.build_index` over the new catalogue: exact or IVF, as `ModelConfig` says.
  export    the same four signatures. The query tower, transform graph and text encoder are the served model's
            own objects, loaded and saved again (`RefreshedModule`): nothing is retrained, only the index is new.
  check     the pipeline's ServingCheck (`pipeline/components/serving_check.py`): an isolated TF + TF Text
            process checks ops, signatures, warmup replay, latency, and that answers come from the new catalogue.
  push      the checked directory is renamed to `<base>/<next version>/` (written beside it under a name TF
            Serving ignores), so TF Serving and `serving/manager.py` see the version appear whole and swap to it
            after its warmup; `<base>/refresh-<version>.json` records what changed and the timings.

Any rejection (bad CSV, failed check) leaves the served versions as they were. A second refresh of the same
base path while one runs is refused (`LOCK_FILE`), so two cannot race for a version number. A plain module rather than a
TFX pipeline: the gates are the same functions the pipeline runs, and an ExampleGen + ML Metadata run per
refresh would spend much of the 60 s budget on orchestration; the record beside each version is its history.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops of the served model's graph)

from data import validation
from data.source import DataError, Source, read_csv
from pipeline.components import serving_check
from pipeline.components.gate_config import ServingCheckConfig
from schema import contract
from serving import layout
from trainer.item_text import catalogue_texts
from trainer.model_config import ModelConfig
from trainer.retrieval_index import build_index
from trainer.serving_model import RecommenderModule

# The catalogue a refreshed version serves (ids in index order, text fingerprints, the trained version its
# towers come from), inside the version: TF Serving ignores assets.extra/ files other than its warmup file.
CATALOGUE_FILE = os.path.join("assets.extra", "catalogue.json")
RECORD_PREFIX = "refresh-"
LOCK_FILE = ".refresh.lock"
STAGING_PREFIX = ".refresh-"
EMBED_BATCH = 256
# The served index's vectors in a version's checkpoint (the `index.item_vectors` variable of the module).
INDEX_VECTORS_KEY = "index/item_vectors/.ATTRIBUTES/VARIABLE_VALUE"


class RefreshRejected(Exception):
    """The refresh stopped before pushing; the message says why (the served versions are unchanged)."""


class RefreshedModule(RecommenderModule):
    """A served model with a new catalogue index: same signatures, same towers, transform graph and encoder.

        served = tf.saved_model.load(version_dir)
        module = RefreshedModule(served, build_index(ids, vectors, cfg), default_k=cfg.default_k)
        tf.saved_model.save(module, out_dir, signatures=module.signatures())

    The served model's objects (`model`, `tft_layer`, `text_encoder`) and its `embed_query` /
    `embed_candidate` functions are kept under the same names, so a refreshed version can be refreshed again
    without functions nesting deeper; `recommend` and `recommend_tf_examples` are traced anew over the index.
    """

    def __init__(self, served, index: tf.Module, default_k: int):
        tf.Module.__init__(self)   # not RecommenderModule's: nothing is built from a trained model here
        self.model = served.model
        self.tft_layer = served.tft_layer
        self.text_encoder = served.text_encoder
        self.embed_query = served.embed_query
        self.embed_candidate = served.embed_candidate
        self.default_k = default_k
        self.index = index

    def _query(self, user_id: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
        return self.embed_query(user_id, history)[contract.OUTPUT_EMBEDDING]


@dataclasses.dataclass
class Catalogue:
    """The validated new catalogue: ids, item texts (`trainer.item_text`) and raw columns, in CSV order."""

    columns: pd.DataFrame

    @property
    def ids(self) -> list[str]:
        return self.columns[contract.ITEM_ID].tolist()

    def texts(self) -> list[str]:
        return catalogue_texts({c: self.columns[c].tolist() for c in contract.ITEM_COLUMNS})


def fingerprint(text: str) -> str:
    """A short, stable fingerprint of an item text (sha256, 16 hex digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_catalogue_csv(path: str) -> Catalogue:
    """The CSV checked with data.prepare's item rules; DataError naming file, line and column otherwise."""
    source = Source("items", path=path)
    raw = read_csv(source, required=validation.REQUIRED_ITEM_COLUMNS)
    validation.check_columns(raw, validation.REQUIRED_ITEM_COLUMNS, source)
    validation.check_known_columns(raw, contract.ITEM_COLUMNS, source)
    items = validation.validate_items(raw, source)
    items, _ = validation.drop_duplicates(items, (contract.ITEM_ID,), source, dedupe=False)
    return Catalogue(items.reset_index(drop=True))


# -- what the served version holds --------------------------------------------------------------
@dataclasses.dataclass
class ServedCatalogue:
    """The latest version's catalogue ({item_id: vector}, {item_id: text fingerprint}) and the model whose
    towers a refresh reuses (`towers`, loaded from `trained_dir`)."""

    version_dir: str
    vectors: dict
    fingerprints: dict
    fingerprints_from: str
    trained_dir: str
    towers: object


def table_vectors(served) -> dict[str, np.ndarray]:
    """{item_id: candidate vector} of a loaded model's index.

    The index's id list is a graph constant that loading does not restore as an attribute; its
    id -> position table is a restored resource, exported here (a lookup-table op, no graph surgery).
    """
    ids, positions = tf.raw_ops.LookupTableExportV2(table_handle=served.index.item_position.resource_handle,
                                                    Tkeys=tf.string, Tvalues=tf.int64)
    vectors = served.index.item_vectors.numpy()[positions.numpy()]
    return dict(zip((i.decode("utf-8") for i in ids.numpy()), vectors))


def load_served(model_base_path: str, metadata_path: Optional[str]) -> ServedCatalogue:
    """What the latest version under `model_base_path` serves, and the towers to reuse.

    A refreshed version carries `CATALOGUE_FILE` (ids in index order, fingerprints, the trained version it
    descends from): its vectors are read from its checkpoint and the towers are loaded from the trained
    version, so every refresh re-saves the trained model's objects once and saved functions do not pile up
    refresh after refresh. A version the pipeline pushed is loaded whole; its catalogue texts come from ML
    Metadata (`pushed_items`), or, without lineage, are unknown (every item is then embedded again).
    """
    version_dir = layout.latest_version_dir(model_base_path)
    record_path = os.path.join(version_dir, CATALOGUE_FILE)
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
        checkpoint = tf.train.load_checkpoint(os.path.join(version_dir, "variables", "variables"))
        vectors = dict(zip(record["item_ids"], checkpoint.get_tensor(INDEX_VECTORS_KEY)))
        trained_dir = os.path.join(model_base_path, str(record["trained_version"]))
        if not os.path.isfile(os.path.join(trained_dir, layout.SAVED_MODEL_FILE)):   # cleaned up: one more re-save
            trained_dir = version_dir
        return ServedCatalogue(version_dir, vectors, dict(zip(record["item_ids"], record["fingerprints"])),
                               CATALOGUE_FILE, trained_dir, tf.saved_model.load(trained_dir))
    towers = tf.saved_model.load(version_dir)
    items = pushed_items(metadata_path, version_dir) if metadata_path and os.path.exists(metadata_path) else None
    if items is None:
        fingerprints, source = {}, "unknown (no catalogue record, no ML Metadata lineage): every item embedded again"
    else:
        decoded = {c: [v.decode("utf-8") if isinstance(v, bytes) else (v or "") for v in items[c]]
                   for c in contract.ITEM_COLUMNS}
        fingerprints = dict(zip(decoded[contract.ITEM_ID], map(fingerprint, catalogue_texts(decoded))))
        source = "ML Metadata lineage"
    return ServedCatalogue(version_dir, table_vectors(towers), fingerprints, source, version_dir, towers)


def pushed_items(metadata_path: str, version_dir: str) -> Optional[dict]:
    """The items ExampleGen output the model pushed as `version_dir` was trained with, via ML Metadata:
    PushedModel (pushed_version) <- Pusher <- Model <- CatalogTrainer <- `items` Examples. None if not found."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    from pipeline import example_reader
    from pipeline.components.catalog_trainer import ITEMS_KEY

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    # By version number (unix seconds, unique per pipeline), so a serving dir copied or mounted elsewhere matches.
    version = os.path.basename(os.path.normpath(version_dir))
    pushed = [a for a in store.get_artifacts_by_type("PushedModel")
              if a.custom_properties["pushed_version"].string_value == version]
    if not pushed:
        return None

    def producer_inputs(artifact_id: int) -> list:
        """(input key, artifact id) of the execution that output `artifact_id`."""
        outputs = [e for e in store.get_events_by_artifact_ids([artifact_id])
                   if e.type == metadata_store_pb2.Event.OUTPUT]
        if not outputs:
            return []
        return [(e.path.steps[0].key if e.path.steps else "", e.artifact_id)
                for e in store.get_events_by_execution_ids([outputs[0].execution_id])
                if e.type == metadata_store_pb2.Event.INPUT]

    models = [a for key, a in producer_inputs(pushed[-1].id) if key == "model"]
    items = [a for key, a in producer_inputs(models[0]) if key == ITEMS_KEY] if models else []
    if not items:
        return None
    [artifact] = store.get_artifacts_by_id(items[:1])
    pattern = os.path.join(artifact.uri, f"Split-{contract.ITEMS_SPLIT}", "*")
    return example_reader.read_columns(pattern, example_reader.ITEMS_SCHEMA, contract.ITEM_COLUMNS)


# -- steps ----------------------------------------------------------------------------------------
def embed_items(served, items: pd.DataFrame) -> np.ndarray:
    """Candidate vectors [N, D] of `items` from the served model's own `candidate_embedding` signature."""
    signature = served.signatures[contract.CANDIDATE_EMBEDDING]
    out = []
    for start in range(0, len(items), EMBED_BATCH):
        batch = items.iloc[start:start + EMBED_BATCH]
        inputs = {c: tf.constant(batch[c].tolist(), tf.string) for c in contract.ITEM_COLUMNS}
        out.append(signature(**inputs)[contract.OUTPUT_EMBEDDING].numpy())
    return np.concatenate(out) if out else np.zeros([0, 0], np.float32)


def write_version(served: ServedCatalogue, index: tf.Module, fingerprints: dict, cfg: ModelConfig,
                  export_dir: str) -> None:
    """Saves the served towers with `index` to `export_dir`: the four signatures, the served version's warmup
    requests and `CATALOGUE_FILE` ({item_id: text fingerprint} of the index's items)."""
    module = RefreshedModule(served.towers, index, cfg.default_k)
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    os.makedirs(os.path.join(export_dir, os.path.dirname(layout.WARMUP_FILE)), exist_ok=True)
    shutil.copyfile(os.path.join(served.version_dir, layout.WARMUP_FILE), os.path.join(export_dir, layout.WARMUP_FILE))
    # Ids in the index's own order (an IVF index sorts them by partition), the order of its vectors.
    index_ids = [i.decode("utf-8") for i in index.item_ids.numpy()]
    with open(os.path.join(export_dir, CATALOGUE_FILE), "w", encoding="utf-8") as f:
        json.dump({"trained_version": int(os.path.basename(served.trained_dir)), "item_ids": index_ids,
                   "fingerprints": [fingerprints[i] for i in index_ids]}, f)


@contextlib.contextmanager
def exclusive(model_base_path: str):
    """Holds `<base>/LOCK_FILE` (an advisory lock the OS drops if the process dies); RefreshRejected if taken."""
    import fcntl

    path = os.path.join(model_base_path, LOCK_FILE)
    with open(path, "w", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RefreshRejected(f"another refresh of {model_base_path} is running (it holds {path})") from None
        yield


def next_version(base_path: str) -> int:
    """Unix seconds, as TFX's Pusher names versions, and always above the latest version."""
    return max([int(time.time())] + [v + 1 for v in layout.version_dirs(base_path)])


def refresh(items_csv: str, model_base_path: str, model_name: str, cfg: ModelConfig,
            check_cfg: ServingCheckConfig, metadata_path: Optional[str] = None) -> dict:
    """Validates `items_csv`, embeds what changed, checks and pushes the next version; returns the record.

        record = refresh("items.csv", "outputs/serving_model/tower_recs", "tower_recs", ModelConfig(),
                         ServingCheckConfig())
        record["version"], record["items"]["new"], record["seconds"]["embed"]

    A catalogue identical to the served one (same ids and texts) pushes nothing: `record["version"]` is None.

    Raises:
      DataError: the CSV breaks a rule (data.prepare's message); nothing was written.
      RefreshRejected: ServingCheck did not bless the refreshed model, or another refresh of the base path is
        running; nothing was pushed.
      FileNotFoundError: no served version under `model_base_path`.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now

    catalogue = read_catalogue_csv(items_csv)
    texts = catalogue.texts()
    lap("validate")
    layout.latest_version_dir(model_base_path)   # FileNotFoundError naming the dir when nothing is served
    with exclusive(model_base_path):   # held until the version is pushed or rejected
        served = load_served(model_base_path, metadata_path)
        base_dir, old_vectors = served.version_dir, served.vectors
        prints = [fingerprint(t) for t in texts]
        keep = np.array([item_id in old_vectors and served.fingerprints.get(item_id) == p
                         for item_id, p in zip(catalogue.ids, prints)], bool)
        removed = sorted(set(old_vectors) - set(catalogue.ids))
        lap("load")
        if keep.all() and not removed:
            return {"model_name": model_name, "version": None, "base_version": int(os.path.basename(base_dir)),
                    "unchanged": True, "seconds": seconds}

        vectors = np.zeros([len(catalogue.ids), len(next(iter(old_vectors.values())))], np.float32)
        if keep.any():
            vectors[keep] = np.stack([old_vectors[i] for i, k in zip(catalogue.ids, keep) if k])
        if (~keep).any():
            vectors[~keep] = embed_items(served.towers, catalogue.columns[~keep])
        lap("embed")

        index = build_index(catalogue.ids, vectors, cfg)
        lap("index")

        version = next_version(model_base_path)
        staging = os.path.join(model_base_path, f"{STAGING_PREFIX}{version}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            write_version(served, index, dict(zip(catalogue.ids, prints)), cfg, staging)
            lap("export")

            result = serving_check.probe(staging, check_cfg)
            blessed, reasons = serving_check.judge(result, check_cfg, set(catalogue.ids))
            lap("check")
            if not blessed:
                raise RefreshRejected("ServingCheck did not bless the refreshed model:\n  " + "\n  ".join(reasons))

            os.rename(staging, os.path.join(model_base_path, str(version)))
            pushed_at = time.time()
            lap("push")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        new_ids = set(catalogue.ids) - set(old_vectors)
        record = {
            "model_name": model_name,
            "version": version,
            "base_version": int(os.path.basename(base_dir)),
            "items_csv": os.path.basename(items_csv),
            "items_csv_sha256": file_sha256(items_csv),
            "previous_texts_from": served.fingerprints_from,
            "towers_from_version": int(os.path.basename(served.trained_dir)),
            "items": {"total": len(catalogue.ids), "new": len(new_ids), "changed": int((~keep).sum()) - len(new_ids),
                      "kept": int(keep.sum()), "removed": len(removed)},
            "index": type(index).__name__,
            "serving_check": reasons,
            "seconds": {**seconds, "total": round(sum(seconds.values()), 3)},
            "pushed_at": pushed_at,   # unix time of the rename: when TF Serving can first see the version
        }
        with open(os.path.join(model_base_path, f"{RECORD_PREFIX}{version}.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipeline import configs

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.refresh_catalogue",
        description="Push the served model again with a new item catalogue, without retraining: new or changed "
                    "items are embedded with the served model's candidate tower, the index is rebuilt, the "
                    "pipeline's ServingCheck must pass, and the version is pushed atomically.",
        epilog="The CSV is the full new catalogue (item_id,title[,categories,description], UTF-8, header row); items "
               "absent from it are removed. A CSV that breaks data.prepare's rules is rejected with its file, "
               "line and column, and the served version does not change.")
    parser.add_argument("--items", required=True, help="the new catalogue CSV")
    parser.add_argument("--model_base_path", default=os.path.join(configs.SERVING_MODEL_DIR, configs.MODEL_NAME),
                        help="the served model's base path, <base>/<version>/ (default: the pipeline's push target)")
    parser.add_argument("--model_name", default=configs.MODEL_NAME)
    parser.add_argument("--metadata_path", default=configs.METADATA_PATH,
                        help="the pipeline's ML Metadata (SQLite): where a pipeline-pushed version's catalogue "
                             "texts are found")
    args = parser.parse_args(argv)
    try:
        record = refresh(args.items, args.model_base_path, args.model_name, configs.MODEL_CONFIG,
                         configs.SERVING_CHECK_CONFIG, args.metadata_path)
    except (DataError, RefreshRejected, FileNotFoundError) as e:
        print(f"error: {e}\nThe served version did not change.", file=sys.stderr)
        return 2 if isinstance(e, DataError) else 1
    if record["version"] is None:
        print(f"the catalogue is unchanged from {args.model_name} version {record['base_version']}: nothing pushed")
        return 0
    items, secs = record["items"], record["seconds"]
    print(f"pushed {args.model_name} version {record['version']} (from {record['base_version']}): "
          f"{items['total']} items, {items['new']} new, {items['changed']} changed, {items['removed']} removed, "
          f"{items['kept']} vectors kept; {record['index']}; "
          + ", ".join(f"{k} {v:.1f}s" for k, v in secs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
