"""Retrieval quality on the full catalogue: MostPopular, EASE, ID-only and BERT two-tower, warm and cold.

    python -m benchmarks.quality --data ../shared/data/ml-latest-small --format ml-latest-small \
        --out benchmarks/results
    python -m benchmarks.quality --data data/sample --format contract --out outputs/quality-quick --quick
    python -m benchmarks.quality ... --tune --set temperature=0.1   # validation curve per epoch, no test

Protocol (docs/anchors.md): per user the last 20% of interactions by time are test; all ratings are
implicit interactions; every catalogue item is ranked; the user's train items are excluded;
Recall@K = hits / |user's test items|, averaged over users with test items. The query of a test
user is their id and their last 20 train items (the history as of the split point).

Cold items: 10% of the interacted items (seeded) lose *all* their interactions from training; the
same models are trained again on that reduced train set and evaluated on two slices of the same
test set: `cold` (relevant = the user's test interactions with cold items) and `warm` (the rest).
Ranking is still over the full catalogue.

EASE's lambda is tuned on a validation split of train (the same per-user chronological 80/20 of
the train part). The two-tower models use the config the pipeline trains: `ModelConfig()` with the
same TOWER_RECS_MODEL_<FIELD> overrides (and `--set FIELD=VALUE`); `--tune` reports the validation metric after every epoch (that is how the defaults were picked).

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
MODELS = ("MostPopular", "EASE", "TwoTower-ID", "TwoTower-BERT")
LAMBDAS = (100.0, 200.0, 400.0, 800.0)
QUICK_LAMBDAS = (10.0, 100.0)

_T0 = time.time()


def log(message: str) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"[{time.time() - _T0:7.1f}s load {load:4.1f}] {message}", flush=True)


# -- data ----------------------------------------------------------------------------------------
def load_data(path: str, fmt: str, use_tags: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions [user_id, item_id, timestamp], items [item_id, title, categories, description])."""
    if fmt == "contract":
        train, evals, items = prepare.read_contract(path)
        interactions = pd.concat([train, evals], ignore_index=True)
    else:
        from data.movielens import load_movielens

        interactions, items = load_movielens(path, fmt)
        if not use_tags:
            # ml-latest-small tags were written by users, possibly after the split time: leakage.
            items = items.assign(**{contract.DESCRIPTION: ""})
    interactions = interactions[[contract.USER_ID, contract.ITEM_ID, contract.TIMESTAMP]].copy()
    interactions[contract.USER_ID] = interactions[contract.USER_ID].astype(str)
    interactions[contract.ITEM_ID] = interactions[contract.ITEM_ID].astype(str)
    interactions[contract.TIMESTAMP] = interactions[contract.TIMESTAMP].astype(np.int64)
    items = prepare.validate_items(items)
    return interactions, items


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
                     callbacks=None, verbose: int = 2):
    """Trains with `trainer.train.train_model`; returns (scores [queries, catalogue], model, train seconds)."""
    from trainer.train import build_text_table, train_model

    text_table = build_text_table(data.item_vocab, catalogue_ids, text_vectors)
    start = time.time()
    model = train_model(cfg, data.train, len(data.user_vocab), len(data.item_vocab), text_table,
                        verbose=verbose, callbacks=callbacks)
    seconds = time.time() - start
    return score_two_tower(model, data, catalogue_ids, text_vectors), model, seconds


