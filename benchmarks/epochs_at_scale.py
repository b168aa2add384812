"""Quality and training time per epoch count on a finished `make bench-scale` run: the evidence for
`ModelConfig.max_training_examples`.

    python -m benchmarks.epochs_at_scale --pipeline-root outputs/scaling/runs/1.5M/pipeline_root/scaling-1.5M \
        --epochs 6 3 2 --tag 1.5M

For each epoch count it runs the Trainer's own `run_fn` on that run's artifacts (Transform output, catalogue,
CatalogEmbedder embeddings; the bound switched off so the count is what trains), exports the serving model,
and scores it the way the RetrievalEvaluator does (every eval user, the whole catalogue, the served signature).
Each metric is the mean over seeds; differences to the first epoch count are paired per-user bootstraps of each
user's metric averaged over seeds (`benchmarks.quality.paired_bootstrap`, as `make bench-quality` does).
Writes benchmarks/results/epochs_<tag>.{md,json}. The eval split is the pipeline's validation data: the
bound was chosen on it; ml-latest-small's quality benchmark is below the bound and so unchanged by it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
import types
from typing import Optional, Sequence

import numpy as np
import tensorflow_text  # noqa: F401  (registers the ops of the item-text preprocessor the Trainer loads)

from benchmarks.machine import cpu_description
from benchmarks.quality import paired_bootstrap
from benchmarks.training_throughput import write_results

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
METRICS = ("recall@50", "ndcg@10", "recall@100")


def latest_artifact(pipeline_root: str, component: str, output: str) -> str:
    """The newest (highest execution id) artifact directory of one component output."""
    parent = os.path.join(pipeline_root, component, output)
    ids = sorted((int(name) for name in os.listdir(parent) if name.isdigit()), reverse=True)
    if not ids:
        raise FileNotFoundError(f"No {component} {output} artifact under {parent}")
    return os.path.join(parent, str(ids[0]))


def train_once(pipeline_root: str, epochs: int, seed: int, out_dir: str) -> float:
    """`run_fn` with `epochs` (no bound) and `seed` on the run's artifacts; returns its wall seconds."""
    from pipeline import configs
    from trainer import run_fn

    transformed = latest_artifact(pipeline_root, "Transform", "transformed_examples")
    cfg = dataclasses.replace(configs.MODEL_CONFIG, epochs=epochs, seed=seed,
                              max_training_examples=0)
    fn_args = types.SimpleNamespace(
        train_files=[os.path.join(transformed, "Split-train", "*")],
        eval_files=[os.path.join(transformed, "Split-eval", "*")],
        transform_output=latest_artifact(pipeline_root, "Transform", "transform_graph"),
        serving_model_dir=os.path.join(out_dir, "Format-Serving"), model_run_dir=os.path.join(out_dir, "run"),
        train_steps=0, base_model=None,
        custom_config={"model": cfg.to_dict(),
                       "item_files": os.path.join(latest_artifact(pipeline_root, "ItemExampleGen", "examples"),
                                                  "Split-items", "*"),
                       "embedding_files": os.path.join(latest_artifact(pipeline_root, "CatalogEmbedder",
                                                                       "embeddings"), "embeddings-*")})
    start = time.time()
    run_fn.run_fn(fn_args)
    return time.time() - start


def per_user_metrics(top: np.ndarray, relevant: Sequence[set]) -> dict[str, np.ndarray]:
    """Recall@K / NDCG@K of each user (the RetrievalEvaluator's definitions, `trainer.metrics`)."""
    from trainer.metrics import retrieval_metrics

    rows = [retrieval_metrics(top[i:i + 1], [relevant[i]], ks=(10, 50, 100)) for i in range(len(top))]
    return {m: np.array([r[m] for r in rows]) for m in METRICS}


