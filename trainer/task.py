"""TFX Trainer entry point (`run_fn`) and the training loop the benchmarks share.

The pipeline passes `run_fn="trainer.task.run_fn"` (a dotted path of the
installed package) and `custom_config={"model": ModelConfig().to_dict()}`;
the CatalogTrainer adds `custom_config["item_files"]`, the catalogue's examples.
"""
from __future__ import annotations

import glob
import os
from typing import Iterable, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
from absl import logging  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from trainer import features  # noqa: E402
from trainer.export import RecommenderModule, export_serving_model  # noqa: E402
from trainer.item_text import ItemTextEncoder, embed_catalogue, item_text  # noqa: E402
from trainer.model import TwoTowerModel  # noqa: E402
from trainer.model_config import ModelConfig  # noqa: E402


# -- catalogue -----------------------------------------------------------------------------------
def read_catalogue(file_pattern: str) -> dict[str, np.ndarray]:
    """Reads the items ExampleGen output (gzipped TFRecords of tf.Example) into string arrays."""
    files = sorted(glob.glob(file_pattern))
    if not files:
        raise FileNotFoundError(f"No item catalogue files match {file_pattern}")
    spec = {name: tf.io.FixedLenFeature([], tf.string, default_value="") for name in features.ITEM_COLUMNS}
    columns: dict[str, list] = {name: [] for name in features.ITEM_COLUMNS}
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096)
    for batch in dataset:
        parsed = tf.io.parse_example(batch, spec)
        for name in features.ITEM_COLUMNS:
            columns[name].append(parsed[name].numpy())
    return {name: np.concatenate(values).astype(object) for name, values in columns.items()}


def catalogue_texts(catalogue: dict[str, np.ndarray]) -> list[str]:
    texts = item_text(tf.constant(catalogue[features.TITLE]), tf.constant(catalogue[features.CATEGORIES]),
                      tf.constant(catalogue[features.DESCRIPTION]))
    return [t.decode("utf-8") for t in texts.numpy()]


def build_text_table(item_vocab: Iterable[str], catalogue_ids: Iterable[str],
                     catalogue_vectors: np.ndarray) -> np.ndarray:
    """Rows in item-vocabulary order (+ a zero OOV row); vocabulary items missing from the catalogue get zeros."""
    position = {item_id: i for i, item_id in enumerate(catalogue_ids)}
    item_vocab = list(item_vocab)
    table = np.zeros([len(item_vocab) + 1, catalogue_vectors.shape[1]], np.float32)
    for row, item_id in enumerate(item_vocab):
        if item_id in position:
            table[row] = catalogue_vectors[position[item_id]]
    return table


# -- data ----------------------------------------------------------------------------------------
def load_index_features(fn_args, tft_output: tft.TFTransformOutput, files: list[str]) -> dict[str, np.ndarray]:
    """All transformed examples of `files` as numpy arrays (index features are small: ~170 B/row)."""
    dataset = fn_args.data_accessor.tf_dataset_factory(
        files, tfxio.TensorFlowDatasetOptions(batch_size=8192, num_epochs=1, shuffle=False),
        tft_output.transformed_metadata.schema)
    columns: dict[str, list] = {features.USER_INDEX: [], features.ITEM_INDEX: [], features.HISTORY_INDEX: []}
    for batch in dataset:
        for name in columns:
            value = batch[name]
            if isinstance(value, tf.SparseTensor):
                value = tf.sparse.to_dense(value, default_value=-1)
            columns[name].append(value.numpy())
    return {
        features.USER_INDEX: np.concatenate(columns[features.USER_INDEX]).reshape(-1),
        features.ITEM_INDEX: np.concatenate(columns[features.ITEM_INDEX]).reshape(-1),
        features.HISTORY_INDEX: np.concatenate(columns[features.HISTORY_INDEX]).reshape(-1, features.HISTORY_LENGTH),
    }


def make_dataset(index_features: dict[str, np.ndarray], cfg: ModelConfig, shuffle: bool = True) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices(index_features)
    if shuffle:
        dataset = dataset.shuffle(len(index_features[features.ITEM_INDEX]), seed=cfg.seed,
                                  reshuffle_each_iteration=True)
    # drop_remainder keeps in-batch negatives well populated and the batch shape static.
    return dataset.batch(cfg.batch_size, drop_remainder=shuffle).prefetch(tf.data.AUTOTUNE)


