"""Retrieval quality on the full catalogue: MostPopular, EASE, ID-only and BERT two-tower, warm and cold.

    python -m benchmarks.quality --data ../shared/data/ml-latest-small --format ml-latest-small \
        --out benchmarks/results
    python -m benchmarks.quality --data data/sample --format contract --out outputs/quality-quick --quick
    python -m benchmarks.quality ... --tune --grid temperature 0.05 0.1 0.2   # validation only, no test

Every learned model is trained with `--seeds` seeds (default 5; `ModelConfig.seed + i`) and reported as
mean +- 95% confidence interval over seeds (Student t). MostPopular and EASE are deterministic. The
paired comparisons bootstrap over users (10,000 resamples): each user's metric, averaged over seeds,
for the default model minus each baseline; the 95% interval of the mean difference and of the
relative gain says whether a lead is real or user-sampling noise. `--variants` adds issue 16's
variants (`VARIANTS`: the default config with a field or two changed) as rows, each also compared
with the default model; `--report-name` names the output files.

Protocol (docs/anchors.md): per user the last 20% of interactions by time are test; all ratings are
implicit interactions; every catalogue item is ranked; the user's train items are excluded;
Recall@K = hits / |user's test items|, averaged over users with test items. The query of a test
user is their id and their last 20 train items (the history as of the split point).

Cold items: 10% of the interacted items (seeded) lose *all* their interactions from training; the
same models are trained again on that reduced train set and evaluated on three slices of the same
test set: `cold` (relevant = the user's test interactions with cold items), `warm` (the rest) and `mixed` (all of
them: the whole list a user sees when a tenth of the catalogue is new, where new items' gains and warm items'
losses net out).
Ranking is still over the full catalogue. The cold items are new items: they arrive after training, as
`make refresh-catalogue` adds them, so their vectors keep full weight; other catalogue items without a
train interaction get `ModelConfig.unseen_item_scale` (`trainer.train.candidate_vectors`), in both scenarios.

EASE's lambda is tuned on a validation split of train (the same per-user chronological 80/20 of
the train part). The two-tower models use the config the pipeline trains: `ModelConfig()` with the
same TOWER_RECS_MODEL_<FIELD> overrides (and `--set FIELD=VALUE`).

`--tune` never sees the test split: it keeps only the train part of the chronological split (the
test part is dropped unread), trains on its `fit` part and scores its `validation` part after
every epoch, for each value of each `--grid FIELD VALUE...`, and writes
`<out>/tuning/<field>.json` plus the summary `<out>/tuning/README.md`. The `ModelConfig` defaults
cite those files. `--tune-cold` also holds 10% of the train items out of `fit` and reports the
validation cold/warm slices.

The two-tower models are trained by the project's trainer code (`trainer.train.train_model`) on
index features built like `trainer.preprocessing.preprocessing_fn` builds them: vocabularies of
train ids by frequency (desc, ties by id desc as tft.vocabulary), OOV = vocabulary size, history =
the last 20 items strictly before the interaction, -1 padded.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from benchmarks.baselines import EASE, MostPopular, gram_matrix, interaction_matrix
from data import prepare
from pipeline import overrides
from schema import contract
from trainer.metrics import retrieval_metrics, top_k_excluding
from trainer.model_config import ModelConfig

KS = (10, 50, 100)
CURVE_K = 100
BASELINES = ("MostPopular", "EASE")
DEFAULT_MODEL = "TwoTower-BERT"    # the pipeline's model: `ModelConfig()`
MODELS = BASELINES + ("TwoTower-ID", DEFAULT_MODEL)
SLICES = ("all", "new_users", "cold", "warm", "mixed")
# Issue 16's variants: the default config with these fields changed (`--variants` picks; rows in quality.md).
VARIANTS = {
    "TwoTower-BERT-mean-tower": {"query_tower": "mean"},
    "TwoTower-BERT-sasrec-tower": {"query_tower": "sasrec"},
    "TwoTower-BERT+id-from-text": {"id_from_text": "true"},
    # The default before the content-to-id map and `unseen_item_scale` (issue 16's cold-start change).
    "TwoTower-BERT-no-id-from-text": {"id_from_text": "false", "unseen_item_scale": "1.0"},
    # The default before the popularity prior of the served score (trainer/popularity.py).
    "TwoTower-BERT-no-popularity-prior": {"popularity_prior": "0"},
    # The default before a new item's popularity prior was read from its text: every new item at the 0.95 quantile.
    "TwoTower-BERT-fixed-new-item-prior": {"new_item_popularity": "0.95", "new_item_text_popularity": "0",
                                           "new_item_scale": "1.0"},
    # The default before the served weights were the mean of the last epoch ends' (trainer/weight_averaging.py).
    "TwoTower-BERT-last-epoch-weights": {"average_last_epochs": "1"},
    # The default before the new-item quantile was re-chosen with averaged weights (0.75 -> 0.7).
    "TwoTower-BERT-new-items-at-q0.75": {"new_item_popularity": "0.75", "new_item_scale": "1.0"},
    # Training histories hide 0-2 of their most recent items (validation's pick; the test split did not confirm it).
    "TwoTower-BERT-target-horizon-3": {"target_horizon": "3"},
    # The default before more epochs were averaged (6 epochs, the last 3 epoch ends; now 14 and 13).
    "TwoTower-BERT-6-epochs-last-3": {"epochs": "6", "average_last_epochs": "3"},
    # The default before a new item's query match was shrunk (`new_item_scale`) and its placement re-chosen with it.
    "TwoTower-BERT-unshrunk-new-items": {"new_item_popularity": "0.7", "new_item_text_popularity": "2.5",
                                         "new_item_scale": "1.0"},
    "TwoTower-BERT+id-dropout-curriculum": {"id_dropout_start": "0.9"},
    "TwoTower-BERT+id-dropout-0.3": {"id_dropout": "0.3"},     # the previous default: cold items first
}
# Benchmark-only variants: the default model served as the average of this many models' scores, each trained with
# its own seed (what serving the concatenated vectors [q1/n, ..., qn/n, 1] . [c1, ..., cn, prior] would give).
# Not a ModelConfig option: the pipeline serves one model; this measures what n times the training would buy.
ENSEMBLES = {"TwoTower-BERT-2-seed-ensemble": 2}
ENSEMBLE_SEED_STRIDE = 1000   # member i trains with seed + i * this: never another run's seed
LAMBDAS = (100.0, 200.0, 400.0, 800.0)
QUICK_LAMBDAS = (10.0, 100.0)

_T0 = time.time()


def log(message: str) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"[{time.time() - _T0:7.1f}s load {load:4.1f}] {message}", flush=True)


# -- data ----------------------------------------------------------------------------------------
TAG_MODES = ("none", "leak-free", "all")


def load_data(path: str, fmt: str, tags: str = "none") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions [user_id, item_id, timestamp], items [item_id, title, categories, description]).

    MovieLens descriptions are ml-latest-small's tags with `tags="all"` (written by users, some after the
    rows we score: a leak) and empty otherwise; "leak-free" fills them later (`with_leak_free_tags`), once
    the splits are known.
    """
    if fmt == "contract":
        train, evals, items = prepare.read_contract(path)
        interactions = pd.concat([train, evals], ignore_index=True)
    else:
        from data.movielens import load_movielens

        interactions, items = load_movielens(path, fmt)
        if tags != "all":
            items = items.assign(**{contract.DESCRIPTION: ""})
    interactions = interactions[[contract.USER_ID, contract.ITEM_ID, contract.TIMESTAMP]].copy()
    interactions[contract.USER_ID] = interactions[contract.USER_ID].astype(str)
    interactions[contract.ITEM_ID] = interactions[contract.ITEM_ID].astype(str)
    interactions[contract.TIMESTAMP] = interactions[contract.TIMESTAMP].astype(np.int64)
    items = prepare.validate_items(items)
    return interactions, items


