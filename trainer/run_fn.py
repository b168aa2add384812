"""TFX Trainer entry point: `run_fn` trains the two-tower model and exports the serving SavedModel.

The pipeline passes `run_fn="trainer.run_fn.run_fn"` (a dotted path of the
installed package) and `custom_config={"model": ModelConfig().to_dict()}`;
the CatalogTrainer adds `custom_config["item_files"]`, the catalogue's examples.
"""
from __future__ import annotations

import glob
from typing import Iterable

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx_bsl.public import tfxio

from schema import contract
from trainer import distribution
from trainer.item_text import ItemTextEncoder, catalogue_texts, embed_catalogue
from trainer.model_config import ModelConfig
from trainer.serving_model import RecommenderModule, export_serving_model
from trainer.train import build_text_table, candidate_vectors, catalogue_index, train_model


# -- inputs --------------------------------------------------------------------------------------
def read_catalogue(file_pattern: str) -> dict[str, np.ndarray]:
    """Reads the items ExampleGen output (gzipped TFRecords of tf.Example) into string arrays.

    Args:
      file_pattern: glob of the catalogue split's files (`custom_config["item_files"]`).

    Returns:
      `{column: object array of bytes}` for each of `contract.ITEM_COLUMNS`.
    """
    files = sorted(glob.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"No item catalogue files match {file_pattern}")
    spec = {name: tf.io.FixedLenFeature([], tf.string, default_value="") for name in contract.ITEM_COLUMNS}
    columns: dict[str, list] = {name: [] for name in contract.ITEM_COLUMNS}
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096)
    for batch in dataset:
        parsed = tf.io.parse_example(batch, spec)
        for name in contract.ITEM_COLUMNS:
            columns[name].append(parsed[name].numpy())
    return {name: np.concatenate(values).astype(object) for name, values in columns.items()}


def load_index_features(fn_args, tft_output: tft.TFTransformOutput, files: list[str]) -> dict[str, np.ndarray]:
    """All transformed examples of `files` as numpy arrays (index features are small: ~170 B/row).

    Returns:
      `{"user_index": [N], "item_index": [N], "history_index": [N, HISTORY_LENGTH]}` int64 arrays.
    """
    dataset = fn_args.data_accessor.tf_dataset_factory(
        files, tfxio.TensorFlowDatasetOptions(batch_size=8192, num_epochs=1, shuffle=False),
        tft_output.transformed_metadata.schema)
    columns: dict[str, list] = {contract.USER_INDEX: [], contract.ITEM_INDEX: [], contract.HISTORY_INDEX: []}
    for batch in dataset:
        for name in columns:
            value = batch[name]
            if isinstance(value, tf.SparseTensor):
                value = tf.sparse.to_dense(value, default_value=-1)
            columns[name].append(value.numpy())
    return {
        contract.USER_INDEX: np.concatenate(columns[contract.USER_INDEX]).reshape(-1),
        contract.ITEM_INDEX: np.concatenate(columns[contract.ITEM_INDEX]).reshape(-1),
        contract.HISTORY_INDEX: np.concatenate(columns[contract.HISTORY_INDEX]).reshape(-1, contract.HISTORY_LENGTH),
    }


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
    logging.info("Embedding %d catalogue item texts with %s", len(catalogue_ids), cfg.encoder_handle)
    texts = dict(zip(catalogue_ids, catalogue_texts(catalogue)))
    text_vectors = embed_catalogue(cfg.preprocess_handle, cfg.encoder_handle, list(texts.values()),
                                   output_key=cfg.encoder_output_key)
    text_table = build_text_table(item_vocab, catalogue_ids, text_vectors)
    # The same Hub layers serve `candidate_embedding`; with train_encoder they are also fine-tuned.
    text_encoder = ItemTextEncoder(cfg.preprocess_handle, cfg.encoder_handle, seq_length=cfg.text_seq_length,
                                   output_key=cfg.encoder_output_key, trainable=cfg.train_encoder)
    item_texts = [texts.get(item_id, "") for item_id in item_vocab] + [""]

    train = load_index_features(fn_args, tft_output, fn_args.train_files)
    evaluation = load_index_features(fn_args, tft_output, fn_args.eval_files)
    logging.info("Training on %d interactions, %d users, %d items (%d in catalogue)",
                 len(train[contract.ITEM_INDEX]), len(user_vocab), len(item_vocab), len(catalogue_ids))
    model = train_model(cfg, train, len(user_vocab), len(item_vocab), text_table, steps=fn_args.train_steps or 0,
                        log_dir=fn_args.model_run_dir, validation=evaluation, text_encoder=text_encoder,
                        item_texts=item_texts, strategy=strategy)
    # What it trained on, beside the TensorBoard logs (the run report reads the model run dir).
    distribution.write_devices(strategy, fn_args.model_run_dir)

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
    logging.info("Exported serving model to %s", export_dir)
