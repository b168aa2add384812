"""Multi-worker training on TF's distributed runtime, on this machine: 1 vs N local workers (TF_CONFIG on 127.0.0.1).

    python -m benchmarks.distributed [--examples 40000] [--epochs 3] [--workers 2] [--out benchmarks/results]

Each run starts N worker processes (`python -m benchmarks.distributed --worker`) with their own
`TF_CONFIG`, as Kubeflow's TFJob and Vertex custom jobs do; they train the default two-tower model
(`trainer.train.train_model` under `MultiWorkerMirroredStrategy`, `trainer/distribution.py`) on the
same seeded synthetic data of ml-latest-small's shape, and the chief alone keeps the exported model.
The 1-worker run (no TF_CONFIG, the default strategy) is the baseline of the same invocation.
Reports training examples/s (epochs after the first), final training loss and the validation loss
of each run; writes distributed.json and distributed.md. On the 2-core machine here N workers share
the same cores, so the point is that it runs and scales by configuration, not the speed-up.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(n: int) -> list[int]:
    """`n` TCP ports on 127.0.0.1 free right now (the sockets are closed before the workers bind)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_tf_configs(ports: Sequence[int]) -> list[str]:
    """One TF_CONFIG per worker of a cluster on 127.0.0.1 (worker 0 is the chief)."""
    workers = [f"127.0.0.1:{p}" for p in ports]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
            for i in range(len(ports))]


def run_workers(n_workers: int, out_dir: str, worker_args: Sequence[str], timeout_s: float = 600,
                tf_configs: Optional[Sequence[str]] = None, extra_env: Optional[dict] = None) -> list[dict]:
    """Runs `n_workers` worker processes (1: no TF_CONFIG) and returns each one's result JSON, chief first.

    Raises RuntimeError with the worker's log tail when one fails or runs past `timeout_s`.
    """
    configs = list(tf_configs) if tf_configs is not None else (
        cluster_tf_configs(free_ports(n_workers)) if n_workers > 1 else [""])
    processes = []
    for i, config in enumerate(configs):
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=PROJECT_DIR, TF_CPP_MIN_LOG_LEVEL="2",
                   **(extra_env or {}))
        env.pop("TF_CONFIG", None)
        if config:
            env["TF_CONFIG"] = config
        log = open(os.path.join(out_dir, f"worker{i}.log"), "w")
        result = os.path.join(out_dir, f"worker{i}.json")
        processes.append((subprocess.Popen(
            [sys.executable, "-m", "benchmarks.distributed", "--worker", "--result", result, *worker_args],
            cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT), log, result))
    deadline = time.monotonic() + timeout_s
    failures = []
    for i, (process, log, result) in enumerate(processes):
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        if process.returncode != 0:
            with open(log.name) as f:
                failures.append(f"worker {i} exited {process.returncode}:\n{f.read()[-3000:]}")
    if failures:
        raise RuntimeError("\n".join(failures))
    results = []
    for _, _, result in processes:
        with open(result) as f:
            results.append(json.load(f))
    return results


