"""RetrievalEvaluator: full-catalogue Recall@K / NDCG@K of the served model, and a ModelBlessing.

TFX's Evaluator (TFMA) has no retrieval metric over a whole catalogue, so this component
evaluates the exported SavedModel exactly as TF Serving will call it: the `serving_default`
signature with raw inputs (user_id, history, exclude, k).

Protocol (the split of `data.prepare`: per user, the latest interactions are eval):
  query     = the user's train items, oldest first / most recent last, capped at HISTORY_LENGTH
              (the history as of the user's first eval interaction)
  exclude   = every train item of the user (already seen)
  relevant  = the user's eval items
Metrics come from `trainer.metrics.retrieval_metrics` (mean over users with >= 1 relevant item),
overall and on slices:
  cold_items   relevant = eval items that never occur in train (users with at least one)
  new_users    eval users with no train interaction (empty history)
  light_users  users with train count <= the median train count
  heavy_users  users with train count  > the median train count

Blessing (written as TFX's Evaluator does: `blessed` custom property 1/0, BLESSED / NOT_BLESSED
file, `current_model[_id]`, `baseline_model[_id]`, so Pusher and LatestBlessedModelStrategy read it),
every check on the same eval users, exclusions and full catalogue (`judge`):
  * every absolute threshold `{metric: minimum}` holds for the candidate;
  * MostPopular (train-split popularity) is beaten: candidate >= most_popular * (1 + popularity_margin)
    on `popularity_metric`, so a first model worse than popularity is never blessed;
  * no regression: candidate >= baseline * (1 - max_relative_drop) on `baseline_metric` against the
    latest *pushed* model and against the best of the last `baseline_window` blessed models (resolved
    over ML Metadata by `baseline_resolvers.py`, re-scored on today's data), so small losses cannot
    compound run after run.

Outputs: `evaluation` (ModelEvaluation) holds `metrics.json` (see `EvalResult` layout in
`evaluate_and_judge`); `blessing` (ModelBlessing).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from typing import Any, Optional, Sequence

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, component_spec, standard_artifacts
from tfx.utils import io_utils, path_utils

from pipeline import example_reader
from pipeline.components.gate_config import EvaluationConfig  # noqa: F401  (re-exported)
from schema import contract

METRICS_FILE = "metrics.json"
BLESSED_FILE = "BLESSED"          # tfx.components.evaluator.constants.BLESSED_FILE_NAME
NOT_BLESSED_FILE = "NOT_BLESSED"  # tfx.components.evaluator.constants.NOT_BLESSED_FILE_NAME

MODEL_KEY = "model"
PUSHED_MODEL_KEY = "pushed_model"
BLESSED_MODELS_KEY = "blessed_models"
EXAMPLES_KEY = "examples"
ITEMS_KEY = "items"
CONFIG_KEY = "config"
EVALUATION_KEY = "evaluation"
BLESSING_KEY = "blessing"


# -- data ----------------------------------------------------------------------------------------
def _split_pattern(artifact: types.Artifact, split: str) -> str:
    pattern = example_reader.split_pattern(artifact, split)
    if not glob.glob(pattern):
        raise FileNotFoundError(f"No files in split '{split}' of {artifact.uri}")
    return pattern


@dataclasses.dataclass
class EvalData:
    """The evaluation queries: one row per eval user (see the module docstring for the protocol)."""

    users: list[str]               # eval users (with >= 1 eval item)
    histories: list[list[str]]     # query history per user (most recent last)
    exclude: list[list[str]]       # train items per user
    relevant: list[set]            # eval items per user
    train_counts: list[int]
    cold_items: set
    catalogue_size: int
    total_users: int = 0           # eval users before sampling (EvaluationConfig.max_users)


def _interaction_frame(examples: types.Artifact, split: str) -> "Any":
    """user_id, item_id, timestamp of one split (the one reader, batch by batch) as a DataFrame."""
    import pandas as pd

    columns = (contract.USER_ID, contract.ITEM_ID, contract.TIMESTAMP)
    parts = [pd.DataFrame({name: example_reader.first_values(batch.column(i)) for i, name in enumerate(columns)})
             for batch in example_reader.read_record_batches(
                 _split_pattern(examples, split), example_reader.INTERACTIONS_SCHEMA, columns)]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(columns))
    for name in (contract.USER_ID, contract.ITEM_ID):
        frame[name] = frame[name].map(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v)
    return frame


def sample_users(users: Sequence[str], max_users: int) -> list[str]:
    """`users` sorted, or the `max_users` of them with the smallest id hash (the same sample every run)."""
    users = sorted(users)
    if not max_users or len(users) <= max_users:
        return users
    import hashlib

    ranked = sorted(users, key=lambda u: hashlib.blake2b(u.encode("utf-8"), digest_size=8).digest())
    return sorted(ranked[:max_users])


def load_eval_data(examples: types.Artifact, items: Optional[types.Artifact],
                   history_length: int = contract.HISTORY_LENGTH, max_users: int = 0) -> EvalData:
    """The queries, exclusions and relevant items of the eval users (all, or a sample of `max_users`).

    Args:
      examples: the interactions ExampleGen output (train and eval splits).
      items: the catalogue ExampleGen output (for its size), or None.
      history_length: train items kept as the query history.
      max_users: 0 for every eval user, else at most this many (`sample_users`); `EvalData.total_users`
        keeps the full count.
    """
    train = _interaction_frame(examples, contract.TRAIN_SPLIT)
    evals = _interaction_frame(examples, contract.EVAL_SPLIT)
    all_users = evals[contract.USER_ID].unique().tolist()
    users = sample_users(all_users, max_users)
    cold_items = set(evals[contract.ITEM_ID].unique()) - set(train[contract.ITEM_ID].unique())
    catalogue_size = 0
    if items is not None:
        catalogue_size = len(set(example_reader.read_columns(
            _split_pattern(items, contract.ITEMS_SPLIT), example_reader.ITEMS_SCHEMA,
            [contract.ITEM_ID])[contract.ITEM_ID]))
    if len(users) < len(all_users):
        keep = set(users)
        train = train[train[contract.USER_ID].isin(keep)]
        evals = evals[evals[contract.USER_ID].isin(keep)]
    # Oldest first, ties in reading order (a stable sort), as the serving history is built.
    train = train.sort_values([contract.USER_ID, contract.TIMESTAMP], kind="stable")
    train_items = train.groupby(contract.USER_ID, sort=False)[contract.ITEM_ID].agg(list).to_dict()
    relevant = evals.groupby(contract.USER_ID, sort=False)[contract.ITEM_ID].agg(set).to_dict()
    data = EvalData([], [], [], [], [], cold_items=cold_items, catalogue_size=catalogue_size,
                    total_users=len(all_users))
    for user in users:
        events = train_items.get(user, [])
        data.users.append(user)
        data.histories.append(events[-history_length:] if history_length else [])
        data.exclude.append(sorted(set(events)))
        data.relevant.append(relevant[user])
        data.train_counts.append(len(events))
    return data


# -- scoring -------------------------------------------------------------------------------------
def _pad(rows: Sequence[Sequence[str]]) -> "Any":
    import numpy as np

    width = max((len(r) for r in rows), default=0)
    out = np.full([len(rows), width], contract.PAD, dtype=object)
    for i, row in enumerate(rows):
        out[i, :len(row)] = list(row)
    return out


def recommend_all(model_dir: str, data: EvalData, k: int, batch_size: int = 256) -> "Any":
    """Top-k item ids [U, k] (str) from the SavedModel's serving_default signature.

    Args:
      model_dir: the SavedModel (a pushed version directory).
      data: the queries; each user's history is the query and their train items are excluded.
      k: how many items per user.
      batch_size: users per signature call.
    """
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the item-text tower's ops)

    loaded = tf.saved_model.load(model_dir)
    signature = loaded.signatures[contract.SERVING_DEFAULT]
    rows = []
    for start in range(0, len(data.users), batch_size):
        end = start + batch_size
        result = signature(**{
            contract.USER_ID: tf.constant(np.asarray(data.users[start:end], dtype=object)),
            contract.HISTORY: tf.constant(_pad(data.histories[start:end]), tf.string),
            contract.INPUT_EXCLUDE: tf.constant(_pad(data.exclude[start:end]), tf.string),
            contract.INPUT_K: tf.constant(k, tf.int32),
        })
        rows.append(result[contract.OUTPUT_ITEM_IDS].numpy())
    if not rows:
        return np.zeros([0, k], dtype=object)
    top = np.concatenate(rows).astype(object)
    return np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v, otypes=[object])(top)


def slice_rows(data: EvalData) -> dict[str, tuple[list[int], Optional[list[set]]]]:
    """Slice name -> (user rows, relevant sets if they differ from the overall ones)."""
    import numpy as np

    counts = np.asarray(data.train_counts)
    median = float(np.median(counts[counts > 0])) if (counts > 0).any() else 0.0
    cold_rows, cold_relevant = [], []
    for i, rel in enumerate(data.relevant):
        cold = rel & data.cold_items
        if cold:
            cold_rows.append(i)
            cold_relevant.append(cold)
    return {
        "cold_items": (cold_rows, cold_relevant),
        "new_users": ([i for i, c in enumerate(counts) if c == 0], None),
        "light_users": ([i for i, c in enumerate(counts) if 0 < c <= median], None),
        "heavy_users": ([i for i, c in enumerate(counts) if c > median], None),
    }


def compute_metrics(top: "Any", data: EvalData, ks: Sequence[int]) -> dict[str, Any]:
    """{"overall": metrics, "slices": {slice: metrics}} of ranked item ids `top` [U, >= max(ks)]."""
    from trainer.metrics import retrieval_metrics

    result: dict[str, Any] = {"overall": retrieval_metrics(top, data.relevant, ks), "slices": {}}
    for name, (rows, relevant) in slice_rows(data).items():
        if not rows:
            result["slices"][name] = {"users": 0}
            continue
        rel = relevant if relevant is not None else [data.relevant[i] for i in rows]
        result["slices"][name] = retrieval_metrics(top[rows], rel, ks)
    return result


def evaluate_model(model_dir: str, data: EvalData, ks: Sequence[int], batch_size: int = 256) -> dict[str, Any]:
    """`compute_metrics` of the SavedModel at `model_dir`, plus its `model_dir` and `seconds`."""
    start = time.time()
    top = recommend_all(model_dir, data, max(ks), batch_size)
    metrics = compute_metrics(top, data, ks)
    metrics["model_dir"] = model_dir
    metrics["seconds"] = round(time.time() - start, 2)
    return metrics


# -- MostPopular ---------------------------------------------------------------------------------
def popularity_ranking(examples: types.Artifact, items: Optional[types.Artifact]) -> list:
    """Every catalogue item, most train interactions first (ties and unseen items by id).

    One pass over the train split through the one reader, batch by batch; counted with numpy.
    """
    import collections

    import numpy as np

    counts: collections.Counter = collections.Counter()
    for batch in example_reader.read_record_batches(_split_pattern(examples, contract.TRAIN_SPLIT),
                                                    example_reader.INTERACTIONS_SCHEMA, [contract.ITEM_ID]):
        ids, n = np.unique(example_reader.first_values(batch.column(0)).astype(object), return_counts=True)
        counts.update(dict(zip(ids.tolist(), n.tolist())))
    catalogue = set(counts)
    if items is not None:
        catalogue |= set(example_reader.read_columns(_split_pattern(items, contract.ITEMS_SPLIT),
                                                     example_reader.ITEMS_SCHEMA, [contract.ITEM_ID])[contract.ITEM_ID])
    ranked = sorted(catalogue, key=lambda item: (-counts.get(item, 0), item))
    return [item.decode("utf-8") if isinstance(item, bytes) else item for item in ranked]


def most_popular_top(ranking: Sequence[str], data: EvalData, k: int) -> "Any":
    """Top-k ids [U, k] of MostPopular for the eval users: `ranking` without each user's train items."""
    import numpy as np

    top = np.full([len(data.users), k], contract.PAD, dtype=object)
    for row, exclude in enumerate(data.exclude):
        # At most k + |exclude| items are looked at per user.
        seen = set(exclude)
        picked = [item for item in ranking[:k + len(seen)] if item not in seen][:k]
        top[row, :len(picked)] = picked
    return top


