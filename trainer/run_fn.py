"""TFX Trainer entry point: `run_fn` trains the two-tower model and exports the serving SavedModel.

The pipeline passes `run_fn="trainer.run_fn.run_fn"` (a dotted path of the
installed package) and `custom_config={"model": ModelConfig().to_dict()}`;
the CatalogTrainer adds `custom_config["item_files"]`, the catalogue's examples.
"""
from __future__ import annotations

import glob
from typing import Iterable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tensorflow_transform.tf_metadata import schema_utils

from pipeline import example_reader
from schema import contract
from trainer import distribution, warm_start
from trainer.item_text import ItemTextEncoder, catalogue_texts, embed_catalogue
from trainer.model_config import ModelConfig
from trainer.serving_model import RecommenderModule, export_serving_model
from trainer.train import (StreamedExamples, build_text_table, candidate_vectors, catalogue_index, epochs_for,
                           num_examples, train_model)


# -- inputs --------------------------------------------------------------------------------------
# Bytes per transformed example held in memory: user and item index plus the history (int64).
INDEX_BYTES_PER_EXAMPLE = 8 * (2 + contract.HISTORY_LENGTH)


def read_catalogue(file_pattern: str) -> dict[str, np.ndarray]:
    """Reads the items ExampleGen output with the project's one reader (typed by the items schema).

    Args:
      file_pattern: glob of the catalogue split's files (`custom_config["item_files"]`).

    Returns:
      `{column: object array of bytes}` for each of `contract.ITEM_COLUMNS` (a missing value: b"").
    """
    if not glob.glob(file_pattern):
        raise FileNotFoundError(f"No item catalogue files match {file_pattern}")
    columns = example_reader.read_columns(file_pattern, example_reader.ITEMS_SCHEMA, contract.ITEM_COLUMNS)
    return {name: np.array([b"" if v is None else v for v in values], dtype=object)
            for name, values in columns.items()}


INDEX_FEATURES = (contract.USER_INDEX, contract.ITEM_INDEX, contract.HISTORY_INDEX)


def _index_dataset(tft_output: tft.TFTransformOutput, files: list[str], batch_size: int,
                   shuffle_seed: Optional[int] = None, shuffle_buffer_size: int = 0) -> tf.data.Dataset:
    """Batches of the three index features parsed from the Transform output's files.

    Read with `example_reader.record_dataset` (one file after the other) and parsed in batches with the
    transformed schema's feature spec, not through TFX's data accessor, whose interleaved reader costs
    20x on these small records (1.13M examples: 20 s vs 1 s; `pipeline/example_reader.py`).

    Args:
      tft_output: the Transform output (its transformed schema types the features).
      files: file patterns, as TFX passes them (`fn_args.train_files`).
      batch_size: rows per batch.
      shuffle_seed: None: one pass in file order, the last batch may be short. Else an endless stream of
        full batches: file order reshuffled every pass, records through a `shuffle_buffer_size` buffer.
    """
    spec = schema_utils.schema_as_feature_spec(tft_output.transformed_metadata.schema).feature_spec
    spec = {name: spec[name] for name in INDEX_FEATURES}
    paths = tf.data.Dataset.from_tensor_slices(example_reader.matching_files(files))
    if shuffle_seed is not None:
        paths = paths.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True).repeat()
    records = example_reader.record_dataset(paths)
    if shuffle_seed is not None:
        records = records.shuffle(max(1, shuffle_buffer_size), seed=shuffle_seed)

    def parse(serialized):
        batch = tf.io.parse_example(serialized, spec)
        out = {}
        for name, width in ((contract.USER_INDEX, None), (contract.ITEM_INDEX, None),
                            (contract.HISTORY_INDEX, contract.HISTORY_LENGTH)):
            value = batch[name]
            if isinstance(value, tf.SparseTensor):
                value = tf.sparse.to_dense(value, default_value=-1)
            out[name] = tf.reshape(value, [-1] if width is None else [-1, width])
        return out

    batches = records.batch(batch_size, drop_remainder=shuffle_seed is not None)
    return batches.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def load_index_features(tft_output: tft.TFTransformOutput, files: list[str],
                        num_examples: Optional[int] = None) -> dict[str, np.ndarray]:
    """All transformed examples of `files` as numpy arrays (the fast path for data within the memory budget).

    Batches are copied into arrays allocated once for `num_examples` rows (counted when not given): no list
    of batches to concatenate, so loading peaks at the arrays' own size, not twice it.

    Returns:
      `{"user_index": [N], "item_index": [N], "history_index": [N, HISTORY_LENGTH]}` int64 arrays.
    """
    n = count_examples(files) if num_examples is None else num_examples
    columns = {contract.USER_INDEX: np.empty([n], np.int64), contract.ITEM_INDEX: np.empty([n], np.int64),
               contract.HISTORY_INDEX: np.empty([n, contract.HISTORY_LENGTH], np.int64)}
    filled = 0
    for batch in _index_dataset(tft_output, files, batch_size=8192):
        size = int(batch[contract.ITEM_INDEX].shape[0])
        if filled + size > n:
            raise ValueError(f"{files} hold more than the {n} examples counted")
        for name, array in columns.items():
            array[filled:filled + size] = batch[name].numpy()
        filled += size
    if filled != n:
        raise ValueError(f"{files} hold {filled} examples, {n} counted")
    return columns