# -- one worker ------------------------------------------------------------------------------------
def worker_main(args: argparse.Namespace) -> int:
    """One worker: strategy first (before any TF op), train, evaluate, save (the chief's copy stays)."""
    import tensorflow as tf

    from trainer import distribution

    if args.logical_cpus > 1:  # MirroredStrategy over N CPU "devices", as over N GPUs
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    strategy = distribution.choose_strategy()   # multi-worker must precede every other TF op
    import numpy as np

    from benchmarks.training_throughput import EpochTimer, synthetic_data
    from schema import contract
    from trainer.model_config import ModelConfig
    from trainer.train import make_dataset, train_model

    cfg = dataclasses.replace(ModelConfig(), epochs=args.epochs, batch_size=args.batch_size)
    if args.mixed_precision:
        cfg = dataclasses.replace(cfg, mixed_precision=True)
    if args.tiny:
        cfg = dataclasses.replace(cfg, embedding_dim=16, id_embedding_dim=16, hidden_dims=(32,), text_pca_dim=0)
    data, table = synthetic_data(args.examples + args.eval_examples, n_users=args.users, n_items=args.items,
                                 text_dim=args.text_dim)
    train = {k: v[:args.examples] for k, v in data.items()}
    held_out = {k: v[args.examples:] for k, v in data.items()}
    timer = EpochTimer()
    history = tf.keras.callbacks.History()
    start = time.perf_counter()
    model = train_model(cfg, train, args.users, args.items, table, verbose=0, callbacks=[timer, history],
                        strategy=strategy)
    total = time.perf_counter() - start
    # Validation loss of the trained weights, computed the same way on every run (one device, fixed batches).
    eval_batches = make_dataset(held_out, dataclasses.replace(cfg, batch_size=args.eval_batch_size), shuffle=False)
    eval_loss = float(np.mean([model.compute_loss(batch).numpy() / len(batch[contract.ITEM_INDEX])
                               for batch in eval_batches]))
    module = tf.Module()
    module.model = model
    module.query = tf.function(lambda user, history_index: model.query_embedding(user, history_index),
                               input_signature=[tf.TensorSpec([None], tf.int64),
                                                tf.TensorSpec([None, contract.HISTORY_LENGTH], tf.int64)])
    with distribution.export_dir_for_task(strategy, args.export_dir) as export_dir:
        tf.saved_model.save(module, export_dir, signatures={"serving_default": module.query})
    examples = (args.examples // cfg.batch_size) * cfg.batch_size
    steady = timer.seconds[1:] or timer.seconds
    result = {**distribution.describe(strategy), "chief": distribution.is_chief(distribution.tf_config()),
              "export_dir": export_dir, "examples": args.examples, "batch_size": cfg.batch_size,
              "epochs": cfg.epochs, "examples_per_s": examples / float(np.median(steady)),
              "first_epoch_s": timer.seconds[0], "total_s": total,
              "loss": [float(v) / cfg.batch_size for v in history.history["loss"]], "eval_loss": eval_loss,
              "load_avg": os.getloadavg()[0]}
    with open(args.result, "w") as f:
        json.dump(result, f, indent=1)
    return 0


# -- the benchmark ---------------------------------------------------------------------------------
def _worker_args(args: argparse.Namespace, export_dir: str) -> list[str]:
    flags = ["--examples", str(args.examples), "--eval-examples", str(args.eval_examples), "--epochs",
             str(args.epochs), "--batch-size", str(args.batch_size), "--users", str(args.users), "--items",
             str(args.items), "--text-dim", str(args.text_dim), "--export-dir", export_dir]
    return flags + (["--tiny"] if args.tiny else [])


def benchmark(args: argparse.Namespace) -> dict:
    rows = []
    for n in (1, args.workers):
        with tempfile.TemporaryDirectory(prefix="tower_recs_distributed_") as tmp:
            results = run_workers(n, tmp, _worker_args(args, os.path.join(tmp, "export")), timeout_s=args.timeout_s)
        chief = results[0]
        rows.append({"workers": n, "strategy": chief["strategy"], "replicas": chief["replicas"],
                     # Every worker steps through the same global batches in lockstep: the cluster's rate.
                     "examples_per_s": chief["examples_per_s"], "first_epoch_s": chief["first_epoch_s"],
                     "final_loss": chief["loss"][-1], "eval_loss": chief["eval_loss"],
                     "load_avg": max(r["load_avg"] for r in results)})
    return {"benchmark": "distributed", "model": "ModelConfig() defaults" + (" (tiny towers)" if args.tiny else ""),
            "examples": args.examples, "batch_size": args.batch_size, "epochs": args.epochs,
            "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg(), "runs": rows,
            "speedup": rows[1]["examples_per_s"] / rows[0]["examples_per_s"]}


def write_results(summary: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "distributed.json"), "w") as f:
        json.dump(summary, f, indent=1)
    lines = ["# Multi-worker training: 1 vs N local workers (TF_CONFIG on 127.0.0.1)", "",
             f"`python -m benchmarks.distributed --examples {summary['examples']} --epochs {summary['epochs']}` "
             f"({summary['model']}, batch {summary['batch_size']}, synthetic data of ml-latest-small's shape; "
             f"{summary['cpu_count']} cores, load average before {summary['load_avg_before'][0]:.1f}).", "",
             "| workers | strategy | replicas | examples/s | first epoch s | final train loss | validation loss | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        lines.append(f"| {r['workers']} | {r['strategy']} | {r['replicas']} | {r['examples_per_s']:,.0f} | "
                     f"{r['first_epoch_s']:.1f} | {r['final_loss']:.3f} | {r['eval_loss']:.3f} | {r['load_avg']:.1f} |")
    lines += ["", f"Speed-up {summary['speedup']:.2f}x. All workers share this machine's cores, and every step "
              "all-reduces the gradients over gRPC on loopback, so no speed-up is expected here: the figure shows "
              "the multi-worker path runs and what it costs. Each replica computes the in-batch softmax over its "
              "own slice of the global batch (fewer negatives), hence the slightly different losses."]
    with open(os.path.join(out_dir, "distributed.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help="run as one worker (started by the benchmark)")
    p.add_argument("--result", help="worker: where to write its result JSON")
    p.add_argument("--export-dir", default=None, help="worker: where the chief saves the model")
    p.add_argument("--examples", type=int, default=40_000)
    p.add_argument("--eval-examples", type=int, default=4_096)
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3, help="the first (tracing) is not timed")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--users", type=int, default=610)
    p.add_argument("--items", type=int, default=9_742)
    p.add_argument("--text-dim", type=int, default=384)
    p.add_argument("--tiny", action="store_true", help="small towers (tests)")
    p.add_argument("--mixed-precision", action="store_true", help="worker: bfloat16 towers")
    p.add_argument("--logical-cpus", type=int, default=1, help="worker: split the CPU into N logical devices")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout-s", type=float, default=900)
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)
    summary = benchmark(args)
    for r in summary["runs"]:
        print(f"{r['workers']} worker(s) {r['strategy']}: {r['examples_per_s']:,.0f} examples/s, "
              f"final loss {r['final_loss']:.3f}, validation loss {r['eval_loss']:.3f}")
    write_results(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