def evaluate_most_popular(ranking: Sequence[str], data: EvalData, ks: Sequence[int]) -> dict[str, Any]:
    """`compute_metrics` of MostPopular (train-split popularity, same users, exclusions and catalogue)."""
    start = time.time()
    metrics = compute_metrics(most_popular_top(ranking, data, max(ks)), data, ks)
    metrics["model"] = "MostPopular"
    metrics["seconds"] = round(time.time() - start, 2)
    return metrics


# -- judging -------------------------------------------------------------------------------------
def judge(candidate: dict, cfg: EvaluationConfig, most_popular: Optional[dict] = None,
          latest_pushed: Optional[dict] = None, best_blessed: Optional[dict] = None) -> tuple[bool, list[str]]:
    """(blessed, reasons): one reason per check, prefixed PASS / FAIL, with the numbers.

    Checks: every absolute threshold; candidate >= MostPopular * (1 + popularity_margin) on
    `popularity_metric` (MostPopular missing is a FAIL); candidate >= baseline * (1 - max_relative_drop)
    on `baseline_metric` for the latest pushed model and for the best recent blessed model (each
    skipped, with a PASS line saying so, when there is none).

        blessed, reasons = judge(candidate, EvaluationConfig(), most_popular=popular, latest_pushed=pushed)
    """
    reasons = []
    overall = candidate["overall"]
    for metric, minimum in sorted(cfg.thresholds.items()):
        value = overall.get(metric)
        if value is None:
            reasons.append(f"FAIL {metric}: not computed (ks={list(cfg.ks)})")
        elif value >= minimum:
            reasons.append(f"PASS {metric} = {value:.4f} >= {minimum} (absolute threshold)")
        else:
            reasons.append(f"FAIL {metric} = {value:.4f} < {minimum} (absolute threshold)")

    metric = cfg.popularity_metric
    if most_popular is None or metric not in most_popular["overall"] or metric not in overall:
        reasons.append(f"FAIL {metric}: MostPopular baseline not scored")
    else:
        value, base = overall[metric], most_popular["overall"][metric]
        floor = base * (1.0 + cfg.popularity_margin)
        ok = value >= floor
        reasons.append(f"{'PASS' if ok else 'FAIL'} {metric} = {value:.4f} {'>=' if ok else '<'} MostPopular "
                       f"{base:.4f} + {cfg.popularity_margin:.0%} = {floor:.4f}")

    metric = cfg.baseline_metric
    for name, baseline in (("latest pushed model", latest_pushed),
                           (f"best of the last {cfg.baseline_window} blessed models", best_blessed)):
        if baseline is None:
            reasons.append(f"PASS no {name} yet: no regression check against it")
            continue
        value, base = overall.get(metric), baseline["overall"].get(metric)
        if value is None or base is None:
            reasons.append(f"FAIL {metric}: not computed for the candidate or the {name}")
            continue
        floor = base * (1.0 - cfg.max_relative_drop)
        ok = value >= floor
        reasons.append(f"{'PASS' if ok else 'FAIL'} {metric} = {value:.4f} {'>=' if ok else '<'} {name} "
                       f"{base:.4f} - {cfg.max_relative_drop:.0%} = {floor:.4f}")
    return all(r.startswith("PASS") for r in reasons), reasons