def with_leak_free_tags(items: pd.DataFrame, tags: pd.DataFrame, fit: pd.DataFrame,
                        cold_items: Sequence[str]) -> pd.DataFrame:
    """`items` with descriptions made only of tags written before anything the benchmark scores.

    A tag is kept when its author wrote it no later than their own last interaction in the tuning (fit)
    split, which precedes their validation and test rows: the same per-user time cut the interactions
    get. Authors without fit rows keep no tags; cold items keep none (a new item has no tags yet, so
    the cold slice measures title + genres). `tags`: ml-latest-small's tags.csv (`data.movielens.read_tags`).
    """
    from data.movielens import tag_descriptions

    last_fit = fit.groupby(contract.USER_ID)[contract.TIMESTAMP].max()
    author = prepare.prefixed(tags["userId"], "u")
    stamp = pd.to_numeric(tags["timestamp"], errors="coerce").to_numpy()
    kept = tags[stamp <= author.map(last_fit).fillna(-np.inf).to_numpy()]
    by_movie = tag_descriptions(kept)
    by_item = pd.Series(by_movie.to_numpy(), index=prepare.prefixed(pd.Series(by_movie.index), "m"))
    description = items[contract.ITEM_ID].map(by_item).fillna("")
    description[items[contract.ITEM_ID].isin(set(cold_items))] = ""
    return items.assign(**{contract.DESCRIPTION: description.to_numpy()})


@dataclasses.dataclass
class Splits:
    train: pd.DataFrame        # per-user chronological 80%
    test: pd.DataFrame         # per-user chronological 20%
    fit: pd.DataFrame          # the same split applied to train: for tuning
    validation: pd.DataFrame
    cold_items: list[str]      # held out entirely from `cold_train`
    cold_train: pd.DataFrame   # train without any interaction with a cold item


def make_splits(interactions: pd.DataFrame, items: pd.DataFrame, test_fraction: float = 0.2,
                cold_fraction: float = 0.1, seed: int = 0) -> Splits:
    train, test = prepare.chronological_split(interactions, test_fraction=test_fraction)
    fit, validation = prepare.validation_split(train, fraction=test_fraction)
    _, _, cold_items = prepare.cold_item_split(interactions, items, fraction=cold_fraction, seed=seed)
    cold_train = train[~train[contract.ITEM_ID].isin(set(cold_items))].reset_index(drop=True)
    return Splits(train, test, fit, validation, cold_items, cold_train)


def tft_vocabulary(ids: pd.Series) -> list[str]:
    """Distinct ids by frequency, descending; ties by id, descending (as tft.vocabulary orders them)."""
    counts = ids.value_counts()
    frame = pd.DataFrame({"id": counts.index.astype(str), "n": counts.to_numpy()})
    frame = frame.sort_values(["n", "id"], ascending=[False, False], kind="mergesort")
    return frame["id"].tolist()


def _index(ids: Sequence[str], vocab: dict[str, int], oov: int) -> np.ndarray:
    return np.fromiter((vocab.get(i, oov) for i in ids), np.int64, count=len(ids))


def history_matrix(histories: Sequence[Sequence[str]], item_position: dict[str, int], num_items: int) -> np.ndarray:
    """[N, HISTORY_LENGTH] indices of the last HISTORY_LENGTH ids (left-aligned, -1 padded, OOV = num_items)."""
    out = -np.ones([len(histories), contract.HISTORY_LENGTH], np.int64)
    for row, history in enumerate(histories):
        history = list(history)[-contract.HISTORY_LENGTH:]
        out[row, :len(history)] = [item_position.get(i, num_items) for i in history]
    return out


@dataclasses.dataclass
class Queries:
    """Test users of one evaluation: their query history, exclusions and relevant items per slice."""
    users: list[str]
    history: list[list[str]]                 # last HISTORY_LENGTH train items, oldest first
    exclude: list[np.ndarray]                # catalogue columns of all their train-period items
    relevant: dict[str, list[np.ndarray]]    # slice name -> catalogue columns per user


def make_queries(train: pd.DataFrame, test: pd.DataFrame, column: dict[str, int],
                 slices: dict[str, Callable[[pd.DataFrame], pd.DataFrame]],
                 exclude_from: Optional[pd.DataFrame] = None) -> Queries:
    """`exclude_from` (default `train`) holds the items each user has already seen."""
    exclude_from = train if exclude_from is None else exclude_from
    ordered = prepare._chrono_order(train)
    history = ordered.groupby(contract.USER_ID, sort=False)[contract.ITEM_ID].apply(list).to_dict()
    seen = exclude_from.groupby(contract.USER_ID)[contract.ITEM_ID].apply(list).to_dict()
    users = sorted(set(test[contract.USER_ID]))
    relevant = {}
    for name, select in slices.items():
        grouped = select(test).groupby(contract.USER_ID)[contract.ITEM_ID].apply(list).to_dict()
        relevant[name] = [np.array([column[i] for i in grouped.get(u, [])], np.int64) for u in users]
    return Queries(users=users,
                   history=[history.get(u, [])[-contract.HISTORY_LENGTH:] for u in users],
                   exclude=[np.array([column[i] for i in seen.get(u, [])], np.int64) for u in users],
                   relevant=relevant)


