"""Warm start: a new model begins from a previous (blessed) model's weights.

The Trainer saves, next to the serving export in its Model artifact, what a later run needs to start
from this model: every tower weight and the user/item vocabularies they are indexed by
(`<model uri>/warm_start/`; the Pusher copies only `Format-Serving/`, so TF Serving sees nothing new).
A later run maps ids through the vocabularies: an id in both keeps its learned embedding row, a new id
keeps its freshly initialised row, the OOV row is carried; every other weight (text projection, query and
candidate MLPs, recency logits, PCA text basis) is copied when its shape matches.

    state = warm_start.load_state(warm_start.state_dir_of(fn_args.base_model))
    use, reason = warm_start.usable(cfg, state, user_vocab, item_vocab)
    record = {}
    model = train_model(..., text_basis=warm_start.text_basis(state) if use else None,
                        initialize=lambda m: record.update(warm_start.apply(m, state, user_vocab, item_vocab)))
    warm_start.save_state(model, user_vocab, item_vocab, warm_start.state_dir_of(fn_args.serving_model_dir))
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf

from schema import contract
from trainer.model import TwoTowerModel
from trainer.model_config import ModelConfig

STATE_DIR = "warm_start"               # beside Format-Serving in the Model artifact
WEIGHTS_FILE = "weights.npz"
VOCABULARIES_FILE = "vocabularies.json"
RECORD_FILE = "warm_start.json"         # what a run started from, in the model run dir and the state dir

# Layers whose weights are carried; the two id embeddings are remapped row by row through the vocabularies.
LAYERS = ("user_embedding", "item_embedding", "text_projection", "text_to_id", "sequence_encoder",
          "query_mlp", "candidate_mlp")
VARIABLES = ("recency_logits", "text_basis")
USER_ROWS, ITEM_ROWS = "user_embedding/0", "item_embedding/0"
TEXT_BASIS = "text_basis"


@dataclasses.dataclass
class WarmStartState:
    """A saved model's weights (`{name: array}`, names from `weight_names`) and vocabularies."""

    weights: dict[str, np.ndarray]
    user_vocab: list[str]
    item_vocab: list[str]
    source: str


def state_dir_of(serving_model_dir: str) -> str:
    """The warm-start state folder of a Model artifact, from its serving export (`<uri>/Format-Serving`)."""
    return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), STATE_DIR)


def named_variables(model: TwoTowerModel) -> dict[str, tf.Variable]:
    """`{"<layer>/<i>": variable}` of the carried layers plus the named variables; names do not depend on
    Keras' per-process layer numbering, so they match across runs and processes."""
    out = {}
    for layer_name in LAYERS:
        layer = getattr(model, layer_name, None)
        for i, variable in enumerate(layer.weights if layer is not None else []):
            out[f"{layer_name}/{i}"] = variable
    for name in VARIABLES:
        if getattr(model, name, None) is not None:
            out[name] = getattr(model, name)
    return out


def build_variables(model: TwoTowerModel) -> None:
    """Creates every lazily built variable with one call per tower on an unknown user/item."""
    history = -tf.ones([1, contract.HISTORY_LENGTH], tf.int64)
    model.query_embedding(tf.constant([model.num_users], tf.int64), history)
    item = tf.constant([model.num_items], tf.int64)
    model.candidate_embedding(item, model.item_text_embedding(item))


def save_state(model: TwoTowerModel, user_vocab: Sequence[str], item_vocab: Sequence[str], directory: str) -> None:
    """Writes the weights (`weights.npz`) and vocabularies (`vocabularies.json`) a warm start reads."""
    tf.io.gfile.makedirs(directory)
    buffer = io.BytesIO()
    np.savez(buffer, **{name: variable.numpy() for name, variable in named_variables(model).items()})
    with tf.io.gfile.GFile(os.path.join(directory, WEIGHTS_FILE), "wb") as f:
        f.write(buffer.getvalue())
    with tf.io.gfile.GFile(os.path.join(directory, VOCABULARIES_FILE), "w") as f:
        json.dump({"users": list(user_vocab), "items": list(item_vocab)}, f)


