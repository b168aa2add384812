"""GPU check: the devices TensorFlow sees, training examples/s (float32 and bfloat16 at two batch sizes)
and BERT catalogue-embedding texts/s, on the accelerator and on the CPU of the same machine, in one run.

    python -m benchmarks.gpu_check --out benchmarks/results/gpu_check.json          (<= 5 min on a GPU machine)
    python -m benchmarks.gpu_check --examples 8192 --batch-sizes 1024 --texts 256 --out outputs/gpu_check_cpu.json  (CPU smoke)

The accelerator half runs in this process (MirroredStrategy over all GPUs when there are several,
XLA on where a GPU is visible: `trainer/distribution.py`); the CPU half runs in a child process with
`CUDA_VISIBLE_DEVICES=-1` on fewer examples/texts (`--cpu-fraction`), so both are steady-state rates of
the same code. Training: the default two-tower model (`ModelConfig()`, frozen-encoder text table) on
synthetic data of ml-latest-small's shape, examples/s over the epochs after the first. Catalogue
embedding: `trainer.item_text.embed_catalogue` (the Trainer's path) with the MiniLM modules of
`--encoder-dir` (`make encoder`), texts/s after one warm-up call. On a machine without a GPU the
"device" half is the CPU too, and the JSON says so (`"gpus": []`): do not read those as GPU figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sample_texts(n: int) -> list[str]:
    """Item texts of the sample data's length (title | genres | a sentence), distinct per item."""
    words = ("space galaxy voyage cowboy stagecoach love wedding haunted scream detective city night river "
             "mountain winter summer robot future past war peace").split()
    return [f"Item {i} ({1950 + i % 70}) | {words[i % 21]}|{words[(i * 7) % 21]} | "
            + " ".join(words[(i * k) % 21] for k in range(3, 3 + 12 + i % 20)) for i in range(n)]


def measure(args: argparse.Namespace) -> dict:
    """This process's figures: devices, strategy, training examples/s per (precision, batch), texts/s."""
    import tensorflow as tf

    from trainer import distribution

    strategy = distribution.choose_strategy()
    from benchmarks.training_throughput import measure_two_tower, synthetic_data
    from pipeline import overrides
    from trainer.item_text import embed_catalogue
    from trainer.model_config import ModelConfig

    cfg = overrides.from_env(ModelConfig(), "MODEL")   # the pipeline's config, TOWER_RECS_MODEL_* included
    train, table = synthetic_data(args.examples)
    training = []
    for batch_size in args.batch_sizes:
        for precision, mixed in (("float32", False), ("bfloat16", True)):
            variant = dataclasses.replace(cfg, batch_size=batch_size, mixed_precision=mixed)
            r = measure_two_tower(variant, train, table, num_users=610, epochs=args.epochs)
            training.append({"precision": precision, "batch_size": batch_size, **r,
                             "xla": distribution.use_xla(variant.jit_compile, variant.xla_on_gpu)})
            print(f"  train {precision:8s} batch {batch_size:5d}: {r['examples_per_s']:>12,.0f} examples/s", flush=True)
    embedding = None
    preprocess, encoder = (os.path.join(args.encoder_dir, name) for name in ("preprocess", "encoder"))
    if os.path.exists(os.path.join(encoder, "saved_model.pb")):
        texts = _sample_texts(args.texts)
        embed_catalogue(preprocess, encoder, texts[:args.embed_batch], batch_size=args.embed_batch)  # warm-up
        start = time.perf_counter()
        embed_catalogue(preprocess, encoder, texts, batch_size=args.embed_batch)
        seconds = time.perf_counter() - start
        embedding = {"texts": len(texts), "batch_size": args.embed_batch, "seconds": seconds,
                     "texts_per_s": len(texts) / seconds, "encoder": os.path.basename(args.encoder_dir.rstrip("/"))}
        print(f"  catalogue embedding: {embedding['texts_per_s']:,.0f} texts/s", flush=True)
    else:
        print(f"  no encoder at {args.encoder_dir} (make encoder): catalogue embedding not measured", flush=True)
    info = distribution.describe(strategy)
    details = [tf.config.experimental.get_device_details(g) for g in tf.config.list_physical_devices("GPU")]
    return {**info, "gpu_details": [{k: str(v) for k, v in d.items()} for d in details],
            "examples": args.examples, "training": training, "catalogue_embedding": embedding,
            "load_avg": os.getloadavg()}