def score_two_tower(model, data: IndexData, catalogue_ids: list[str], text_vectors: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    from trainer.train import candidate_vectors, catalogue_index

    candidates = candidate_vectors(model, catalogue_index(data.item_vocab, catalogue_ids), text_vectors)
    queries = np.concatenate([
        model.query_embedding(tf.constant(data.query_user[i:i + 4096]),
                              tf.constant(data.query_history[i:i + 4096])).numpy()
        for i in range(0, len(data.query_user), 4096)]) if len(data.query_user) else np.zeros([0, candidates.shape[1]])
    return queries @ candidates.T


# -- metrics -------------------------------------------------------------------------------------
def evaluate(scores: np.ndarray, queries: Queries, slice_name: str) -> dict:
    """Metrics + Recall@1..100 curve over the users that have relevant items in the slice."""
    relevant = queries.relevant[slice_name]
    keep = [i for i, r in enumerate(relevant) if len(r)]
    if not keep:
        return {"users": 0, "curve": [0.0] * CURVE_K, **{f"recall@{k}": 0.0 for k in KS},
                **{f"ndcg@{k}": 0.0 for k in KS}}
    top = top_k_excluding(scores[keep], [queries.exclude[i] for i in keep], CURVE_K)
    result = retrieval_metrics(top, [relevant[i] for i in keep], ks=KS)
    hits = np.stack([np.isin(top[j], relevant[i]) for j, i in enumerate(keep)])
    sizes = np.array([len(relevant[i]) for i in keep], np.float64)
    curve = (np.cumsum(hits, axis=1) / sizes[:, None]).mean(axis=0)
    if curve.shape[0] < CURVE_K:  # tiny catalogues
        curve = np.pad(curve, (0, CURVE_K - curve.shape[0]), mode="edge")
    result["curve"] = [float(x) for x in curve]
    return result


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def markdown_table(results: dict) -> str:
    rows = ["| model | slice | users | R@10 | R@50 | R@100 | NDCG@10 |", "|---|---|---|---|---|---|---|"]
    for slice_name in ("all", "cold", "warm"):
        for model in MODELS:
            r = results.get(slice_name, {}).get(model)
            if r is None:
                continue
            rows.append(f"| {model} | {slice_name} | {r['users']} | {_fmt(r['recall@10'])} | {_fmt(r['recall@50'])} | "
                        f"{_fmt(r['recall@100'])} | {_fmt(r['ndcg@10'])} |")
    return "\n".join(rows)


def plot_curves(results: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = np.arange(1, CURVE_K + 1)
    styles = {"all": "-", "cold": ":", "warm": "--"}
    colors = dict(zip(MODELS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))
    for slice_name, style in styles.items():
        for model in MODELS:
            r = results.get(slice_name, {}).get(model)
            if r is not None and slice_name != "warm":
                ax.plot(ks, r["curve"], style, color=colors[model], label=f"{model} ({slice_name})")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def run_benchmark(args) -> dict:
    cfg = model_config(args)
    os.makedirs(args.out, exist_ok=True)

    interactions, items = load_data(args.data, args.format, use_tags=args.use_tags)
    log(f"{len(interactions)} interactions, {interactions[contract.USER_ID].nunique()} users, "
        f"{len(items)} catalogue items (tags as description: {bool(args.use_tags)})")
    splits = make_splits(interactions, items, args.test_fraction, args.cold_fraction, args.seed)
    catalogue_ids = items[contract.ITEM_ID].tolist()
    column = {item_id: i for i, item_id in enumerate(catalogue_ids)}
    n = len(catalogue_ids)
    text_vectors = text_embeddings(item_texts(items), cfg, args.cache_dir or args.out)
    zero_text = np.zeros_like(text_vectors)
    id_cfg = dataclasses.replace(cfg, id_dropout=0.0)   # nothing to fall back on without text
    verbose = 0 if args.quick else 2
    report: dict = {"config": cfg.to_dict(), "protocol": {
        "data": args.data, "format": args.format, "use_tags": bool(args.use_tags),
        "test_fraction": args.test_fraction, "cold_fraction": args.cold_fraction, "seed": args.seed,
        "catalogue_items": n, "cold_items": len(splits.cold_items)}}

    if args.tune:
        queries = make_queries(splits.fit, splits.validation, column, {"all": lambda d: d})
        data = index_features(splits.fit, queries)
        report["tune"] = tune_two_tower(cfg, data, catalogue_ids, text_vectors, queries, verbose)
        with open(os.path.join(args.out, f"quality_tune_{args.tag}.json"), "w") as f:
            json.dump(report, f, indent=1)
        return report

    # EASE lambda on the validation split of train.
    lambdas = QUICK_LAMBDAS if args.quick else tuple(args.lambdas)
    log(f"tuning EASE lambda on the validation split: {lambdas}")
    val_queries = make_queries(splits.fit, splits.validation, column, {"all": lambda d: d})
    val = {lam: evaluate(s, val_queries, "all") for lam, s in
           ease_scores(splits.fit, val_queries.users, column, n, lambdas).items()}
    lam = max(lambdas, key=lambda l: (val[l]["recall@50"], val[l]["ndcg@10"]))
    report["ease_validation"] = {str(l): {k: v for k, v in r.items() if k != "curve"} for l, r in val.items()}
    report["ease_lambda"] = lam
    log(f"EASE lambda = {lam:g} (validation R@50 {val[lam]['recall@50']:.3f})")

    results: dict = {"all": {}, "cold": {}, "warm": {}}
    timings: dict = {}
    cold = set(splits.cold_items)
    scenarios = [
        ("all", splits.train, {"all": lambda d: d}),
        ("cold", splits.cold_train, {"cold": lambda d: d[d[contract.ITEM_ID].isin(cold)],
                                     "warm": lambda d: d[~d[contract.ITEM_ID].isin(cold)]}),
    ]
    for scenario, train, slices in scenarios:
        # Exclusions: everything the user interacted with before the split (cold items included).
        queries = make_queries(train, splits.test, column, slices, exclude_from=splits.train)
        log(f"[{scenario}] {len(train)} train interactions, {len(queries.users)} test users")
        scores = {"MostPopular": popularity_scores(train, queries.users, column, n),
                  "EASE": ease_scores(train, queries.users, column, n, [lam])[lam]}
        data = index_features(train, queries)
        for name, model_cfg, vectors in (("TwoTower-ID", id_cfg, zero_text), ("TwoTower-BERT", cfg, text_vectors)):
            log(f"[{scenario}] training {name}: {len(data.train[contract.ITEM_INDEX])} examples, "
                f"{model_cfg.epochs} epochs of batch {model_cfg.batch_size}")
            scores[name], _, seconds = two_tower_scores(model_cfg, data, catalogue_ids, vectors, verbose=verbose)
            timings[f"{scenario}/{name}"] = round(seconds, 1)
            log(f"[{scenario}] {name} trained in {seconds:.1f}s")
        for slice_name in slices:
            for name in MODELS:
                results[slice_name][name] = evaluate(scores[name], queries, slice_name)
        log(f"[{scenario}] done")

    report["results"] = results
    report["train_seconds"] = timings
    bert, ease = results["all"]["TwoTower-BERT"], results["all"]["EASE"]
    warm_r100 = results["warm"]["TwoTower-BERT"]["recall@100"]
    report["targets"] = {
        "bert_beats_ease_recall@50": bert["recall@50"] > ease["recall@50"],
        "bert_beats_ease_ndcg@10": bert["ndcg@10"] > ease["ndcg@10"],
        "bert_beats_popularity": (bert["recall@50"] > results["all"]["MostPopular"]["recall@50"]
                                  and bert["ndcg@10"] > results["all"]["MostPopular"]["ndcg@10"]),
        "cold_over_warm_recall@100": (results["cold"]["TwoTower-BERT"]["recall@100"] / warm_r100
                                      if warm_r100 else 0.0),
    }
    command = "python -m benchmarks.quality " + " ".join(sys.argv[1:]) if not args.command else args.command
    table = markdown_table(results)
    header = (f"Retrieval quality, full catalogue ({n} items), seen items excluded. `{command}`\n\n"
              f"EASE lambda = {lam:g} (validation). Cold slice: {len(splits.cold_items)} items held out of "
              f"training entirely; `cold`/`warm` rows come from models trained without them.\n\n")
    targets = "\n".join(f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
                        for k, v in report["targets"].items())
    markdown = header + table + "\n\nTargets:\n" + targets + "\n"
    print(markdown)
    with open(os.path.join(args.out, "quality.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump(report, f, indent=1)
    plot_curves(results, os.path.join(args.out, "quality_recall.png"),
                f"Recall@K, {os.path.basename(os.path.normpath(args.data))}, chronological 80/20, seen excluded")
    log(f"wrote quality.md, quality.json, quality_recall.png to {args.out}")
    return report


def tune_two_tower(cfg: ModelConfig, data: IndexData, catalogue_ids, text_vectors, queries: Queries,
                   verbose: int) -> list[dict]:
    """Validation Recall/NDCG after every epoch (the model is trained on the fit part of train)."""
    import tensorflow as tf

    curve: list[dict] = []
    holder: dict = {}

    class PerEpoch(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            scores = score_two_tower(self.model, data, catalogue_ids, text_vectors)
            r = evaluate(scores, queries, "all")
            curve.append({"epoch": epoch + 1, **{k: round(v, 4) for k, v in r.items() if k != "curve"}})
            log(f"epoch {epoch + 1}: val R@10 {r['recall@10']:.4f} R@50 {r['recall@50']:.4f} "
                f"R@100 {r['recall@100']:.4f} NDCG@10 {r['ndcg@10']:.4f}")

    holder["scores"] = two_tower_scores(cfg, data, catalogue_ids, text_vectors, callbacks=[PerEpoch()],
                                        verbose=verbose)
    return curve


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="MovieLens directory or a contract-layout directory")
    parser.add_argument("--format", default="ml-latest-small",
                        choices=("contract", "auto", "ml-100k", "ml-1m", "ml-latest-small"))
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache-dir", default=None, help="where text embeddings are cached (default: --out)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 2 epochs, small batches, 2 lambdas")
    parser.add_argument("--use-tags", action="store_true",
                        help="use ml-latest-small tags as item descriptions (they may postdate the split: leaks)")
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
                        help="train the BERT two-tower on the fit split and print validation metrics per epoch")
    parser.add_argument("--tag", default="run", help="name of the --tune output file")
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    run_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