# -- item texts ----------------------------------------------------------------------------------
def item_texts(items: pd.DataFrame) -> list[str]:
    from trainer.item_text import catalogue_texts

    return catalogue_texts({name: items[name].to_numpy(object) for name in
                            (contract.TITLE, contract.CATEGORIES, contract.DESCRIPTION)})


def text_embeddings(texts: list[str], cfg: ModelConfig, cache_dir: str) -> np.ndarray:
    """Frozen-encoder embeddings of every catalogue text, cached in `cache_dir` by a hash of texts + encoder."""
    key = hashlib.sha256("\n".join([os.path.abspath(cfg.encoder_handle), cfg.encoder_output_key] + texts)
                         .encode("utf-8")).hexdigest()[:16]
    path = os.path.join(cache_dir, f"text_embeddings_{key}.npy")
    if os.path.exists(path):
        log(f"text embeddings: cached {path}")
        return np.load(path)
    import logging

    from encoder.text_embedding import encode_texts

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("encoder.text_embedding").setLevel(logging.INFO)  # progress every 50 batches
    log(f"encoding {len(texts)} item texts with {cfg.encoder_handle} ...")
    start = time.time()
    vectors = encode_texts(cfg.preprocess_handle, cfg.encoder_handle, texts, output_key=cfg.encoder_output_key)
    log(f"encoded {len(texts)} texts in {time.time() - start:.1f}s ({len(texts) / (time.time() - start):.0f}/s)")
    os.makedirs(cache_dir, exist_ok=True)
    np.save(path, vectors)
    return vectors


# -- models --------------------------------------------------------------------------------------
def popularity_scores(train: pd.DataFrame, users: Sequence[str], column: dict[str, int], n: int) -> np.ndarray:
    matrix, _, active = _user_matrix(train, users, column, n)
    scores = np.zeros([len(users), n], np.float32)
    scores[:, active] = MostPopular().fit(matrix).scores(np.zeros(len(users)))
    return scores


def _user_matrix(train: pd.DataFrame, users: Sequence[str], column: dict[str, int], n: int):
    """Binary [all train users, n] matrix, the row of each of `users` (or -1) and the active columns."""
    user_position = {u: i for i, u in enumerate(sorted(set(train[contract.USER_ID])))}
    X = interaction_matrix([user_position[u] for u in train[contract.USER_ID]],
                           [column[i] for i in train[contract.ITEM_ID]], len(user_position), n)
    active = np.flatnonzero(np.asarray(X.sum(axis=0)).reshape(-1) > 0)
    return X[:, active], np.array([user_position.get(u, -1) for u in users]), active


def ease_scores(train: pd.DataFrame, users: Sequence[str], column: dict[str, int], n: int,
                lambdas: Sequence[float]) -> dict[float, np.ndarray]:
    """EASE scores [len(users), n] for each lambda (one Gram matrix; EASE is fit on items seen in train)."""
    X, rows, active = _user_matrix(train, users, column, n)
    gram = gram_matrix(X)
    out = {}
    for lam in lambdas:
        start = time.time()
        model = EASE(lam).fit(X, gram=gram)
        scores = np.zeros([len(users), n], np.float32)
        known = rows >= 0
        scores[np.ix_(known, active)] = model.scores(rows[known])
        out[lam] = scores
        log(f"EASE lambda={lam:g} on {len(active)} items: {time.time() - start:.1f}s")
    return out


@dataclasses.dataclass
class IndexData:
    user_vocab: list[str]
    item_vocab: list[str]
    train: dict[str, np.ndarray]
    query_user: np.ndarray
    query_history: np.ndarray


def index_features(train: pd.DataFrame, queries: Queries) -> IndexData:
    """Index features of the training interactions and the test queries, as preprocessing_fn makes them."""
    user_vocab = tft_vocabulary(train[contract.USER_ID])
    item_vocab = tft_vocabulary(train[contract.ITEM_ID])
    user_position = {u: i for i, u in enumerate(user_vocab)}
    item_position = {i: n for n, i in enumerate(item_vocab)}
    with_history = prepare.add_history(train)
    histories = [h.split() if h else [] for h in with_history[contract.HISTORY]]
    examples = {
        contract.USER_INDEX: _index(list(with_history[contract.USER_ID]), user_position, len(user_vocab)),
        contract.ITEM_INDEX: _index(list(with_history[contract.ITEM_ID]), item_position, len(item_vocab)),
        contract.HISTORY_INDEX: history_matrix(histories, item_position, len(item_vocab)),
    }
    return IndexData(user_vocab, item_vocab, examples,
                     _index(queries.users, user_position, len(user_vocab)),
                     history_matrix(queries.history, item_position, len(item_vocab)))


def two_tower_scores(cfg: ModelConfig, data: IndexData, catalogue_ids: list[str], text_vectors: np.ndarray,
                     callbacks=None, verbose: int = 2, new_items: Optional[set] = None):
    """Trains with `trainer.train.train_model`; returns (scores [queries, catalogue], model, train seconds).

    `new_items`: catalogue items that arrive after training (the cold slice's held-out items, as
    `make refresh-catalogue` would add them): full-weight vectors, not `unseen_item_scale`'s."""
    from trainer.train import build_text_table, train_model

    text_table = build_text_table(data.item_vocab, catalogue_ids, text_vectors)
    start = time.time()
    model = train_model(cfg, data.train, len(data.user_vocab), len(data.item_vocab), text_table,
                        verbose=verbose, callbacks=callbacks)
    seconds = time.time() - start
    return score_two_tower(model, data, catalogue_ids, text_vectors, new_items), model, seconds


def score_two_tower(model, data: IndexData, catalogue_ids: list[str], text_vectors: np.ndarray,
                    new_items: Optional[set] = None) -> np.ndarray:
    import tensorflow as tf

    from trainer.train import candidate_vectors, catalogue_index

    candidates = candidate_vectors(model, catalogue_index(data.item_vocab, catalogue_ids), text_vectors,
                                   new_items=np.isin(catalogue_ids, sorted(new_items or ())))
    queries = np.concatenate([
        model.served_query(tf.constant(data.query_user[i:i + 4096]),
                           tf.constant(data.query_history[i:i + 4096])).numpy()
        for i in range(0, len(data.query_user), 4096)]) if len(data.query_user) else np.zeros([0, candidates.shape[1]])
    return queries @ candidates.T


