"""Training throughput of the two-tower model with the frozen encoder (examples/s after the first epoch).

    python -m benchmarks.training_throughput --out benchmarks/results
    python -m benchmarks.training_throughput --out benchmarks/results --catalogue-sizes 10000 60000 300000

The BERT encoder is frozen, so its cost is one pass over the catalogue texts before training
(`benchmarks/encoder_throughput.py` measures that); training reads a fixed [items, 384] text table.
The data is synthetic with the shape of ml-latest-small's train split (80k interactions, 610 users,
9.7k items, Zipf popularity, 20-item histories); the table is random (same cost as real vectors).

Same-run baseline: the TFRS "basic retrieval" tutorial model (user id embedding . item id
embedding, `tfrs.tasks.Retrieval`, no metrics, Adagrad, `from_tensor_slices().shuffle().batch()`),
trained on the same examples and batch size in the same process.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from pipeline import overrides
from schema import contract
from trainer.model_config import ModelConfig


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def synthetic_data(n_examples: int = 80_000, n_users: int = 610, n_items: int = 9_742, text_dim: int = 384,
                   seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    popularity /= popularity.sum()
    items = rng.choice(n_items, size=n_examples, p=popularity)
    history = rng.choice(n_items, size=(n_examples, contract.HISTORY_LENGTH), p=popularity)
    lengths = rng.integers(0, contract.HISTORY_LENGTH + 1, size=n_examples)
    history[np.arange(contract.HISTORY_LENGTH)[None, :] >= lengths[:, None]] = -1
    train = {contract.USER_INDEX: rng.integers(0, n_users, n_examples).astype(np.int64),
             contract.ITEM_INDEX: items.astype(np.int64), contract.HISTORY_INDEX: history.astype(np.int64)}
    table = np.vstack([rng.normal(size=[n_items, text_dim]), np.zeros([1, text_dim])]).astype(np.float32)
    return train, table


class EpochTimer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def measure_two_tower(cfg: ModelConfig, train: dict[str, np.ndarray], text_table: np.ndarray,
                      num_users: int, epochs: int = 3) -> dict:
    """Trains `epochs` epochs with `trainer.train.train_model`; examples/s over the epochs after the first."""
    from trainer.train import num_examples, train_model

    cfg = dataclasses.replace(cfg, epochs=epochs)
    timer = EpochTimer()
    start = time.perf_counter()
    train_model(cfg, train, num_users, text_table.shape[0] - 1, text_table, verbose=0, callbacks=[timer])
    total = time.perf_counter() - start
    examples = (num_examples(train) // cfg.batch_size) * cfg.batch_size
    steady = timer.seconds[1:] or timer.seconds
    return {"examples_per_s": examples / float(np.median(steady)), "first_epoch_s": timer.seconds[0],
            "steady_epoch_s": float(np.median(steady)), "total_s": total,
            "ms_per_step": 1000 * float(np.median(steady)) / max(examples // cfg.batch_size, 1),
            "load_avg": load_average()}


def write_transformed(train: dict[str, np.ndarray], directory: str):
    """`train` as the Transform component writes it (gzipped tf.Examples) + fn_args / tft_output stand-ins
    (the split patterns TFX passes, the transformed schema), for `trainer.run_fn.training_input`."""
    import types

    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    split_dir = os.path.join(directory, "Split-train")
    os.makedirs(split_dir, exist_ok=True)
    path = os.path.join(split_dir, "transformed.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for user, item, history in zip(train[contract.USER_INDEX], train[contract.ITEM_INDEX],
                                       train[contract.HISTORY_INDEX]):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                contract.USER_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=[user])),
                contract.ITEM_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=[item])),
                contract.HISTORY_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=history)),
            })).SerializeToString())
    spec = {contract.USER_INDEX: tf.io.FixedLenFeature([], tf.int64),
            contract.ITEM_INDEX: tf.io.FixedLenFeature([], tf.int64),
            contract.HISTORY_INDEX: tf.io.FixedLenFeature([contract.HISTORY_LENGTH], tf.int64)}
    pattern = os.path.join(split_dir, "*")  # what TFX passes as train_files
    fn_args = types.SimpleNamespace(train_files=[pattern], eval_files=[pattern])
    tft_output = types.SimpleNamespace(
        transformed_metadata=dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec)))
    return fn_args, tft_output


def measure_streamed(cfg: ModelConfig, train: dict[str, np.ndarray], text_table: np.ndarray, num_users: int,
                     epochs: int = 3) -> dict:
    """`measure_two_tower` with the trainer's streamed input (memory budget 0) from TFRecord files."""
    import tempfile

    from trainer.run_fn import training_input

    cfg = dataclasses.replace(cfg, in_memory_budget_mb=0)
    with tempfile.TemporaryDirectory() as directory:
        fn_args, tft_output = write_transformed(train, directory)
        streamed, _ = training_input(fn_args, tft_output, cfg, text_table.shape[0] - 1)
        return measure_two_tower(cfg, streamed, text_table, num_users, epochs)