def run(pipeline_root: str, epoch_counts: Sequence[int], tag: str, seeds: Sequence[int] = (42, 43)) -> dict:
    from tfx.types import standard_artifacts

    from pipeline.components import retrieval_evaluator

    examples = standard_artifacts.Examples()
    examples.uri = latest_artifact(pipeline_root, "InteractionExampleGen", "examples")
    examples.split_names = '["train", "eval"]'
    items = standard_artifacts.Examples()
    items.uri = latest_artifact(pipeline_root, "ItemExampleGen", "examples")
    items.split_names = '["items"]'
    data = retrieval_evaluator.load_eval_data(examples, items)
    keep = [i for i, rel in enumerate(data.relevant) if rel]
    relevant = [set(data.relevant[i]) for i in keep]
    runs: dict = {}
    with tempfile.TemporaryDirectory() as work:
        for epochs in epoch_counts:
            seeds_seconds, seeds_per_user = [], []
            for seed in seeds:
                out_dir = os.path.join(work, f"e{epochs}_s{seed}")
                seeds_seconds.append(train_once(pipeline_root, epochs, seed, out_dir))
                top = retrieval_evaluator.recommend_all(os.path.join(out_dir, "Format-Serving"), data, 100)
                seeds_per_user.append(per_user_metrics(top[keep], relevant))
                print(f"{epochs} epochs, seed {seed}: trainer {seeds_seconds[-1]:.0f} s, "
                      + ", ".join(f"{m} {seeds_per_user[-1][m].mean():.4f}" for m in METRICS), flush=True)
            per_user = {m: np.mean([p[m] for p in seeds_per_user], axis=0) for m in METRICS}
            runs[epochs] = {"trainer_seconds": round(float(np.mean(seeds_seconds)), 1), "per_user": per_user,
                            **{m: float(v.mean()) for m, v in per_user.items()},
                            "per_seed": {m: [round(float(p[m].mean()), 5) for p in seeds_per_user] for m in METRICS}}
    first = epoch_counts[0]
    for epochs in epoch_counts[1:]:
        runs[epochs][f"vs_{first}_epochs"] = {
            m: paired_bootstrap(runs[epochs]["per_user"][m], runs[first]["per_user"][m]) for m in METRICS}
    for r in runs.values():
        r.pop("per_user")
    return {"tag": tag, "pipeline_root": os.path.relpath(pipeline_root), "eval_users": len(keep),
            "catalogue_size": data.catalogue_size, "machine": cpu_description(),
            "seeds": list(seeds), "runs": {str(e): r for e, r in runs.items()}}


def markdown(report: dict) -> str:
    counts = list(report["runs"])
    first = counts[0]
    lines = [f"# Epochs at scale ({report['tag']})", "",
             f"`python -m benchmarks.epochs_at_scale` on `{report['pipeline_root']}`: the Trainer's `run_fn` on that "
             f"run's artifacts, scored like the RetrievalEvaluator ({report['eval_users']:,} eval users, "
             f"{report['catalogue_size']:,} items, the served signature); seeds {report['seeds']} (metrics: mean over "
             f"seeds; trainer s: mean). Machine: {report['machine']}.", "",
             "| epochs | trainer s | " + " | ".join(METRICS) + f" | vs {first} epochs (paired bootstrap, 95%) |",
             "|---|---|" + "---|" * len(METRICS) + "---|"]
    for count in counts:
        r = report["runs"][count]
        paired = r.get(f"vs_{first}_epochs")
        versus = "; ".join(f"{m} {100 * p['relative']:+.2f}% [{100 * p['relative_ci95'][0]:+.2f}, "
                           f"{100 * p['relative_ci95'][1]:+.2f}]" for m, p in paired.items()) if paired else "–"
        lines.append(f"| {count} | {r['trainer_seconds']:.0f} | "
                     + " | ".join(f"{r[m]:.4f}" for m in METRICS) + f" | {versus} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-root", required=True,
                        help="a finished bench-scale run's pipeline root (…/pipeline_root/scaling-<size>)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[6, 3, 2],
                        help="epoch counts to train; the first is the baseline of the paired comparisons")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43], help="training seeds per epoch count")
    parser.add_argument("--tag", required=True, help="names the result files: epochs_<tag>.{md,json}")
    parser.add_argument("--out-dir", default=RESULTS)
    args = parser.parse_args(argv)
    if any(e < 1 for e in args.epochs):
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    report = run(args.pipeline_root, args.epochs, args.tag, args.seeds)
    write_results(args.out_dir, f"epochs_{args.tag}", markdown(report), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