# -- metrics -------------------------------------------------------------------------------------
def evaluate(scores: np.ndarray, queries: Queries, slice_name: str) -> dict:
    """Metrics, the Recall@1..100 curve and `per_user` metric arrays over the users with relevant items.

    `per_user` ({metric: [users]}, plus "user" = the query row of each) feeds the paired bootstrap; it is
    left out of the JSON report.
    """
    relevant = queries.relevant[slice_name]
    keep = [i for i, r in enumerate(relevant) if len(r)]
    if not keep:
        return {"users": 0, "curve": [0.0] * CURVE_K, **{f"recall@{k}": 0.0 for k in KS},
                **{f"ndcg@{k}": 0.0 for k in KS}, "per_user": {"user": np.zeros(0, np.int64)}}
    top = top_k_excluding(scores[keep], [queries.exclude[i] for i in keep], CURVE_K)
    hits = np.stack([np.isin(top[j], relevant[i]) for j, i in enumerate(keep)])       # [U, CURVE_K]
    sizes = np.array([len(np.unique(relevant[i])) for i in keep], np.float64)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    per_user: dict = {"user": np.array(keep, np.int64)}
    for k in KS:
        per_user[f"recall@{k}"] = hits[:, :k].sum(axis=1) / sizes
        ideal = np.cumsum(discounts)[np.minimum(sizes, min(k, hits.shape[1])).astype(np.int64) - 1]
        per_user[f"ndcg@{k}"] = (hits[:, :k] * discounts[:k]).sum(axis=1) / ideal
    result = {"users": len(keep), **{name: float(v.mean()) for name, v in per_user.items() if name != "user"}}
    curve = (np.cumsum(hits, axis=1) / sizes[:, None]).mean(axis=0)
    if curve.shape[0] < CURVE_K:  # tiny catalogues
        curve = np.pad(curve, (0, CURVE_K - curve.shape[0]), mode="edge")
    result["curve"] = [float(x) for x in curve]
    result["per_user"] = per_user
    return result