def _cpu_child(args: argparse.Namespace, out: str) -> dict:
    """The same measurement on the CPU alone, in a child process that cannot see the GPUs."""
    n = max(args.batch_sizes) * 2
    flags = ["--measure-only", out, "--examples", str(max(n, int(args.examples * args.cpu_fraction))),
             "--texts", str(max(args.embed_batch, int(args.texts * args.cpu_fraction))),
             "--epochs", str(args.epochs), "--embed-batch", str(args.embed_batch),
             "--encoder-dir", args.encoder_dir, "--batch-sizes", *map(str, args.batch_sizes)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_USE_LEGACY_KERAS="1", PYTHONPATH=PROJECT_DIR)
    subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *flags], env=env, cwd=PROJECT_DIR, check=True,
                   timeout=args.cpu_timeout_s)
    with open(out) as f:
        return json.load(f)


def _ratios(device: dict, cpu: dict) -> dict:
    if "training" not in cpu:
        return {}
    cpu_rates = {(r["precision"], r["batch_size"]): r["examples_per_s"] for r in cpu["training"]}
    out = {f"train_{r['precision']}_b{r['batch_size']}": r["examples_per_s"] / cpu_rates[(r["precision"], r["batch_size"])]
           for r in device["training"] if (r["precision"], r["batch_size"]) in cpu_rates}
    if device["catalogue_embedding"] and cpu["catalogue_embedding"]:
        out["catalogue_embedding"] = (device["catalogue_embedding"]["texts_per_s"]
                                      / cpu["catalogue_embedding"]["texts_per_s"])
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=400_000, help="training examples on the device")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--epochs", type=int, default=3, help="the first (tracing, XLA compile) is not timed")
    p.add_argument("--texts", type=int, default=20_000, help="catalogue texts to embed on the device")
    p.add_argument("--embed-batch", type=int, default=256)
    p.add_argument("--encoder-dir", default=os.path.join(PROJECT_DIR, "models", "minilm"))
    p.add_argument("--cpu-fraction", type=float, default=0.1, help="the CPU half's share of examples and texts")
    p.add_argument("--cpu-timeout-s", type=float, default=200)
    p.add_argument("--out", default=None, help="JSON to write")
    p.add_argument("--measure-only", default=None, help=argparse.SUPPRESS)  # the CPU child: write here, no child
    args = p.parse_args(argv)
    if args.measure_only:
        result = measure(args)
        with open(args.measure_only, "w") as f:
            json.dump(result, f)
        return 0
    started = time.perf_counter()
    print("device half:", flush=True)
    device = measure(args)
    print("CPU half (CUDA_VISIBLE_DEVICES=-1):", flush=True)
    cpu_file = (args.out or "gpu_check.json") + ".cpu.tmp"
    try:
        cpu = _cpu_child(args, cpu_file)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:  # keep the device figures
        print(f"CPU half failed: {e}", flush=True)
        cpu = {"error": str(e)[-500:]}
    finally:
        if os.path.exists(cpu_file):
            os.remove(cpu_file)
    summary = {"benchmark": "gpu_check", "gpus": device["gpus"], "gpu_run": bool(device["gpus"]),
               "device": device, "cpu": cpu, "speedup_vs_cpu": _ratios(device, cpu),
               "wall_s": time.perf_counter() - started}
    if not device["gpus"]:
        print("No GPU visible: both halves ran on the CPU (not GPU figures).")
    for name, ratio in summary["speedup_vs_cpu"].items():
        print(f"  {name}: {ratio:.1f}x the CPU")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
