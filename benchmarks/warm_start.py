"""Warm-started vs cold retraining on the next data span: retrain time and full-catalogue quality.

    python -m benchmarks.warm_start --data ../shared/data/ml-latest-small --out benchmarks/results
    python -m benchmarks.warm_start --data data/sample --format contract --out outputs/warm-quick --quick

Spans: the interactions, ordered by time, are cut into `--spans` spans of equal size; within each span
every user's last `--test-fraction` of interactions (by time) is that span's eval part, the rest its
train part (`data.prepare.chronological_split`). The model of span j trains on the train parts of a
window of spans ending at j (`--window`: 0 = every span so far, W = the last W spans: ExampleGen's
rolling window). With k = `--spans` - 2:
  * base: cold on span k's window (the model the pipeline would have blessed yesterday);
  * cold: cold on span k+1's window, `ModelConfig.epochs` epochs;
  * warm: from the base model's weights (`trainer/warm_start.py`: saved and loaded through the files
    the Trainer writes), `ModelConfig.warm_start_epochs` epochs at `warm_start_learning_rate` on the
    last `--warm-window` spans' train parts (default 1: only the new span, incremental training;
    -1: the cold retrain's window, so both read the same rows).
The committed results: `warm_start.{md,json}` (defaults) and `warm_start_same_window.{md,json}`
(`--warm-window -1 --tune-warm-epochs 3`).
Retrain seconds are the wall time of the whole training call (warm: load the state, build, carry the
rows, fit; cold: build, fit), cold and warm of a seed run back to back. Quality: Recall/NDCG@K over
the full catalogue on span k+1's eval part (each user's train items excluded; the query is the
user's last 20 train items of the window), mean +- 95% Student-t interval over `--seeds` seeds, and a
paired bootstrap over users of warm - cold (each user's metric averaged over seeds).

`warm_start_epochs` and `warm_start_learning_rate` are chosen on validation data only (`--tune`): span
k+1's train part is split again per user by time (the last 20% of each user's rows validate, the rest
fits); from the same base models, cold is trained on the fit window for `ModelConfig.epochs` epochs and
warm for up to `--tune-warm-epochs` epochs at each `--tune-lrs` learning rate, each scored on the
validation rows after every epoch. The choice is the fewest warm epochs (then the best Recall@50) whose
mean validation Recall@50 and NDCG@10 both reach 99% of the cold model's at `epochs` (else the best warm
Recall@50). With a constant learning rate (the default) an e-epoch run is the first e epochs of a longer
run, so one curve gives every e. Span k+1's eval part is never read by `--tune`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from benchmarks import quality
from data import prepare
from schema import contract
from trainer.model_config import ModelConfig

REPORT_METRICS = ("recall@10", "recall@50", "recall@100", "ndcg@10", "ndcg@50")
TUNE_METRICS = ("recall@50", "ndcg@10")
TUNE_TOLERANCE = 0.99
TARGET_TIME_RATIO = 0.40


# -- spans ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Span:
    train: pd.DataFrame
    eval: pd.DataFrame


def make_spans(interactions: pd.DataFrame, n_spans: int, test_fraction: float) -> list[Span]:
    """`n_spans` equal-size spans by time, each split per user chronologically into train/eval."""
    ordered = interactions.sort_values(contract.TIMESTAMP, kind="mergesort").reset_index(drop=True)
    spans = []
    for part in np.array_split(np.arange(len(ordered)), n_spans):
        train, evals = prepare.chronological_split(ordered.iloc[part], test_fraction=test_fraction)
        spans.append(Span(train, evals))
    return spans


def warm_window(args) -> int:
    """Spans the warm retrain reads: `--warm-window`, or `--window` when it is negative."""
    return args.window if args.warm_window < 0 else args.warm_window


def window_train(spans: Sequence[Span], j: int, window: int) -> pd.DataFrame:
    """Train parts of the spans of the window ending at span j (window 0: all spans up to j)."""
    first = 0 if window <= 0 else max(0, j - window + 1)
    return pd.concat([s.train for s in spans[first:j + 1]], ignore_index=True)


# -- training ------------------------------------------------------------------------------------
def train(cfg: ModelConfig, train_df: pd.DataFrame, queries: quality.Queries, catalogue_ids: list[str],
          text_vectors: np.ndarray, base_dir: Optional[str] = None, callbacks=None):
    """(model, index data, seconds, warm-start record); `base_dir`: the saved state to warm-start from."""
    from trainer import warm_start
    from trainer.train import build_text_table, train_model

    data = quality.index_features(train_df, queries)
    text_table = build_text_table(data.item_vocab, catalogue_ids, text_vectors)
    record: dict = {"warm_started": False}
    start = time.time()
    kwargs = {}
    if base_dir is not None:
        state = warm_start.load_state(base_dir)
        use, reason = warm_start.usable(cfg, state, data.user_vocab, data.item_vocab)
        if not use:
            raise RuntimeError(f"the benchmark's warm start was refused: {reason}")
        cfg = warm_start.training_config(cfg)
        kwargs = dict(text_basis=warm_start.text_basis(state),
                      initialize=lambda m: record.update(warm_start.apply(m, state, data.user_vocab,
                                                                          data.item_vocab)))
    model = train_model(cfg, data.train, len(data.user_vocab), len(data.item_vocab), text_table, verbose=0,
                        callbacks=callbacks, **kwargs)
    return model, data, time.time() - start, record


def save_base(model, data: quality.IndexData, directory: str) -> str:
    from trainer import warm_start

    warm_start.save_state(model, data.user_vocab, data.item_vocab, directory)
    return directory


class EpochScores:
    """Keras callback: `quality.evaluate` of the model on validation queries after every epoch."""

    def __new__(cls, data_ref: dict, queries: quality.Queries, catalogue_ids, text_vectors):
        import tensorflow as tf

        class _Callback(tf.keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.curve: list[dict] = []

            def on_epoch_end(self, epoch, logs=None):
                scores = quality.score_two_tower(self.model, data_ref["data"], catalogue_ids, text_vectors)
                result = quality.evaluate(scores, queries, "all")
                self.curve.append({m: result[m] for m in TUNE_METRICS})

        return _Callback()


def tune(args, cfg, spans, catalogue_ids, column, text_vectors) -> dict:
    """Validation curves of cold (`epochs`) and warm (each `--tune-lrs` learning rate, up to
    `--tune-warm-epochs` epochs) and the chosen `warm_start_epochs` / `warm_start_learning_rate`."""
    k = len(spans) - 2
    fit_k1, validation = prepare.validation_split(spans[k + 1].train, fraction=args.test_fraction)
    tuned_spans = list(spans[:k + 1]) + [Span(fit_k1, validation)]
    fit = window_train(tuned_spans, k + 1, args.window)
    warm_fit = window_train(tuned_spans, k + 1, warm_window(args))
    queries = quality.make_queries(fit, validation, column, {"all": lambda d: d})
    base_train = window_train(spans, k, args.window)
    base_queries = quality.make_queries(base_train, validation.iloc[:0], column, {"all": lambda d: d})
    kinds = {"cold": cfg, **{f"warm lr={lr:g}": dataclasses.replace(
        cfg, warm_start_epochs=args.tune_warm_epochs, warm_start_learning_rate=lr) for lr in args.tune_lrs}}
    curves: dict = {kind: [] for kind in kinds}
    for seed in [cfg.seed + i for i in range(args.tune_seeds)]:
        with tempfile.TemporaryDirectory() as tmp:
            base, base_data, seconds, _ = train(dataclasses.replace(cfg, seed=seed), base_train, base_queries,
                                                catalogue_ids, text_vectors)
            save_base(base, base_data, tmp)
            quality.log(f"[tune] seed {seed}: base model in {seconds:.1f}s")
            for kind, kind_cfg in kinds.items():
                kind_fit = fit if kind == "cold" else warm_fit
                data_ref = {"data": quality.index_features(kind_fit, queries)}
                callback = EpochScores(data_ref, queries, catalogue_ids, text_vectors)
                train(dataclasses.replace(kind_cfg, seed=seed), kind_fit, queries, catalogue_ids, text_vectors,
                      base_dir=None if kind == "cold" else tmp, callbacks=[callback])
                curves[kind].append(callback.curve)
                quality.log(f"[tune] seed {seed} {kind}: R@50 by epoch " + " ".join(
                    f"{c['recall@50']:.4f}" for c in callback.curve))
    mean = {kind: [{m: float(np.mean([run[e][m] for run in runs])) for m in TUNE_METRICS}
                   for e in range(len(runs[0]))] for kind, runs in curves.items()}
    cold_final = mean["cold"][-1]
    warm = [(e + 1, kinds[kind].warm_start_learning_rate, row) for kind in kinds if kind != "cold"
            for e, row in enumerate(mean[kind])]
    reaching = [w for w in warm if all(w[2][m] >= TUNE_TOLERANCE * cold_final[m] for m in TUNE_METRICS)]
    if reaching:
        epochs, lr, _ = min(reaching, key=lambda w: (w[0], -w[2]["recall@50"]))
    else:
        epochs, lr, _ = max(warm, key=lambda w: w[2]["recall@50"])
    return {"validation_users": len(queries.users), "fit_interactions": len(fit),
            "warm_fit_interactions": len(warm_fit),
            "validation_interactions": len(validation), "seeds": args.tune_seeds,
            "rule": f"fewest warm epochs (then the best R@50) with mean validation {' and '.join(TUNE_METRICS)} >= "
                    f"{TUNE_TOLERANCE:g} x cold at {cfg.epochs} epochs; else the best warm R@50",
            "reached": bool(reaching), "curves_mean": mean, "curves_per_seed": curves,
            "warm_start_epochs": epochs, "warm_start_learning_rate": lr}


# -- benchmark -----------------------------------------------------------------------------------
def compare(args, cfg, spans, catalogue_ids, column, text_vectors) -> dict:
    """Base (span k), then cold and warm on span k+1, per seed; times, quality and the paired comparison."""
    k = len(spans) - 2
    base_train, next_train = window_train(spans, k, args.window), window_train(spans, k + 1, args.window)
    warm_train = window_train(spans, k + 1, warm_window(args))
    test = spans[k + 1].eval
    queries = quality.make_queries(next_train, test, column, {"all": lambda d: d})
    base_queries = quality.make_queries(base_train, test.iloc[:0], column, {"all": lambda d: d})
    runs: dict = {"cold": [], "warm": []}
    seconds: dict = {"base": [], "cold": [], "warm": []}
    records = []
    for seed in [cfg.seed + i for i in range(args.seeds)]:
        seed_cfg = dataclasses.replace(cfg, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            base, base_data, base_seconds, _ = train(seed_cfg, base_train, base_queries, catalogue_ids, text_vectors)
            save_base(base, base_data, tmp)
            seconds["base"].append(base_seconds)
            for kind in ("cold", "warm"):
                model, data, took, record = train(seed_cfg, next_train if kind == "cold" else warm_train, queries,
                                                  catalogue_ids, text_vectors, base_dir=tmp if kind == "warm" else None)
                seconds[kind].append(took)
                runs[kind].append(quality.evaluate(quality.score_two_tower(model, data, catalogue_ids,
                                                                           text_vectors), queries, "all"))
                if record["warm_started"]:
                    records.append({**record, "base_model": f"span {k} cold model, seed {seed}"})
                quality.log(f"[window {args.window}] seed {seed} {kind}: {took:.1f}s, "
                            f"R@50 {runs[kind][-1]['recall@50']:.4f} NDCG@10 {runs[kind][-1]['ndcg@10']:.4f}")
    results = {kind: quality.over_seeds(r) for kind, r in runs.items()}
    paired = {m: quality.paired_bootstrap(results["warm"]["per_user"][m], results["cold"]["per_user"][m])
              for m in REPORT_METRICS}
    ratios = [w / c for w, c in zip(seconds["warm"], seconds["cold"])]
    ratio, ratio_ci = quality.mean_ci(ratios)
    equal = {m: paired[m]["difference_ci95"][1] >= 0 for m in REPORT_METRICS}   # warm not worse beyond the interval
    return {
        "window": args.window, "warm_window": warm_window(args), "span_k": k,
        "train_interactions": {"span_k": len(base_train), "span_k+1": len(next_train), "warm": len(warm_train)},
        "eval_interactions": len(test), "eval_users": results["cold"]["users"],
        "epochs": {"cold": cfg.epochs, "warm": cfg.warm_start_epochs},
        "learning_rate": {"cold": cfg.learning_rate, "warm": cfg.warm_start_learning_rate},
        "seconds": {kind: [round(s, 2) for s in v] for kind, v in seconds.items()},
        "seconds_mean": {kind: round(float(np.mean(v)), 2) for kind, v in seconds.items()},
        "time_ratio_warm_over_cold": round(ratio, 4), "time_ratio_ci95": round(ratio_ci, 4),
        "quality": {kind: {m: [r[m], r[f"{m}_ci95"]] for m in REPORT_METRICS} for kind, r in results.items()},
        "paired_warm_minus_cold": paired,
        "warm_start_record": records[0] if records else None,
        "target": {"time_ratio_max": TARGET_TIME_RATIO, "time_met": ratio <= TARGET_TIME_RATIO,
                   "quality_equal_within_interval": equal, "met": ratio <= TARGET_TIME_RATIO and all(equal.values())},
    }


def markdown(report: dict) -> str:
    lines = ["# Warm-started vs cold retraining on the next span", "",
             f"Data `{report['protocol']['data']}`: {report['protocol']['spans']} time spans of "
             f"{report['protocol']['interactions_per_span']} interactions; seeds {report['protocol']['seeds']}; "
             f"load average {report['load_average_start'][0]:.1f} at start, {report['load_average_end'][0]:.1f} "
             f"at end on {os.cpu_count()} cores. Command: `{report['command']}`.", ""]
    if "tuning" in report:
        t = report["tuning"]
        kinds = list(t["curves_mean"])
        lines += ["## Choosing `warm_start_epochs` and `warm_start_learning_rate` (validation only)", "",
                  f"Span k+1's train part split again per user by time: {t['fit_interactions']} fit (warm: "
                  f"{t['warm_fit_interactions']}), "
                  f"{t['validation_interactions']} validation interactions ({t['validation_users']} users). "
                  f"Rule: {t['rule']}.", "",
                  "| epoch | " + " | ".join(f"{k} R@50 / NDCG@10" for k in kinds) + " |",
                  "|---|" + "---|" * len(kinds)]
        for e in range(max(len(v) for v in t["curves_mean"].values())):
            cells = [f"{c[e]['recall@50']:.4f} / {c[e]['ndcg@10']:.4f}" if e < len(c) else ""
                     for c in t["curves_mean"].values()]
            lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
        lines += ["", f"Chosen: **{t['warm_start_epochs']} epochs at learning rate {t['warm_start_learning_rate']:g}** "
                      f"(mean of {t['seeds']} seeds; reached 99% of cold: {t['reached']}).", ""]
    r = report["comparison"]
    lines += ["## Test: span k+1's eval part", "",
              f"Window {r['window']} (0 = all spans so far): {r['train_interactions']['span_k']} train interactions "
              f"for the base model, {r['train_interactions']['span_k+1']} for the cold retrain, "
              f"{r['train_interactions']['warm']} for the warm one (window {r['warm_window']}); "
              f"{r['eval_users']} eval users, "
              f"{r['eval_interactions']} eval interactions. Cold {r['epochs']['cold']} epochs at learning rate "
              f"{r['learning_rate']['cold']:g}, warm {r['epochs']['warm']} at {r['learning_rate']['warm']:g}.", "",
              "| model | retrain s (mean) | " + " | ".join(REPORT_METRICS) + " |",
              "|---|---|" + "---|" * len(REPORT_METRICS)]
    for kind in ("cold", "warm"):
        cells = [f"{v:.4f} ± {ci:.4f}" for v, ci in (r["quality"][kind][m] for m in REPORT_METRICS)]
        lines.append(f"| {kind} | {r['seconds_mean'][kind]:.1f} | " + " | ".join(cells) + " |")
    diffs = [f"{p['difference']:+.4f} [{p['difference_ci95'][0]:+.4f}, {p['difference_ci95'][1]:+.4f}]"
             for p in (r["paired_warm_minus_cold"][m] for m in REPORT_METRICS)]
    lines += ["| warm − cold (paired bootstrap, 95%) | | " + " | ".join(diffs) + " |", "",
              f"Time warm/cold: **{r['time_ratio_warm_over_cold']:.3f} ± {r['time_ratio_ci95']:.3f}** "
              f"(per seed: {[round(w / c, 3) for w, c in zip(r['seconds']['warm'], r['seconds']['cold'])]}); "
              f"target ≤ {TARGET_TIME_RATIO:.0%} at equal quality (warm − cold interval reaching 0 or above).", "",
              f"Target met: **{'yes' if r['target']['met'] else 'no'}** (time: {r['target']['time_met']}; quality "
              f"equal within the interval: {r['target']['quality_equal_within_interval']}).", ""]
    if r["warm_start_record"]:
        w = r["warm_start_record"]
        lines += [f"Warm start carried {w['users_carried']} user rows ({w['users_new']} new users) and "
                  f"{w['items_carried']} item rows ({w['items_new']} new items); {w['weights_copied']} weights "
                  f"copied, skipped: {w['weights_skipped'] or 'none'}.", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="MovieLens folder (ml-latest-small) or a contract folder")
    parser.add_argument("--format", default="auto", help="as benchmarks.quality: auto, ml-latest-small, contract")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache-dir", default="outputs/cache", help="where text embeddings are cached")
    parser.add_argument("--spans", type=int, default=5)
    parser.add_argument("--window", type=int, default=0, help="spans per training window (0: all so far)")
    parser.add_argument("--warm-window", type=int, default=1,
                        help="spans the warm retrain reads (-1: --window; 1: only the new span)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tune", action="store_true", help="choose warm_start_epochs on validation first")
    parser.add_argument("--tune-seeds", type=int, default=2)
    parser.add_argument("--tune-lrs", type=float, nargs="+", default=[0.005, 0.002, 0.001, 0.0005],
                        help="warm_start_learning_rate values tried by --tune")
    parser.add_argument("--tune-warm-epochs", type=int, default=6, help="longest warm curve tried by --tune")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="ModelConfig overrides")
    parser.add_argument("--name", default="warm_start", help="output file name (without extension)")
    args = parser.parse_args(argv)
    args.preprocess = args.encoder = None
    cfg = quality.model_config(args)
    load_start = list(os.getloadavg())
    interactions, items = quality.load_data(args.data, args.format)
    catalogue_ids = items[contract.ITEM_ID].tolist()
    column = {item_id: i for i, item_id in enumerate(catalogue_ids)}
    text_vectors = quality.text_embeddings(quality.item_texts(items), cfg, args.cache_dir)
    spans = make_spans(interactions, args.spans, args.test_fraction)
    # Paths as given, except absolute ones (machine paths stay out of committed results).
    command = [os.path.relpath(a) if os.path.isabs(a) else a for a in (argv if argv is not None else sys.argv[1:])]
    report: dict = {"command": "python -m benchmarks.warm_start " + " ".join(command),
                    "protocol": {"data": os.path.basename(os.path.normpath(args.data)), "spans": args.spans,
                                 "interactions_per_span": len(interactions) // args.spans, "window": args.window,
                                 "warm_window": warm_window(args),
                                 "test_fraction": args.test_fraction, "seeds": args.seeds,
                                 "catalogue_items": len(catalogue_ids)},
                    "load_average_start": load_start}
    if args.tune:
        report["tuning"] = tune(args, cfg, spans, catalogue_ids, column, text_vectors)
        cfg = dataclasses.replace(cfg, warm_start_epochs=report["tuning"]["warm_start_epochs"],
                                  warm_start_learning_rate=report["tuning"]["warm_start_learning_rate"])
        quality.log(f"chosen on validation: warm_start_epochs {cfg.warm_start_epochs}, "
                    f"warm_start_learning_rate {cfg.warm_start_learning_rate:g}")
    report["config"] = cfg.to_dict()
    report["comparison"] = compare(args, cfg, spans, catalogue_ids, column, text_vectors)
    report["load_average_end"] = list(os.getloadavg())
    report["seconds"] = round(time.time() - quality._T0, 1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