# -- training ------------------------------------------------------------------------------------
def train_model(cfg: ModelConfig, train: dict[str, np.ndarray], num_users: int, num_items: int,
                text_table: np.ndarray, steps: int = 0, log_dir: Optional[str] = None,
                validation: Optional[dict[str, np.ndarray]] = None, verbose: int = 2) -> TwoTowerModel:
    """Builds and fits the two-tower model; `steps=0` trains `cfg.epochs` epochs."""
    tf.keras.utils.set_random_seed(cfg.seed)
    item_counts = np.bincount(train[features.ITEM_INDEX], minlength=num_items + 1)[:num_items]
    model = TwoTowerModel(cfg, num_users=num_users, num_items=num_items, text_table=text_table,
                          item_counts=item_counts)
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate))
    callbacks = [tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")] if log_dir else []
    dataset = make_dataset(train, cfg)
    batches_per_epoch = max(len(train[features.ITEM_INDEX]) // cfg.batch_size, 1)
    if steps > 0:
        epochs = max(1, -(-steps // batches_per_epoch))
        dataset = dataset.repeat()
        steps_per_epoch = min(steps, batches_per_epoch)
    else:
        epochs, steps_per_epoch = cfg.epochs, None
    model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose, callbacks=callbacks,
              validation_data=make_dataset(validation, cfg, shuffle=False) if validation else None)
    return model


def catalogue_index(item_vocab: list[str], catalogue_ids: Iterable[str]) -> np.ndarray:
    """Item-vocabulary index of each catalogue item; items never interacted with get the OOV index."""
    vocab_position = {item_id: i for i, item_id in enumerate(item_vocab)}
    return np.array([vocab_position.get(item_id, len(item_vocab)) for item_id in catalogue_ids], np.int64)


def candidate_vectors(model: TwoTowerModel, catalogue_index_: np.ndarray, text_vectors: np.ndarray,
                      batch_size: int = 4096) -> np.ndarray:
    """Candidate-tower vectors of every catalogue item, computed once for the serving index."""
    chunks = [model.candidate_embedding(tf.constant(catalogue_index_[i:i + batch_size]),
                                        tf.constant(text_vectors[i:i + batch_size])).numpy()
              for i in range(0, len(catalogue_index_), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros([0, model.cfg.embedding_dim], np.float32)


# -- TFX entry point -----------------------------------------------------------------------------
def _decode(values: Iterable) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def run_fn(fn_args) -> None:
    """Trains the two-tower model and exports the serving SavedModel to `fn_args.serving_model_dir`."""
    cfg = ModelConfig.from_dict(fn_args.custom_config["model"])
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    user_vocab = _decode(tft_output.vocabulary_by_name(features.USER_VOCAB))
    item_vocab = _decode(tft_output.vocabulary_by_name(features.ITEM_VOCAB))

    catalogue = read_catalogue(fn_args.custom_config["item_files"])
    catalogue_ids = _decode(catalogue[features.ITEM_ID])
    logging.info("Embedding %d catalogue item texts with %s", len(catalogue_ids), cfg.encoder_handle)
    text_vectors = embed_catalogue(cfg.preprocess_handle, cfg.encoder_handle, catalogue_texts(catalogue),
                                   output_key=cfg.encoder_output_key)
    text_table = build_text_table(item_vocab, catalogue_ids, text_vectors)

    train = load_index_features(fn_args, tft_output, fn_args.train_files)
    evaluation = load_index_features(fn_args, tft_output, fn_args.eval_files)
    logging.info("Training on %d interactions, %d users, %d items (%d in catalogue)",
                 len(train[features.ITEM_INDEX]), len(user_vocab), len(item_vocab), len(catalogue_ids))
    model = train_model(cfg, train, len(user_vocab), len(item_vocab), text_table, steps=fn_args.train_steps or 0,
                        log_dir=fn_args.model_run_dir, validation=evaluation)

    vectors = candidate_vectors(model, catalogue_index(item_vocab, catalogue_ids), text_vectors)
    text_encoder = ItemTextEncoder(cfg.preprocess_handle, cfg.encoder_handle, seq_length=cfg.text_seq_length,
                                   output_key=cfg.encoder_output_key)
    module = RecommenderModule(model, tft_output, catalogue_ids, vectors, text_encoder, cfg)
    model_name = fn_args.custom_config.get("model_name", "tower_recs")
    export_serving_model(module, fn_args.serving_model_dir, model_name, warmup_user_ids=user_vocab[:20])
    logging.info("Exported serving model to %s", fn_args.serving_model_dir)
