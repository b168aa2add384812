"""The training loop: in-memory index features -> a fitted `TwoTowerModel`, shared by the
TFX Trainer (`trainer/run_fn.py`) and the benchmarks.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional, Union

import numpy as np
import tensorflow as tf

from schema import contract
from trainer import distribution
from trainer.model import TwoTowerModel
from trainer.model_config import ModelConfig
from trainer.optimizers import make_optimizer
from trainer.weight_averaging import EpochWeightAverage


# -- catalogue -----------------------------------------------------------------------------------
def build_text_table(item_vocab: Iterable[str], catalogue_ids: Iterable[str],
                     catalogue_vectors: np.ndarray) -> np.ndarray:
    """The model's text table: one row per item-vocabulary entry, plus a zero OOV row.

    Args:
      item_vocab: the Transform item vocabulary (index order).
      catalogue_ids: the ids of the rows of `catalogue_vectors`.
      catalogue_vectors: [N, H] text embeddings of the catalogue.

    Returns:
      float32 [len(item_vocab) + 1, H]; vocabulary items missing from the catalogue get zeros.
    """
    position = {item_id: i for i, item_id in enumerate(catalogue_ids)}
    item_vocab = list(item_vocab)
    table = np.zeros([len(item_vocab) + 1, catalogue_vectors.shape[1]], np.float32)
    for row, item_id in enumerate(item_vocab):
        if item_id in position:
            table[row] = catalogue_vectors[position[item_id]]
    return table


# -- data ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class StreamedExamples:
    """Training data too large for memory: an endless stream of shuffled full batches read from files.

    `item_counts` [num_items] (interactions per item, for logQ) is counted in a streaming pass, so
    nothing holds every row (see `trainer/run_fn.py`).
    """

    dataset: tf.data.Dataset
    num_examples: int
    item_counts: np.ndarray


TrainingData = Union[dict, StreamedExamples]


def num_examples(train: TrainingData) -> int:
    """Rows of in-memory index features or of a `StreamedExamples`."""
    return train.num_examples if isinstance(train, StreamedExamples) else len(train[contract.ITEM_INDEX])


def make_dataset(index_features: dict[str, np.ndarray], cfg: ModelConfig, shuffle: bool = True) -> tf.data.Dataset:
    """Batches of index features from in-memory arrays.

    `shuffle=True` (training): an endless stream of full batches (in-batch negatives stay well populated
    and the batch shape is static), reshuffled every epoch by a seeded permutation; the gather of each
    batch is one vectorised op (no per-example pipeline, no shuffle buffer to fill).
    `shuffle=False`: one pass in order, the last batch may be short.
    """
    n = len(index_features[contract.ITEM_INDEX])
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
def epochs_for(cfg: ModelConfig, examples: int) -> int:
    """Epochs a run over `examples` training examples trains: `cfg.epochs`, fewer (at least 1) where they would
    show the model more than `cfg.max_training_examples` examples.

        epochs_for(ModelConfig(epochs=6, max_training_examples=4_000_000), 90_000)      # 6
        epochs_for(ModelConfig(epochs=6, max_training_examples=4_000_000), 1_133_341)   # 3
    """
    if cfg.max_training_examples <= 0 or examples <= 0:
        return cfg.epochs
    return max(1, min(cfg.epochs, cfg.max_training_examples // examples))


def get_strategy(require_gpu: bool = False) -> tf.distribute.Strategy:
    """The strategy of `trainer/distribution.py`: multi-worker from TF_CONFIG, all local GPUs mirrored, or one device."""
    return distribution.choose_strategy(require_gpu=require_gpu)


def build_model(cfg: ModelConfig, train: TrainingData, num_users: int, num_items: int,
                text_table: np.ndarray, total_steps: int = 0, text_encoder=None,
                item_texts: Optional[list[str]] = None, text_basis: Optional[np.ndarray] = None) -> TwoTowerModel:
    """The compiled (untrained) model; call inside `strategy.scope()`.

    Args:
      cfg: the hyperparameters.
      train: training index features or `StreamedExamples` (their item counts give the logQ sampling
        probabilities).
      num_users, num_items: vocabulary sizes (the OOV index is the size).
      text_table: [num_items + 1, H] item text embeddings (`build_text_table`).
      total_steps: steps of the run, for the cosine learning-rate schedule.
      text_encoder, item_texts: the trainable BERT and each item's text, with `cfg.train_encoder`.
      text_basis: a fixed PCA basis of the text table (a warm start's); None fits it to `text_table`.

    Returns:
      A `TwoTowerModel` compiled with `cfg.optimizer` (trainer/optimizers.py).
    """
    if isinstance(train, StreamedExamples):
        item_counts = train.item_counts[:num_items]
    else:
        item_counts = np.bincount(train[contract.ITEM_INDEX], minlength=num_items + 1)[:num_items]
    model = TwoTowerModel(cfg, num_users=num_users, num_items=num_items, text_table=text_table,
                          item_counts=item_counts, text_encoder=text_encoder, item_texts=item_texts,
                          text_basis=text_basis)
    model.curriculum_steps = total_steps
    learning_rate = cfg.learning_rate
    if cfg.lr_schedule == "cosine" and total_steps > 0:
        learning_rate = tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=total_steps)
    elif cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")
    model.compile(optimizer=make_optimizer(cfg.optimizer, learning_rate),
                  jit_compile=distribution.use_xla(cfg.jit_compile, cfg.xla_on_gpu),
                  steps_per_execution=max(1, cfg.steps_per_execution))
    return model


def train_model(cfg: ModelConfig, train: TrainingData, num_users: int, num_items: int,
                text_table: np.ndarray, steps: int = 0, log_dir: Optional[str] = None,
                validation: Optional[Union[dict, tf.data.Dataset]] = None, verbose: int = 2,
                callbacks: Optional[list] = None, text_encoder=None,
                item_texts: Optional[list[str]] = None,
                strategy: Optional[tf.distribute.Strategy] = None, text_basis: Optional[np.ndarray] = None,
                initialize: Optional[Callable[[TwoTowerModel], None]] = None) -> TwoTowerModel:
    """Builds and fits the two-tower model under `strategy` (default `get_strategy()`: multi-worker from
    TF_CONFIG, all GPUs mirrored, else one device; the same code on CPU).

        model = train_model(ModelConfig(epochs=2), train, num_users, num_items, text_table)
        vectors = candidate_vectors(model, catalogue_index(item_vocab, catalogue_ids), text_vectors)

    Args:
      cfg, train, num_users, num_items, text_table, text_encoder, item_texts: as for `build_model`.
      steps: training steps; 0 trains `epochs_for(cfg, examples)` epochs over `train` (`cfg.epochs`, fewer on
        data past `cfg.max_training_examples`).
      log_dir: TensorBoard log directory (None: no logs).
      validation: index features (or a finite dataset of batches) whose loss is reported after each epoch.
      verbose, callbacks: Keras `fit`'s.
      strategy: a strategy made earlier (multi-worker must be made before any other TF op).
      text_basis: as for `build_model`.
      initialize: called with the built model (variables created) before training, under the strategy's
        scope, e.g. `trainer.warm_start.apply` to start from a previous model's weights.

    Returns:
      The trained `TwoTowerModel`.
    """
    tf.keras.utils.set_random_seed(cfg.seed)
    n = num_examples(train)
    batches_per_epoch = max(n // max(1, min(cfg.batch_size, n)), 1)
    if steps > 0:
        steps_per_epoch = min(steps, batches_per_epoch)
        epochs = max(1, -(-steps // steps_per_epoch))
    else:
        epochs, steps_per_epoch = epochs_for(cfg, n), batches_per_epoch
    strategy = strategy or get_strategy(cfg.require_gpu)
    with strategy.scope():
        model = build_model(cfg, train, num_users, num_items, text_table, total_steps=epochs * steps_per_epoch,
                            text_encoder=text_encoder, item_texts=item_texts, text_basis=text_basis)
        if initialize is not None:
            initialize(model)
    callbacks = list(callbacks or [])
    if cfg.average_last_epochs > 1 and epochs > 1:
        callbacks.append(EpochWeightAverage(cfg.average_last_epochs))
    if log_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    if isinstance(validation, dict):
        validation = make_dataset(validation, cfg, shuffle=False)
    dataset = train.dataset if isinstance(train, StreamedExamples) else make_dataset(train, cfg)
    # Each replica takes its slice of every global batch: N replicas see the batches of one.
    model.fit(distribution.distribute_batches(strategy, dataset), epochs=epochs, steps_per_epoch=steps_per_epoch,
              verbose=verbose, callbacks=callbacks, validation_data=validation)
    return model


def catalogue_index(item_vocab: list[str], catalogue_ids: Iterable[str]) -> np.ndarray:
    """Item-vocabulary index [N] (int64) of each catalogue item; items never interacted with get the OOV index."""
    vocab_position = {item_id: i for i, item_id in enumerate(item_vocab)}
    return np.array([vocab_position.get(item_id, len(item_vocab)) for item_id in catalogue_ids], np.int64)


def candidate_vectors(model: TwoTowerModel, catalogue_index_: np.ndarray, text_vectors: np.ndarray,
                      batch_size: int = 4096, new_items: Optional[np.ndarray] = None) -> np.ndarray:
    """Served candidate vectors [N, D + 1] of every catalogue item, computed once for the serving index:
    the candidate tower's vector and the item's popularity prior (`TwoTowerModel.served_candidate`).

    Items without an id row (no interaction in the training data) have their tower vector scaled by
    `cfg.unseen_item_scale` and the prior of a count of 0, except `new_items`: those arrived after training
    (as `make refresh-catalogue` adds them) and keep a new item's vector (scaled by `cfg.new_item_scale`) and prior.

    Args:
      model: the trained model.
      catalogue_index_: [N] item indices (`catalogue_index`).
      text_vectors: [N, H] the items' text embeddings.
      batch_size: items per call.
      new_items: optional [N] bool, items that were not in the catalogue when the model trained.
    """
    unseen = np.asarray(catalogue_index_) >= model.num_items
    if new_items is not None:
        unseen &= ~np.asarray(new_items, bool)
    # OOV rows' tower vectors: `unseen_item_scale` for those never chosen in training, `new_item_scale` for new ones.
    oov_scale = np.where(unseen, model.cfg.unseen_item_scale, model.cfg.new_item_scale).astype(np.float32)
    chunks = [model.served_candidate(tf.constant(catalogue_index_[i:i + batch_size]),
                                     tf.constant(text_vectors[i:i + batch_size]),
                                     tf.constant(oov_scale[i:i + batch_size])).numpy()
              for i in range(0, len(catalogue_index_), batch_size)]
    vectors = np.concatenate(chunks) if chunks else np.zeros([0, model.cfg.embedding_dim + 1], np.float32)
    vectors[unseen, -1] = model.popularity.of_count(0)
    return vectors