METRICS = tuple(f"{m}@{k}" for m in ("recall", "ndcg") for k in KS)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% Student-t confidence interval); half-width 0 for one value."""
    import scipy.stats

    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float(values.mean()), 0.0
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def over_seeds(runs: Sequence[dict]) -> dict:
    """One model/slice's `evaluate` results of every seed -> mean, `<metric>_ci95`, `per_seed` and the
    per-user metrics averaged over seeds (same users in every seed: the slice fixes them)."""
    out: dict = {"users": runs[0]["users"], "seeds": len(runs), "per_seed": {}}
    for metric in METRICS:
        values = [r[metric] for r in runs]
        out[metric], out[f"{metric}_ci95"] = mean_ci(values)
        out["per_seed"][metric] = [round(v, 5) for v in values]
    out["curve"] = [float(x) for x in np.mean([r["curve"] for r in runs], axis=0)]
    out["per_user"] = {name: (np.mean([r["per_user"][name] for r in runs], axis=0) if name != "user"
                              else runs[0]["per_user"]["user"]) for name in runs[0]["per_user"]}
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of a - b over users and 95% percentile intervals of it and of mean(a) / mean(b) - 1,
    resampling users with replacement (paired: both models on the same resampled users)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(a), size=(resamples, len(a)))
    mean_a, mean_b = a[rows].mean(axis=1), b[rows].mean(axis=1)
    relative = np.where(mean_b > 0, mean_a / np.where(mean_b > 0, mean_b, 1.0) - 1.0, np.nan)
    return {"difference": float(a.mean() - b.mean()),
            "difference_ci95": [float(x) for x in np.percentile(mean_a - mean_b, [2.5, 97.5])],
            "relative": float(a.mean() / b.mean() - 1.0) if b.mean() > 0 else None,
            "relative_ci95": ([float(x) for x in np.nanpercentile(relative, [2.5, 97.5])]
                              if b.mean() > 0 else None),
            "users": len(a), "resamples": resamples}


def comparisons(results: dict, model: str, baselines: Sequence[str],
                slices: Sequence[str] = ("all", "warm", "cold", "mixed"),
                metrics: Sequence[str] = ("recall@50", "ndcg@10")) -> dict:
    """`paired_bootstrap` of `model` vs each baseline, per slice and metric: {"A vs B": {slice: {metric: ..}}}."""
    out: dict = {}
    for baseline in baselines:
        for slice_name in slices:
            a, b = results[slice_name].get(model), results[slice_name].get(baseline)
            if a is None or b is None or not a["users"]:
                continue
            out.setdefault(f"{model} vs {baseline}", {})[slice_name] = {
                metric: paired_bootstrap(a["per_user"][metric], b["per_user"][metric]) for metric in metrics}
    return out


def _fmt(result: dict, metric: str) -> str:
    half = result.get(f"{metric}_ci95")
    return f"{result[metric]:.3f}" + (f" ± {half:.3f}" if result.get("seeds", 1) > 1 else "")


def markdown_table(results: dict, models: Sequence[str]) -> str:
    rows = ["| model | slice | users | seeds | R@10 | R@50 | R@100 | NDCG@10 |", "|---|---|---|---|---|---|---|---|"]
    for slice_name in SLICES:
        for model in models:
            r = results.get(slice_name, {}).get(model)
            if r is None or not r["users"]:
                continue
            rows.append(f"| {model} | {slice_name} | {r['users']} | {r.get('seeds', 1)} | "
                        + " | ".join(_fmt(r, m) for m in ("recall@10", "recall@50", "recall@100", "ndcg@10")) + " |")
    return "\n".join(rows)


def markdown_comparisons(paired: dict) -> str:
    rows = ["| comparison | slice | metric | difference [95% CI] | relative [95% CI] |", "|---|---|---|---|---|"]
    for name, by_slice in paired.items():
        for slice_name, by_metric in by_slice.items():
            for metric, r in by_metric.items():
                lo, hi = r["difference_ci95"]
                relative = "n/a" if r["relative"] is None else \
                    f"{r['relative']:+.1%} [{r['relative_ci95'][0]:+.1%}, {r['relative_ci95'][1]:+.1%}]"
                rows.append(f"| {name} | {slice_name} | {metric} | {r['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] | "
                            f"{relative} |")
    return "\n".join(rows)


def plot_curves(results: dict, models: Sequence[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = np.arange(1, CURVE_K + 1)
    styles = {"all": "-", "cold": ":"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for slice_name, style in styles.items():
        for color, model in zip(colors, models):
            r = results.get(slice_name, {}).get(model)
            if r is not None and r["users"]:
                ax.plot(ks, r["curve"], style, color=color, label=f"{model} ({slice_name})")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (mean over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _without_per_user(results: dict) -> dict:
    return {s: {m: {k: v for k, v in r.items() if k != "per_user"} for m, r in by_model.items()}
            for s, by_model in results.items()}


# -- main ----------------------------------------------------------------------------------------
def model_config(args) -> ModelConfig:
    """`ModelConfig()` with TOWER_RECS_MODEL_* overrides, then --quick, --preprocess/--encoder and --set."""
    values = {"epochs": "2", "batch_size": "128", "jit_compile": "false", "steps_per_execution": "1"} \
        if args.quick else {}
    if args.preprocess:
        values["preprocess_handle"] = args.preprocess
    if args.encoder:
        values["encoder_handle"] = args.encoder
    values.update(overrides.parse_assignments(args.set))
    return overrides.with_overrides(overrides.from_env(ModelConfig(), "MODEL"), values)


def id_only(cfg: ModelConfig) -> ModelConfig:
    """`cfg` for zero text vectors: no content-to-id map (it would map every item's zero text to one stand-in),
    and new items, which it cannot tell apart, get the popularity prior of the least popular known item
    instead of a popular one's (`new_item_popularity` 0, no text read: `new_item_text_popularity` 0; the prior of
    known items is kept). It trains on next-item targets (`target_horizon` 1), its own validation pick: warm R@50
    0.3122 vs 0.3084 at 3, all items 0.3026 vs 0.3018 (tuning/horizon_id_only_s4*_target_horizon.json). The
    default's epochs and averaging (14, the last 13) are also better for it than the 6 / last 3 before them:
    warm R@50 0.3158 vs 0.3122, all items 0.3072 vs 0.3026, NDCG@10 0.1689 vs 0.1590 (tuning/idonly_ep*; 10 / last
    3 or 7: warm 0.3163 / 0.3160, all 0.3085 / 0.3095, the same within seeds)."""
    return dataclasses.replace(cfg, id_from_text=False, new_item_popularity=0.0, new_item_text_popularity=0.0,
                               target_horizon=1)


def learned_models(cfg: ModelConfig, text_vectors: np.ndarray,
                   variants: Sequence[str] = (),
                   with_id_only: bool = True) -> dict[str, tuple[ModelConfig, np.ndarray]]:
    """Name -> (config, catalogue text vectors) of every learned model the benchmark trains.

    Variants equal to the default config (e.g. its own query tower) are left out."""
    # Nothing to fall back on without text: the ID-only model keeps every id.
    models = {"TwoTower-ID": (dataclasses.replace(id_only(cfg), id_dropout=0.0, id_dropout_start=-1.0),
                              np.zeros_like(text_vectors)),
              DEFAULT_MODEL: (cfg, text_vectors)}
    if not with_id_only:
        del models["TwoTower-ID"]
    for name in variants:
        if name in ENSEMBLES:
            models[name] = (cfg, text_vectors)
            continue
        variant = overrides.with_overrides(cfg, VARIANTS[name], source=f"variant {name}")
        if variant != cfg:
            models[name] = (variant, text_vectors)
    return models


def learned_scores(name: str, cfg: ModelConfig, data: IndexData, catalogue_ids: list[str],
                    text_vectors: np.ndarray, verbose: int = 2, new_items: Optional[set] = None):
    """Scores of the learned model `name` (the benchmark's one training call): `two_tower_scores` of `cfg`, or for
    an `ENSEMBLES` name the mean of its members' scores (member i trained with seed
    `cfg.seed + i * ENSEMBLE_SEED_STRIDE`); returns (scores, total train seconds)."""
    members = ENSEMBLES.get(name, 1)
    total, seconds = None, 0.0
    for i in range(members):
        scores, _, member_seconds = two_tower_scores(
            dataclasses.replace(cfg, seed=cfg.seed + i * ENSEMBLE_SEED_STRIDE), data, catalogue_ids, text_vectors,
            verbose=verbose, new_items=new_items)
        total = scores if total is None else total + scores
        seconds += member_seconds
    return total / members, seconds


def run_benchmark(args) -> dict:
    cfg = model_config(args)
    os.makedirs(args.out, exist_ok=True)

    interactions, items = load_data(args.data, args.format, tags=args.tags)
    if args.tags == "leak-free":
        from data.movielens import read_tags

        tags = read_tags(args.data)
        if tags is None:
            raise SystemExit(f"--tags leak-free: {args.data} has no tags.csv")
        splits = make_splits(interactions, items, args.test_fraction, args.cold_fraction, args.seed)
        # Neither the test's cold items nor --tune-cold's keep tags (their authors' ratings are held out).
        cold = set(splits.cold_items) | set(tuning_cold_items(splits.fit, splits.validation, items,
                                                              args.cold_fraction, args.seed))
        items = with_leak_free_tags(items, tags, splits.fit, sorted(cold))
    log(f"{len(interactions)} interactions, {interactions[contract.USER_ID].nunique()} users, "
        f"{len(items)} catalogue items (tags as description: {args.tags}; "
        f"{int((items[contract.DESCRIPTION] != '').sum())} items with a description)")
    catalogue_ids = items[contract.ITEM_ID].tolist()
    column = {item_id: i for i, item_id in enumerate(catalogue_ids)}
    text_vectors = text_embeddings(item_texts(items), cfg, args.cache_dir or args.out)
    verbose = 0 if args.quick else 2
    protocol = {"data": os.path.basename(os.path.normpath(args.data)), "format": args.format,
                "tags": args.tags, "test_fraction": args.test_fraction,
                "cold_fraction": args.cold_fraction, "seed": args.seed, "catalogue_items": len(catalogue_ids)}
    if args.tune:
        return run_tuning(args, cfg, interactions, items, catalogue_ids, column, text_vectors, protocol, verbose)

    n = len(catalogue_ids)
    splits = make_splits(interactions, items, args.test_fraction, args.cold_fraction, args.seed)
    seeds = [cfg.seed + i for i in range(args.seeds)]
    report: dict = {"config": cfg.to_dict(), "protocol": {**protocol, "cold_items": len(splits.cold_items),
                                                         "model_seeds": seeds}}

    # EASE lambda on the validation split of train.
    lambdas = QUICK_LAMBDAS if args.quick else tuple(args.lambdas)
    log(f"tuning EASE lambda on the validation split: {lambdas}")
    val_queries = make_queries(splits.fit, splits.validation, column, {"all": lambda d: d})
    val = {lam: evaluate(s, val_queries, "all") for lam, s in
           ease_scores(splits.fit, val_queries.users, column, n, lambdas).items()}
    lam = max(lambdas, key=lambda l: (val[l]["recall@50"], val[l]["ndcg@10"]))
    report["ease_validation"] = {str(l): {k: v for k, v in r.items() if k not in ("curve", "per_user")}
                                 for l, r in val.items()}
    report["ease_lambda"] = lam
    log(f"EASE lambda = {lam:g} (validation R@50 {val[lam]['recall@50']:.3f})")

    learned = learned_models(cfg, text_vectors, args.variants, with_id_only=not args.skip_id_only)
    models = list(BASELINES) + list(learned)
    runs: dict = {s: {m: [] for m in models} for s in SLICES}
    timings: dict = {}
    cold = set(splits.cold_items)
    train_users = set(splits.train[contract.USER_ID])
    # (scenario, train rows, slices, items new after training): the cold scenario's held-out items arrive
    # after training, as `make refresh-catalogue` adds new items.
    scenarios = [
        ("all", splits.train, {"all": lambda d: d,
                               # Users with no train rows (none under the per-user split; kept for other splits).
                               "new_users": lambda d: d[~d[contract.USER_ID].isin(train_users)]}, set()),
        ("cold", splits.cold_train, {"cold": lambda d: d[d[contract.ITEM_ID].isin(cold)],
                                     "warm": lambda d: d[~d[contract.ITEM_ID].isin(cold)],
                                     "mixed": lambda d: d}, cold),
    ]
    for scenario, train, slices, new_items in scenarios:
        # Exclusions: everything the user interacted with before the split (cold items included).
        queries = make_queries(train, splits.test, column, slices, exclude_from=splits.train)
        log(f"[{scenario}] {len(train)} train interactions, {len(queries.users)} test users")
        scores = {"MostPopular": popularity_scores(train, queries.users, column, n),
                  "EASE": ease_scores(train, queries.users, column, n, [lam])[lam]}
        for name in BASELINES:
            for slice_name in slices:
                runs[slice_name][name].append(evaluate(scores[name], queries, slice_name))
        data = index_features(train, queries)
        for name, (model_cfg, vectors) in learned.items():
            for seed in (seeds if name in MODELS else seeds[:args.variant_seeds or len(seeds)]):
                log(f"[{scenario}] training {name} seed {seed}: {len(data.train[contract.ITEM_INDEX])} examples, "
                    f"{model_cfg.epochs} epochs of batch {model_cfg.batch_size}")
                model_scores, seconds = learned_scores(name, dataclasses.replace(model_cfg, seed=seed), data,
                                                        catalogue_ids, vectors, verbose=verbose, new_items=new_items)
                timings.setdefault(f"{scenario}/{name}", []).append(round(seconds, 1))
                for slice_name in slices:
                    runs[slice_name][name].append(evaluate(model_scores, queries, slice_name))
                log(f"[{scenario}] {name} seed {seed} trained in {seconds:.1f}s: "
                    f"R@50 {runs[next(iter(slices))][name][-1]['recall@50']:.4f}")
        log(f"[{scenario}] done")

    results = {s: {m: over_seeds(r) for m, r in by_model.items() if r} for s, by_model in runs.items()}
    paired = comparisons(results, DEFAULT_MODEL, [m for m in models if m not in (DEFAULT_MODEL, "MostPopular")])
    report["results"] = _without_per_user(results)
    report["paired_bootstrap"] = paired
    report["train_seconds"] = timings
    report["targets"] = targets(results, paired)
    report["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["seconds"] = round(time.time() - _T0, 1)
    write_report(args, report, results, models, splits)
    return report


def targets(results: dict, paired: dict) -> dict:
    """The issues' targets (12, 16) from the means over seeds and the paired intervals."""
    default, ease = results["all"][DEFAULT_MODEL], results["all"]["EASE"]
    vs_ease = paired[f"{DEFAULT_MODEL} vs EASE"]["all"]
    warm_r100 = results["warm"][DEFAULT_MODEL]["recall@100"]
    out = {
        "default_beats_ease_recall@50_ci_above_0": vs_ease["recall@50"]["difference_ci95"][0] > 0,
        "default_beats_ease_ndcg@10_ci_above_0": vs_ease["ndcg@10"]["difference_ci95"][0] > 0,
        "default_over_ease_recall@50": results["all"][DEFAULT_MODEL]["recall@50"] / ease["recall@50"] - 1,
        "default_over_ease_ndcg@10": default["ndcg@10"] / ease["ndcg@10"] - 1,
        "cold_over_warm_recall@100": results["cold"][DEFAULT_MODEL]["recall@100"] / warm_r100 if warm_r100 else 0.0,
    }
    if "TwoTower-ID" in results["all"]:
        out["default_over_id_only_recall@50"] = default["recall@50"] / results["all"]["TwoTower-ID"]["recall@50"] - 1
        out["default_over_id_only_warm_recall@50"] = (results["warm"][DEFAULT_MODEL]["recall@50"]
                                                      / results["warm"]["TwoTower-ID"]["recall@50"] - 1)
    return out


