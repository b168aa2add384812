"""TFX Trainer entry point (`run_fn`) and the training loop the benchmarks share.

The pipeline passes `run_fn="trainer.task.run_fn"` (a dotted path of the
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
from tfx_bsl.public import tfxio

from trainer import features
from trainer.export import RecommenderModule, export_serving_model
from trainer.item_text import ItemTextEncoder, embed_catalogue, item_text
from trainer.model import TwoTowerModel
from trainer.model_config import ModelConfig


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
    """Batches of index features from in-memory arrays.

    `shuffle=True` (training): an endless stream of full batches (in-batch negatives stay well populated
    and the batch shape is static), reshuffled every epoch by a seeded permutation; the gather of each
    batch is one vectorised op (no per-example pipeline, no shuffle buffer to fill).
    `shuffle=False`: one pass in order, the last batch may be short.
    """
    n = len(index_features[features.ITEM_INDEX])
    if not shuffle:
        return tf.data.Dataset.from_tensor_slices(index_features).batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE)
    batch_size = max(1, min(cfg.batch_size, n))
    batches = max(n // batch_size, 1)
    tensors = {name: tf.constant(value) for name, value in index_features.items()}

    def epoch(epoch_number):
        order = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(cfg.seed, tf.int64),
                                                                           epoch_number])))
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order[:batches * batch_size], [batches, batch_size]))

    dataset = tf.data.Dataset.range(2 ** 62).flat_map(epoch)
    dataset = dataset.map(lambda rows: {name: tf.gather(t, rows) for name, t in tensors.items()},
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


# -- training ------------------------------------------------------------------------------------
def get_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when more than one is visible, else the default (one device)."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_model(cfg: ModelConfig, train: dict[str, np.ndarray], num_users: int, num_items: int,
                text_table: np.ndarray, total_steps: int = 0, text_encoder=None,
                item_texts: Optional[list[str]] = None) -> TwoTowerModel:
    """The compiled (untrained) model; call inside `strategy.scope()`."""
    item_counts = np.bincount(train[features.ITEM_INDEX], minlength=num_items + 1)[:num_items]
    model = TwoTowerModel(cfg, num_users=num_users, num_items=num_items, text_table=text_table,
                          item_counts=item_counts, text_encoder=text_encoder, item_texts=item_texts)
    learning_rate = cfg.learning_rate
    if cfg.lr_schedule == "cosine" and total_steps > 0:
        learning_rate = tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=total_steps)
    elif cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate), jit_compile=cfg.jit_compile,
                  steps_per_execution=max(1, cfg.steps_per_execution))
    return model


def train_model(cfg: ModelConfig, train: dict[str, np.ndarray], num_users: int, num_items: int,
                text_table: np.ndarray, steps: int = 0, log_dir: Optional[str] = None,
                validation: Optional[dict[str, np.ndarray]] = None, verbose: int = 2,
                callbacks: Optional[list] = None, text_encoder=None,
                item_texts: Optional[list[str]] = None) -> TwoTowerModel:
    """Builds and fits the two-tower model; `steps=0` trains `cfg.epochs` epochs.

    Runs under `get_strategy()` (all GPUs mirrored when there are several; the same code on CPU).
    """
    tf.keras.utils.set_random_seed(cfg.seed)
    n = len(train[features.ITEM_INDEX])
    batches_per_epoch = max(n // max(1, min(cfg.batch_size, n)), 1)
    if steps > 0:
        steps_per_epoch = min(steps, batches_per_epoch)
        epochs = max(1, -(-steps // steps_per_epoch))
    else:
        epochs, steps_per_epoch = cfg.epochs, batches_per_epoch
    strategy = get_strategy()
    with strategy.scope():
        model = build_model(cfg, train, num_users, num_items, text_table, total_steps=epochs * steps_per_epoch,
                            text_encoder=text_encoder, item_texts=item_texts)
    callbacks = list(callbacks or [])
    if log_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    model.fit(make_dataset(train, cfg), epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose,
              callbacks=callbacks,
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
                 len(train[features.ITEM_INDEX]), len(user_vocab), len(item_vocab), len(catalogue_ids))
    model = train_model(cfg, train, len(user_vocab), len(item_vocab), text_table, steps=fn_args.train_steps or 0,
                        log_dir=fn_args.model_run_dir, validation=evaluation, text_encoder=text_encoder,
                        item_texts=item_texts)

    if cfg.train_encoder:  # the serving index must use the fine-tuned encoder
        all_texts = [texts[item_id] for item_id in catalogue_ids]
        text_vectors = np.concatenate([text_encoder(tf.constant(all_texts[i:i + 256])).numpy()
                                       for i in range(0, len(all_texts), 256)])
    vectors = candidate_vectors(model, catalogue_index(item_vocab, catalogue_ids), text_vectors)
    module = RecommenderModule(model, tft_output, catalogue_ids, vectors, text_encoder, cfg)
    model_name = fn_args.custom_config.get("model_name", "tower_recs")
    export_serving_model(module, fn_args.serving_model_dir, model_name, warmup_user_ids=user_vocab[:20])
    logging.info("Exported serving model to %s", fn_args.serving_model_dir)