def measure_tfrs_basic(train: dict[str, np.ndarray], num_users: int, num_items: int, batch_size: int,
                       epochs: int = 3, dim: int = 64) -> dict:
    """The TFRS basic-retrieval tutorial model (ID-only, tutorial-style input pipeline)."""
    import tensorflow_recommenders as tfrs

    class Basic(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.user = tf.keras.layers.Embedding(num_users + 1, dim)
            self.item = tf.keras.layers.Embedding(num_items + 1, dim)
            self.task = tfrs.tasks.Retrieval()

        def compute_loss(self, inputs, training=False):
            return self.task(self.user(inputs[contract.USER_INDEX]), self.item(inputs[contract.ITEM_INDEX]),
                             compute_metrics=False)

    tf.keras.utils.set_random_seed(0)
    model = Basic()
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    n = len(train[contract.ITEM_INDEX])
    dataset = tf.data.Dataset.from_tensor_slices(
        {contract.USER_INDEX: train[contract.USER_INDEX], contract.ITEM_INDEX: train[contract.ITEM_INDEX]})
    dataset = dataset.shuffle(n, seed=0, reshuffle_each_iteration=True).batch(batch_size).cache()
    timer = EpochTimer()
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=[timer])
    steady = timer.seconds[1:] or timer.seconds
    return {"examples_per_s": n / float(np.median(steady)), "first_epoch_s": timer.seconds[0],
            "steady_epoch_s": float(np.median(steady)), "load_avg": load_average()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--examples", type=int, default=80_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--streamed", action="store_true",
                        help="only in-memory vs streamed input (the Trainer's TFRecord reader); writes "
                             "training_throughput_streamed.{md,json}")
    parser.add_argument("--catalogue-sizes", type=int, nargs="+", metavar="ITEMS",
                        help="only examples/s against the catalogue size, per optimizer (ModelConfig.optimizer); "
                             "writes training_throughput_catalogue.{md,json}")
    parser.add_argument("--variants", action="store_true",
                        help="also measure without XLA / steps_per_execution and with other batch sizes")
    args = parser.parse_args(argv)

    base = overrides.from_env(ModelConfig(), "MODEL")   # the pipeline's config, TOWER_RECS_MODEL_* included
    train, table = synthetic_data(args.examples)
    num_users, num_items = 610, table.shape[0] - 1
    print(f"devices: {[d.name for d in tf.config.list_logical_devices()]}, load {load_average():.1f}", flush=True)
    runs: dict[str, dict] = {}
    if args.streamed:
        return _main_streamed(args, base, train, table, num_users, argv)
    if args.catalogue_sizes:
        return _main_catalogue(args, base, argv)
    start_load = load_average()
    variants = {"default": base, "text_pca_64": dataclasses.replace(base, text_pca_dim=64),
                # The quality variants of benchmarks/results/quality.md (issue 16), each against the default.
                "query_tower_mean": dataclasses.replace(base, query_tower="mean"),
                "query_tower_sasrec": dataclasses.replace(base, query_tower="sasrec"),
                "id_from_text": dataclasses.replace(base, id_from_text=True),
                "no_id_from_text": dataclasses.replace(base, id_from_text=False),
                "id_dropout_curriculum_0.9": dataclasses.replace(base, id_dropout_start=0.9)}
    variants = {name: cfg for name, cfg in variants.items() if name == "default" or cfg != base}
    if args.variants:
        variants.update({
            "no_xla": dataclasses.replace(base, jit_compile=False),
            "no_xla_spe1": dataclasses.replace(base, jit_compile=False, steps_per_execution=1),
            "batch_4096": dataclasses.replace(base, batch_size=4096),
        })
    runs["tfrs_basic_id_only"] = measure_tfrs_basic(train, num_users, num_items, base.batch_size, args.epochs)
    print(f"tfrs_basic_id_only: {runs['tfrs_basic_id_only']}", flush=True)
    for name, cfg in variants.items():
        runs[name] = measure_two_tower(cfg, train, table, num_users, args.epochs)
        print(f"{name}: {runs[name]}", flush=True)

    baseline = runs["tfrs_basic_id_only"]["examples_per_s"]
    rows = ["| run | query tower | batch | XLA | steps/exec | examples/s | ratio vs TFRS basic | first epoch s "
            "| load avg |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        cfg = variants.get(name)
        rows.append(f"| {name} | {cfg.query_tower if cfg else '-'} | "
                    f"{cfg.batch_size if cfg else base.batch_size} | {cfg.jit_compile if cfg else '-'} | "
                    f"{cfg.steps_per_execution if cfg else 1} | {r['examples_per_s']:,.0f} | "
                    f"{r['examples_per_s'] / baseline:.2f} | {r['first_epoch_s']:.1f} | {r['load_avg']:.1f} |")
    cpus = os.cpu_count()
    markdown = (f"Two-tower training throughput, frozen encoder (text table {table.shape}), "
                f"{args.examples:,} synthetic examples, {cpus} CPUs, "
                f"`python -m benchmarks.training_throughput {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
                + "\n".join(rows) + "\n\nTarget: >= 20,000 examples/s on 2 CPU cores with the frozen encoder "
                "(default config; issue 16). "
                f"Load average at the start {start_load:.1f}: the machine is shared, compare rows of one run.\n")
    write_results(args.out, "training_throughput", markdown,
                  {"runs": runs, "config": base.to_dict(), "examples": args.examples, "cpus": cpus,
                   "devices": [d.name for d in tf.config.list_logical_devices()]})
    return 0


def write_results(out_dir: str, stem: str, markdown: str, payload: dict) -> None:
    """Prints the table and writes `<out_dir>/<stem>.md` and `.json`."""
    print(markdown)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, stem + ".md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump(payload, f, indent=1)


def _main_streamed(args, base: ModelConfig, train, table, num_users: int, argv) -> int:
    runs = {"in_memory": measure_two_tower(base, train, table, num_users, args.epochs)}
    print(f"in_memory: {runs['in_memory']}", flush=True)
    runs["streamed"] = measure_streamed(base, train, table, num_users, args.epochs)
    print(f"streamed: {runs['streamed']}", flush=True)
    rows = ["| input | examples/s | ratio vs in-memory | steady epoch s | load avg |", "|---|---|---|---|---|"]
    for name, r in runs.items():
        rows.append(f"| {name} | {r['examples_per_s']:,.0f} | "
                    f"{r['examples_per_s'] / runs['in_memory']['examples_per_s']:.2f} | {r['steady_epoch_s']:.1f} | "
                    f"{r['load_avg']:.1f} |")
    markdown = (f"Two-tower training throughput, in-memory vs streamed input (shuffled full batches read from "
                f"gzipped TFRecords, read file after file and parsed in batches: `trainer.run_fn.training_input`), "
                f"{args.examples:,} synthetic examples, "
                f"{os.cpu_count()} CPUs, `python -m benchmarks.training_throughput "
                f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n" + "\n".join(rows)
                + "\n\nTarget: streamed >= 25,000 examples/s on 2 CPU cores (default config).\n")
    write_results(args.out, "training_throughput_streamed", markdown,
                  {"runs": runs, "config": base.to_dict(), "examples": args.examples, "cpus": os.cpu_count()})
    return 0


def _main_catalogue(args, base: ModelConfig, argv) -> int:
    """Examples/s of the same number of examples over catalogues of each size, for each optimizer: the cost of
    a step should follow the batch, not the catalogue."""
    from trainer.model_config import OPTIMIZERS

    runs: dict[str, dict] = {}
    for items in args.catalogue_sizes:
        train, table = synthetic_data(args.examples, n_items=items)
        for optimizer in OPTIMIZERS:
            run = measure_two_tower(dataclasses.replace(base, optimizer=optimizer), train, table, 610, args.epochs)
            runs[f"{items}/{optimizer}"] = dict(run, items=items, optimizer=optimizer)
            print(f"{items} items, {optimizer}: {run}", flush=True)
    smallest = args.catalogue_sizes[0]
    rows = ["| items | optimizer | examples/s | ms per step | vs the same optimizer at "
            f"{smallest:,} items | load avg |", "|---|---|---|---|---|---|"]
    for r in runs.values():
        first = runs[f"{smallest}/{r['optimizer']}"]["examples_per_s"]
        rows.append(f"| {r['items']:,} | {r['optimizer']} | {r['examples_per_s']:,.0f} | {r['ms_per_step']:.1f} | "
                    f"{r['examples_per_s'] / first:.2f} | {r['load_avg']:.1f} |")
    markdown = (f"Two-tower training throughput against the catalogue size, {args.examples:,} synthetic examples "
                f"(610 users), {os.cpu_count()} CPUs, `python -m benchmarks.training_throughput "
                f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n" + "\n".join(rows) + "\n")
    write_results(args.out, "training_throughput_catalogue", markdown,
                  {"runs": runs, "config": base.to_dict(), "examples": args.examples, "cpus": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
