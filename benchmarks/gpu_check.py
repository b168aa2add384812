"""Device check: which devices TensorFlow sees, the distribution strategy, and training examples/s.

    python -m benchmarks.gpu_check [--examples 200000] [--mixed-precision] [--out DIR]

Trains the default two-tower model (`ModelConfig()`, frozen-encoder text table) on synthetic data
of ml-latest-small's shape with `trainer.train.train_model` (MirroredStrategy when more than one GPU
is visible) and prints examples/s of the epochs after the first. Runs on CPU too: it then says that
no GPU was found and measures the CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Optional, Sequence

import tensorflow as tf

from benchmarks.training_throughput import measure_two_tower, synthetic_data
from pipeline import overrides
from trainer.model_config import ModelConfig
from trainer.train import get_strategy


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=80_000)
    parser.add_argument("--epochs", type=int, default=3, help="the first one (tracing, XLA compile) is not timed")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--mixed-precision", action="store_true", help="also measure ModelConfig(mixed_precision=True)")
    parser.add_argument("--out", default=None, help="write gpu_check.json here")
    args = parser.parse_args(argv)

    physical = tf.config.list_physical_devices()
    gpus = tf.config.list_physical_devices("GPU")
    print("TensorFlow", tf.__version__, "| built with CUDA:", tf.test.is_built_with_cuda())
    for device in physical:
        print("  device:", device.name, device.device_type)
    if gpus:
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            print("  GPU:", gpu.name, details.get("device_name", ""), "compute capability",
                  details.get("compute_capability", ""))
    else:
        print("No GPU found: measuring the CPU.")
    strategy = get_strategy()
    print(f"strategy: {type(strategy).__name__}, replicas in sync: {strategy.num_replicas_in_sync}")

    cfg = overrides.from_env(ModelConfig(), "MODEL")   # the pipeline's config, TOWER_RECS_MODEL_* included
    if args.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
    train, table = synthetic_data(args.examples)
    results = {}
    variants = {"float32": cfg}
    if args.mixed_precision:
        variants["mixed_bfloat16"] = dataclasses.replace(cfg, mixed_precision=True)
    for name, variant in variants.items():
        results[name] = measure_two_tower(variant, train, table, num_users=610, epochs=args.epochs)
        r = results[name]
        print(f"{name}: {r['examples_per_s']:,.0f} examples/s (batch {variant.batch_size}, "
              f"{r['ms_per_step']:.1f} ms/step; first epoch {r['first_epoch_s']:.1f}s incl. tracing)", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
            json.dump({"devices": [d.name for d in physical], "gpus": len(gpus),
                       "strategy": type(strategy).__name__, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