def count_examples(file_patterns: list[str]) -> int:
    """Records in the files (TFX passes split patterns, e.g. ".../Split-train/*"); one read, no parsing."""
    records = example_reader.record_dataset(example_reader.matching_files(file_patterns))
    return int(records.batch(65536).reduce(tf.constant(0, tf.int64),
                                           lambda n, batch: n + tf.shape(batch, out_type=tf.int64)[0]))


def stream_index_features(tft_output: tft.TFTransformOutput, files: list[str], cfg: ModelConfig,
                          num_examples: int, num_items: int) -> StreamedExamples:
    """Training examples streamed from the Transform output: shuffled full batches, repeated forever.

    The item counts for logQ come from one streaming pass over `item_index` (memory: one count per item).
    """
    counts = np.zeros([num_items + 1], np.int64)
    for batch in _index_dataset(tft_output, files, batch_size=65536):
        counts += np.bincount(batch[contract.ITEM_INDEX].numpy(), minlength=num_items + 1)[:num_items + 1]
    batch_size = max(1, min(cfg.batch_size, num_examples))
    dataset = _index_dataset(tft_output, files, batch_size, shuffle_seed=cfg.seed,
                             shuffle_buffer_size=max(10_000, 16 * batch_size))
    return StreamedExamples(dataset, num_examples, counts[:num_items])


def training_input(fn_args, tft_output: tft.TFTransformOutput, cfg: ModelConfig, num_items: int):
    """(train, validation): in memory when the data fits `cfg.in_memory_budget_mb`, else streamed."""
    n = count_examples(fn_args.train_files)
    if n * INDEX_BYTES_PER_EXAMPLE <= cfg.in_memory_budget_mb * 2 ** 20:
        return (load_index_features(tft_output, fn_args.train_files, n),
                load_index_features(tft_output, fn_args.eval_files))
    logging.info("Streaming %d training examples from the Transform output (over the %d MiB memory budget)",
                 n, cfg.in_memory_budget_mb)
    train = stream_index_features(tft_output, fn_args.train_files, cfg, n, num_items)
    validation = _index_dataset(tft_output, fn_args.eval_files, cfg.batch_size)
    return train, validation


def catalogue_vectors(cfg: ModelConfig, texts: list[str], embedding_files: Optional[str] = None) -> np.ndarray:
    """float32 [N, H] text embeddings: looked up in the CatalogEmbedder's output, else encoded here."""
    if embedding_files:
        from encoder.beam_inference import text_key
        from pipeline.components.catalog_embedder import read_embeddings

        cached = read_embeddings(embedding_files)
        missing = [text for text in texts if text_key(text) not in cached]
        if missing:
            raise ValueError(f"{len(missing)} catalogue text(s) have no embedding in {embedding_files}, "
                             f"e.g. {missing[:3]}")
        logging.info("Looked up %d catalogue item text embeddings in %s", len(texts), embedding_files)
        return np.stack([cached[text_key(text)] for text in texts]) if texts else np.zeros([0, 0], np.float32)
    logging.info("Embedding %d catalogue item texts with %s", len(texts), cfg.encoder_handle)
    return embed_catalogue(cfg.preprocess_handle, cfg.encoder_handle, texts, output_key=cfg.encoder_output_key,
                           precision=cfg.catalogue_embedding_precision)