# -- TFX component -------------------------------------------------------------------------------
class RetrievalEvaluatorSpec(component_spec.ComponentSpec):
    """Inputs: model, the optional baselines (latest pushed, recent blessed), interaction and item
    examples; outputs: evaluation, blessing."""

    PARAMETERS = {CONFIG_KEY: component_spec.ExecutionParameter(type=str)}
    INPUTS = {
        MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model),
        PUSHED_MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model, optional=True),
        BLESSED_MODELS_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model, optional=True),
        EXAMPLES_KEY: component_spec.ChannelParameter(type=standard_artifacts.Examples),
        ITEMS_KEY: component_spec.ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {
        EVALUATION_KEY: component_spec.ChannelParameter(type=standard_artifacts.ModelEvaluation),
        BLESSING_KEY: component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


def _with_artifact(metrics: dict, artifact: types.Artifact) -> dict:
    return {"uri": artifact.uri, "id": artifact.id, **metrics}


class RetrievalEvaluatorExecutor(base_executor.BaseExecutor):
    """Evaluates the candidate, MostPopular and the baselines, and writes the evaluation and the ModelBlessing."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        """Runs the evaluation; `exec_properties["config"]` is an `EvaluationConfig.to_json()`."""
        start = time.time()
        cfg = EvaluationConfig.from_json(exec_properties.get(CONFIG_KEY) or "")
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        pushed_model = (input_dict.get(PUSHED_MODEL_KEY) or [None])[0]
        # Newest first (TFX hands resolved artifacts over in id order, whatever the resolver returned).
        blessed_models = sorted(input_dict.get(BLESSED_MODELS_KEY) or [], key=lambda a: a.id,
                                reverse=True)[:cfg.baseline_window]
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        items = (input_dict.get(ITEMS_KEY) or [None])[0]
        evaluation = artifact_utils.get_single_instance(output_dict[EVALUATION_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])

        data = load_eval_data(examples, items, max_users=cfg.max_users)
        logging.info("RetrievalEvaluator: %d of %d eval users, %d cold items, catalogue %d",
                     len(data.users), data.total_users, len(data.cold_items), data.catalogue_size)
        scored: dict[str, dict] = {}

        def score(artifact: types.Artifact) -> dict:
            # Every model is scored on today's eval data; one SavedModel load per distinct model.
            if artifact.uri not in scored:
                scored[artifact.uri] = _with_artifact(evaluate_model(
                    path_utils.serving_model_path(artifact.uri), data, cfg.ks, cfg.batch_size), artifact)
            return scored[artifact.uri]

        candidate = score(model)
        most_popular = evaluate_most_popular(popularity_ranking(examples, items), data, cfg.ks)
        latest_pushed = score(pushed_model) if pushed_model is not None else None
        window = [score(m) for m in blessed_models]
        best_blessed = max(window, key=lambda m: m["overall"].get(cfg.baseline_metric, 0.0), default=None)
        blessed, reasons = judge(candidate, cfg, most_popular, latest_pushed, best_blessed)
        # The regression baseline to show first: the stronger of the two.
        baseline = max((b for b in (latest_pushed, best_blessed) if b is not None),
                       key=lambda m: m["overall"].get(cfg.baseline_metric, 0.0), default=None)
        message = "; ".join(r for r in reasons if r.startswith("FAIL")) or "all checks passed"
        result = {
            "blessed": blessed,
            "message": message,
            "reasons": reasons,
            "config": dataclasses.asdict(cfg),
            "candidate": candidate,
            "baseline": baseline,
            "baselines": {
                "most_popular": most_popular,
                "latest_pushed": latest_pushed,
                "best_blessed": best_blessed,
                "blessed_window": [{"uri": m["uri"], "id": m["id"],
                                    cfg.baseline_metric: m["overall"].get(cfg.baseline_metric)} for m in window],
            },
            "data": {"eval_users": len(data.users), "eval_users_total": data.total_users,
                     "eval_users_sampled": len(data.users) < data.total_users, "cold_items": len(data.cold_items),
                     "new_users": sum(1 for c in data.train_counts if c == 0),
                     "catalogue_size": data.catalogue_size,
                     "median_train_count": float(sorted(data.train_counts)[len(data.train_counts) // 2])
                     if data.train_counts else 0.0},
            "seconds": round(time.time() - start, 2),
        }
        io_utils.write_string_file(os.path.join(evaluation.uri, METRICS_FILE), json.dumps(result, indent=2))
        evaluation.set_int_custom_property("blessed", int(blessed))
        evaluation.set_float_custom_property(cfg.baseline_metric, candidate["overall"].get(cfg.baseline_metric, 0.0))

        # Exactly what Pusher (`blessed`) and LatestBlessedModelStrategy (`current_model_id`) read.
        blessing.set_string_custom_property("current_model", model.uri)
        blessing.set_int_custom_property("current_model_id", model.id)
        if baseline is not None:
            blessing.set_string_custom_property("baseline_model", baseline["uri"])
            blessing.set_int_custom_property("baseline_model_id", baseline["id"])
        blessing.set_string_custom_property("blessing_message", message[:2000])
        io_utils.write_string_file(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE), "")
        blessing.set_int_custom_property("blessed", int(blessed))
        logging.info("RetrievalEvaluator: blessed=%s in %.1fs\n  %s", blessed, result["seconds"],
                     "\n  ".join(reasons))


class RetrievalEvaluator(base_component.BaseComponent):
    """Full-catalogue retrieval evaluation of `model` vs. MostPopular and the baselines -> ModelBlessing.

        evaluator = RetrievalEvaluator(model=trainer.outputs["model"], examples=interaction_gen.outputs["examples"],
                                       items=item_gen.outputs["examples"],
                                       pushed_model=pushed_resolver.outputs["model"],
                                       blessed_models=recent_resolver.outputs["model"], config=EvaluationConfig())

    Outputs: `evaluation` (ModelEvaluation, metrics.json) and `blessing` (ModelBlessing, read by Pusher).
    """

    SPEC_CLASS = RetrievalEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(RetrievalEvaluatorExecutor)

    def __init__(self, model: types.BaseChannel, examples: types.BaseChannel, items: types.BaseChannel,
                 pushed_model: Optional[types.BaseChannel] = None,
                 blessed_models: Optional[types.BaseChannel] = None,
                 config: Optional[EvaluationConfig] = None):
        spec = RetrievalEvaluatorSpec(
            model=model, pushed_model=pushed_model, blessed_models=blessed_models, examples=examples, items=items,
            config=(config or EvaluationConfig()).to_json(),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        )
        super().__init__(spec=spec)