def load_state(directory: str) -> Optional[WarmStartState]:
    """The state saved in `directory`, or None when there is none (e.g. a model from before warm starts)."""
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    vocab_path = os.path.join(directory, VOCABULARIES_FILE)
    if not (tf.io.gfile.exists(weights_path) and tf.io.gfile.exists(vocab_path)):
        return None
    with tf.io.gfile.GFile(weights_path, "rb") as f:
        with np.load(io.BytesIO(f.read())) as arrays:
            weights = {name: arrays[name] for name in arrays.files}
    with tf.io.gfile.GFile(vocab_path) as f:
        vocabularies = json.load(f)
    return WarmStartState(weights, vocabularies["users"], vocabularies["items"], source=directory)


def usable(cfg: ModelConfig, state: Optional[WarmStartState], user_vocab: Sequence[str],
           item_vocab: Sequence[str]) -> tuple[bool, str]:
    """(warm start?, why): off when forced cold, without a saved state, when the id embedding width
    changed, or when the vocabularies share no id."""
    if not cfg.warm_start:
        return False, "cold start forced (warm_start=False)"
    if state is None:
        return False, "no base model with a warm-start state"
    width = state.weights[USER_ROWS].shape[1]
    if width != cfg.id_embedding_dim:
        return False, f"id_embedding_dim changed ({width} -> {cfg.id_embedding_dim})"
    if not (set(state.user_vocab) & set(user_vocab)) and not (set(state.item_vocab) & set(item_vocab)):
        return False, "the base model shares no user or item id with this run's vocabularies"
    return True, f"warm start from {state.source}"


def training_config(cfg: ModelConfig) -> ModelConfig:
    """The config a warm-started model trains with: `warm_start_epochs` at `warm_start_learning_rate`."""
    return dataclasses.replace(cfg, epochs=cfg.warm_start_epochs, learning_rate=cfg.warm_start_learning_rate)


def text_basis(state: WarmStartState) -> Optional[np.ndarray]:
    """The base model's PCA text basis (to build the new model in the same text space), if it had one."""
    return state.weights.get(TEXT_BASIS)


def carried_rows(old: np.ndarray, old_vocab: Sequence[str], fresh: np.ndarray,
                 new_vocab: Sequence[str]) -> tuple[np.ndarray, int, int]:
    """An embedding table for `new_vocab` (+ OOV row): the `old` row of each id in both vocabularies,
    the `fresh` row of each new id; the OOV (last) row is carried.

    Returns:
      (table [len(new_vocab) + 1, D], ids carried, ids new).
    """
    old_position = {item: i for i, item in enumerate(old_vocab)}
    pairs = np.array([(new, old_position[item]) for new, item in enumerate(new_vocab) if item in old_position],
                     np.int64).reshape(-1, 2)
    table = np.array(fresh, copy=True)
    table[pairs[:, 0]] = old[pairs[:, 1]]
    table[-1] = old[-1]
    return table, len(pairs), len(new_vocab) - len(pairs)


def apply(model: TwoTowerModel, state: WarmStartState, user_vocab: Sequence[str],
          item_vocab: Sequence[str]) -> dict[str, Any]:
    """Loads `state` into a freshly built `model` (see the module docstring); returns the record of what
    was carried: ids carried/new per vocabulary and the weights copied or skipped (shape changed)."""
    build_variables(model)
    record: dict[str, Any] = {"warm_started": True, "base_model": state.source}
    copied, skipped = [], []
    for name, variable in named_variables(model).items():
        old = state.weights.get(name)
        if name == TEXT_BASIS:  # fixed when the model was built (its text table depends on it): only checked
            record["text_basis_kept"] = old is not None and np.array_equal(old, variable.numpy())
            continue
        if name in (USER_ROWS, ITEM_ROWS) and old is not None and old.shape[1] == variable.shape[1]:
            vocabs = (state.user_vocab, user_vocab) if name == USER_ROWS else (state.item_vocab, item_vocab)
            table, carried, new = carried_rows(old, vocabs[0], variable.numpy(), vocabs[1])
            variable.assign(table)
            kind = "users" if name == USER_ROWS else "items"
            record[f"{kind}_carried"], record[f"{kind}_new"] = carried, new
            copied.append(name)
        elif old is not None and tuple(old.shape) == tuple(variable.shape):
            variable.assign(old)
            copied.append(name)
        else:
            skipped.append(name)
    record.update(weights_copied=len(copied), weights_skipped=skipped)
    return record


def write_record(record: dict[str, Any], *directories: str) -> None:
    """Writes `warm_start.json` (what the run started from) into each directory."""
    for directory in directories:
        tf.io.gfile.makedirs(directory)
        with tf.io.gfile.GFile(os.path.join(directory, RECORD_FILE), "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