# -- TFX entry point -----------------------------------------------------------------------------
def _decode(values: Iterable) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def run_fn(fn_args) -> None:
    """Trains the two-tower model and exports the serving SavedModel to `fn_args.serving_model_dir`.

    Args:
      fn_args: the TFX Trainer's FnArgs: transformed train/eval files, the Transform output,
        `train_steps` (0: `ModelConfig.epochs`), `custom_config["model"]` (a `ModelConfig` dict) and
        `custom_config["item_files"]` (the catalogue, from CatalogTrainer).
    """
    cfg = ModelConfig.from_dict(fn_args.custom_config["model"])
    # First: a multi-worker strategy (TF_CONFIG) must be made before any other TensorFlow op.
    strategy = distribution.choose_strategy(require_gpu=cfg.require_gpu)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    user_vocab = _decode(tft_output.vocabulary_by_name(contract.USER_VOCAB))
    item_vocab = _decode(tft_output.vocabulary_by_name(contract.ITEM_VOCAB))

    catalogue = read_catalogue(fn_args.custom_config["item_files"])
    catalogue_ids = _decode(catalogue[contract.ITEM_ID])
    texts = dict(zip(catalogue_ids, catalogue_texts(catalogue)))
    text_vectors = catalogue_vectors(cfg, list(texts.values()), fn_args.custom_config.get("embedding_files"))
    text_table = build_text_table(item_vocab, catalogue_ids, text_vectors)
    # The same Hub layers serve `candidate_embedding`; with train_encoder they are also fine-tuned.
    text_encoder = ItemTextEncoder(cfg.preprocess_handle, cfg.encoder_handle, seq_length=cfg.text_seq_length,
                                   output_key=cfg.encoder_output_key, trainable=cfg.train_encoder)
    item_texts = [texts.get(item_id, "") for item_id in item_vocab] + [""]

    train, evaluation = training_input(fn_args, tft_output, cfg, len(item_vocab))
    logging.info("Training on %d interactions, %d users, %d items (%d in catalogue)",
                 num_examples(train), len(user_vocab), len(item_vocab), len(catalogue_ids))
    base = warm_start.load_state(warm_start.state_dir_of(fn_args.base_model)) \
        if cfg.warm_start and fn_args.base_model else None
    warm, reason = warm_start.usable(cfg, base, user_vocab, item_vocab)
    record = {"warm_started": False, "reason": reason}
    train_cfg = warm_start.training_config(cfg) if warm else cfg
    # The config's epochs on this much data (explicit train steps, e.g. in tests, override them).
    epochs = epochs_for(train_cfg, num_examples(train))
    logging.info("Training %d epoch(s): %d configured, at most %d examples seen (max_training_examples)%s",
                 epochs, train_cfg.epochs, train_cfg.max_training_examples,
                 f"; {fn_args.train_steps} steps given" if fn_args.train_steps else "")
    model = train_model(train_cfg, train, len(user_vocab), len(item_vocab), text_table,
                        steps=fn_args.train_steps or 0, log_dir=fn_args.model_run_dir, validation=evaluation,
                        text_encoder=text_encoder, item_texts=item_texts, strategy=strategy,
                        text_basis=warm_start.text_basis(base) if warm else None,
                        initialize=(lambda m: record.update(warm_start.apply(m, base, user_vocab, item_vocab),
                                                            reason=reason)) if warm else None)
    record.update(epochs=epochs, learning_rate=train_cfg.learning_rate)
    logging.info("Warm start: %s", record)
    # What it trained on, beside the TensorBoard logs (the run report reads the model run dir).
    distribution.write_devices(strategy, fn_args.model_run_dir)
    warm_start.write_record(record, fn_args.model_run_dir)

    if cfg.train_encoder:  # the serving index must use the fine-tuned encoder
        all_texts = [texts[item_id] for item_id in catalogue_ids]
        text_vectors = np.concatenate([text_encoder(tf.constant(all_texts[i:i + 256])).numpy()
                                       for i in range(0, len(all_texts), 256)])
    vectors = candidate_vectors(model, catalogue_index(item_vocab, catalogue_ids), text_vectors)
    module = RecommenderModule(model, tft_output, catalogue_ids, vectors, text_encoder, cfg)
    model_name = fn_args.custom_config.get("model_name", "tower_recs")
    # Every worker saves (saving may run collectives); only the chief's copy is the serving model.
    with distribution.export_dir_for_task(strategy, fn_args.serving_model_dir) as export_dir:
        export_serving_model(module, export_dir, model_name, warmup_user_ids=user_vocab[:20])
        # Beside the export, outside the folder Pusher copies: what the next run warm-starts from.
        state_dir = warm_start.state_dir_of(export_dir)
        warm_start.save_state(model, user_vocab, item_vocab, state_dir)
        warm_start.write_record(record, state_dir)
    logging.info("Exported serving model to %s", export_dir)