def write_report(args, report: dict, results: dict, models: Sequence[str], splits: Splits) -> None:
    command = args.command or "python -m benchmarks.quality " + " ".join(sys.argv[1:])
    load = report["load_average"]
    seeds = report["protocol"]["model_seeds"]
    header = (f"Retrieval quality, full catalogue ({report['protocol']['catalogue_items']} items), seen items "
              f"excluded. `{command}`\n\n"
              f"Learned models: mean ± 95% CI over {len(seeds)} training seeds {seeds} (Student t); MostPopular "
              f"and EASE are deterministic. EASE lambda = {report['ease_lambda']:g} (validation). Cold slice: "
              f"{len(splits.cold_items)} items held out of training entirely; `cold`/`warm`/`mixed` rows come from "
              f"models trained without them (`mixed`: every test interaction, the whole list with new items in the "
              f"catalogue). `new_users` (test users with no train rows): "
              f"{results['new_users'].get('EASE', {}).get('users', 0)} under this split (every test user has "
              f"train rows), so no row. Load average at the end: "
              f"{', '.join(f'{x:.1f}' for x in load) if load else 'n/a'}.\n\n")
    paired = ("Paired per-user bootstrap (10,000 resamples of the users; each user's metric averaged over "
              "seeds):\n\n" + markdown_comparisons(report["paired_bootstrap"]) + "\n")
    lines = "\n".join(f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
                      for k, v in report["targets"].items())
    markdown = header + markdown_table(results, models) + "\n\n" + paired + "\nTargets:\n" + lines + "\n"
    print(markdown)
    with open(os.path.join(args.out, f"{args.report_name}.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(args.out, f"{args.report_name}.json"), "w") as f:
        json.dump(report, f, indent=1)
    plot_curves(results, models, os.path.join(args.out, f"{args.report_name}_recall.png"),
                f"Recall@K, {report['protocol']['data']}, chronological 80/20, seen excluded, "
                f"mean of {len(seeds)} seeds")
    log(f"wrote {args.report_name}.md, .json, _recall.png to {args.out}")


# -- tuning (validation only) ---------------------------------------------------------------------
TUNING_DIR = "tuning"
SELECT_BY = ("recall@50", "ndcg@10")   # validation metrics that pick a value, in order
# A field that changes only how new items rank (all-items metrics tie, e.g. `new_item_popularity`) is picked on the
# `--tune-cold` slices instead: the best warm R@50 among values whose cold R@100 is at least this share of the warm
# one (issue 16's cold-start bar).
COLD_OVER_WARM = 0.5


def tuning_splits(interactions: pd.DataFrame, test_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit, validation): the chronological split of the *train* part; the test part is dropped unread."""
    train = prepare.chronological_split(interactions, test_fraction=test_fraction)[0]
    return prepare.validation_split(train, fraction=test_fraction)


def tuning_cold_items(fit: pd.DataFrame, validation: pd.DataFrame, items: pd.DataFrame, fraction: float,
                      seed: int) -> list[str]:
    """`--tune-cold`'s cold items: drawn from the train part only; their fit rows are removed, validation keeps
    them."""
    return prepare.cold_item_split(pd.concat([fit, validation]), items, fraction=fraction, seed=seed)[2]


def run_tuning(args, cfg: ModelConfig, interactions: pd.DataFrame, items: pd.DataFrame, catalogue_ids: list[str],
               column: dict[str, int], text_vectors: np.ndarray, protocol: dict, verbose: int) -> dict:
    """Each `--grid FIELD VALUE...`: one model per value trained on `fit`, scored on `validation` after every
    epoch; writes `<out>/tuning/<field>.json` and regenerates `<out>/tuning/README.md`."""
    fit, validation = tuning_splits(interactions, args.test_fraction)
    queries = make_queries(fit, validation, column, {"all": lambda d: d})
    data = index_features(fit, queries)
    cold_setup = None
    if args.tune_cold:
        cold = tuning_cold_items(fit, validation, items, args.cold_fraction, args.seed)
        cold_fit = fit[~fit[contract.ITEM_ID].isin(set(cold))].reset_index(drop=True)
        cold_queries = make_queries(cold_fit, validation, column,
                                    {"cold": lambda d: d[d[contract.ITEM_ID].isin(set(cold))],
                                     "warm": lambda d: d[~d[contract.ITEM_ID].isin(set(cold))]}, exclude_from=fit)
        cold_setup = (index_features(cold_fit, cold_queries), cold_queries, set(cold))
    out_dir = os.path.join(args.out, TUNING_DIR)
    os.makedirs(out_dir, exist_ok=True)
    written, done = {}, {}
    for field, *values in (args.grid or [["epochs", str(cfg.epochs)]]):
        runs = []
        for value in values:
            run_cfg = overrides.with_overrides(cfg, {field: value}, source="--grid")
            if run_cfg in done:   # the base config recurs in every grid: train it once
                runs.append({**done[run_cfg], "value": getattr(run_cfg, field)})
                continue
            vectors = np.zeros_like(text_vectors) if args.id_only else text_vectors
            if args.id_only:
                run_cfg = id_only(run_cfg)
            log(f"[tune] {field}={value}")
            start = time.time()
            curve, final = tune_curve(run_cfg, data, catalogue_ids, vectors, queries, verbose)
            run = {"value": getattr(run_cfg, field), "curve": curve, "final": final,
                   "best_epoch": max(curve, key=lambda c: tuple(c[m] for m in SELECT_BY))["epoch"],
                   "train_seconds": round(time.time() - start, 1)}
            if cold_setup is not None:
                cold_data, cold_queries, _ = cold_setup
                scores, _, _ = two_tower_scores(run_cfg, cold_data, catalogue_ids, vectors, verbose=verbose,
                                                new_items=cold_setup[2])
                run["cold_validation"] = {s: {k: round(v, 4) for k, v in evaluate(scores, cold_queries, s).items()
                                              if k not in ("curve", "per_user")} for s in ("cold", "warm")}
            runs.append(run)
            done[run_cfg] = run
        chosen = choose(field, runs)
        result = {"field": field, "chosen": chosen,
                  "selected_by": f"validation {' then '.join(SELECT_BY)} (of the trained model, after the last "
                                 f"epoch; for epochs: the best epoch of the curve; when they tie, the best warm "
                                 f"recall@50 with cold recall@100 >= {COLD_OVER_WARM} x warm)",
                  "base_config": {k: v for k, v in cfg.to_dict().items() if not k.endswith("_handle")},
                  "protocol": {**protocol, "split": "train part of the per-user chronological split, itself "
                                                    "split chronologically into fit/validation; test unread",
                               "fit_interactions": len(fit), "validation_interactions": len(validation),
                               "validation_users": len(queries.users),
                               "cold_validation_items": len(cold_setup[2]) if cold_setup else 0},
                  "id_only": bool(args.id_only), "runs": runs,
                  "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
        name = f"{args.tag}_{field}" if args.tag else field
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(result, f, indent=1)
        written[name] = result
        log(f"[tune] {field}: chose {chosen} -> {os.path.join(out_dir, name + '.json')}")
    write_tuning_summary(out_dir)
    return {"tuning": written}


def choose(field: str, runs: list[dict]):
    """The value `runs` support: for `epochs` the best epoch of the (one, long) curve; else the best final
    validation metrics (`SELECT_BY`), or None for a one-value grid (compare it with the base run's file). When
    every value gives the same all-items metrics (the field only moves new items), the best warm R@50 among the
    values meeting `COLD_OVER_WARM` on the `--tune-cold` slices (None if none does)."""
    if field == "epochs":
        return runs[0]["best_epoch"]
    if len(runs) < 2:
        return None
    if len({tuple(r["final"][m] for m in SELECT_BY) for r in runs}) == 1 and all("cold_validation" in r for r in runs):
        slices = [(r["value"], r["cold_validation"]["cold"], r["cold_validation"]["warm"]) for r in runs]
        ok = [(warm["recall@50"], value) for value, cold, warm in slices
              if cold["recall@100"] >= COLD_OVER_WARM * warm["recall@100"]]
        return max(ok)[1] if ok else None
    return max(runs, key=lambda r: tuple(r["final"][m] for m in SELECT_BY))["value"]


def tune_curve(cfg: ModelConfig, data: IndexData, catalogue_ids, text_vectors, queries: Queries,
               verbose: int) -> tuple[list[dict], dict]:
    """Validation Recall/NDCG after every epoch, and of the trained model (its served weights: with
    `average_last_epochs` > 1 not the last epoch's); the model is trained on the fit part of train."""
    import tensorflow as tf

    curve: list[dict] = []

    class PerEpoch(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            scores = score_two_tower(self.model, data, catalogue_ids, text_vectors)
            r = evaluate(scores, queries, "all")
            curve.append({"epoch": epoch + 1, **{k: round(v, 4) for k, v in r.items()
                                                  if k not in ("curve", "per_user")}})
            log(f"epoch {epoch + 1}: val R@10 {r['recall@10']:.4f} R@50 {r['recall@50']:.4f} "
                f"R@100 {r['recall@100']:.4f} NDCG@10 {r['ndcg@10']:.4f}")

    scores, _, _ = two_tower_scores(cfg, data, catalogue_ids, text_vectors, callbacks=[PerEpoch()], verbose=verbose)
    final = {k: round(v, 4) for k, v in evaluate(scores, queries, "all").items() if k not in ("curve", "per_user")}
    return curve, {"epoch": len(curve), **final}


def write_tuning_summary(out_dir: str) -> None:
    """`README.md` of the tuning folder: one table row per value of every `<field>.json` in it."""
    rows = ["| file | field | value | val R@50 | val NDCG@10 | best epoch | val cold R@100 | val warm R@100 | chosen |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(f for f in os.listdir(out_dir) if f.endswith(".json")):
        result = json.load(open(os.path.join(out_dir, name)))
        for run in result["runs"]:
            cold = run.get("cold_validation", {})
            cells = [f"{cold[s]['recall@100']:.4f}" if s in cold else "" for s in ("cold", "warm")]
            chosen = "✓" if run["value"] == result["chosen"] else ("n/a" if result["chosen"] is None else "")
            value = f"{run['value']} (curve)" if result["field"] == "epochs" else run["value"]
            rows.append(f"| {name} | {result['field']} | {value} | {run['final']['recall@50']:.4f} | "
                        f"{run['final']['ndcg@10']:.4f} | {run['best_epoch']} | {cells[0]} | {cells[1]} | "
                        f"{chosen if result['field'] != 'epochs' else result['chosen']} |")
    text = ("# Tuning evidence (validation only)\n\n"
            "Written by `python -m benchmarks.quality --data <MovieLens dir> --tune --grid FIELD VALUE...`: each model "
            "is trained on the `fit` part of the train split and scored on its chronologically later "
            "`validation` part; the test split is never read. Metrics of the trained model (after the last epoch; "
            "with `average_last_epochs` > 1 its averaged weights); `best epoch` is the epoch with the best "
            "validation R@50 (then NDCG@10). Cold/warm columns: `--tune-cold` (10% of the train items held out of "
            "`fit`). `chosen` n/a: a one-value grid, compared with the base config's run "
            "(same `base_config`) in another file. `chosen` is this rule's pick per file (one field varied around "
            "`base_config`); the comments in `trainer/model_config.py` say which default was kept and why where "
            "a run with the other defaults disagreed.\n\n"
            + "\n".join(rows) + "\n")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="MovieLens directory or a contract-layout directory")
    parser.add_argument("--format", default="ml-latest-small",
                        choices=("contract", "auto", "ml-100k", "ml-1m", "ml-latest-small"))
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache-dir", default=None, help="where text embeddings are cached (default: --out)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 2 epochs, small batches, 2 lambdas")
    parser.add_argument("--seeds", type=int, default=5, help="training seeds per learned model (cfg.seed + i)")
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS) + sorted(ENSEMBLES),
                        default=list(VARIANTS) + list(ENSEMBLES),
                        help="extra learned models (default: all of VARIANTS and ENSEMBLES; none: `--variants`)")
    parser.add_argument("--variant-seeds", type=int, default=None, help="seeds per variant (default: --seeds)")
    parser.add_argument("--skip-id-only", action="store_true", help="do not train the ID-only two-tower")
    parser.add_argument("--report-name", default="quality", help="file name of the .md/.json/_recall.png report")
    parser.add_argument("--tags", choices=TAG_MODES, default="none",
                        help="ml-latest-small tags as item descriptions: none (default); leak-free (only tags "
                             "their author wrote before their own validation/test rows; none on cold items); "
                             "all (some postdate the rows scored: leaks)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--cold-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the cold-item choice")
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    parser.add_argument("--preprocess", default=None, help="TF Hub preprocessor (default: ModelConfig)")
    parser.add_argument("--encoder", default=None, help="TF Hub encoder (default: ModelConfig)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="ModelConfig override, parsed as TOWER_RECS_MODEL_<FIELD> is (pipeline/overrides.py), "
                             "e.g. --set temperature=0.1 --set hidden_dims=[256,128]")
    parser.add_argument("--tune", action="store_true",
                        help="validation only: train on the fit split, score validation per epoch, write tuning/")
    parser.add_argument("--grid", action="append", nargs="+", metavar=("FIELD", "VALUE"), default=[],
                        help="with --tune: a ModelConfig field and the values to try, e.g. --grid temperature 0.05 0.1")
    parser.add_argument("--tune-cold", action="store_true", help="with --tune: also score validation cold/warm slices")
    parser.add_argument("--id-only", action="store_true", help="with --tune: zero text vectors (the ID-only model)")
    parser.add_argument("--tag", default="", help="prefix of the --tune output files")
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for grid in args.grid:
        if len(grid) < 2:
            parser.error(f"--grid {' '.join(grid)}: expected FIELD VALUE [VALUE ...]")
    run_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
