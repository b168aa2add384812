"""Fast batched text embedding with TF Hub-format BERT preprocess + encoder modules.

Short item texts are not all padded to the preprocessor's maximum length: texts are tokenized
once, sorted by token count, and each batch is packed (via the preprocessor's own
`bert_pack_inputs`) to its own maximum length rounded up to a multiple of 8 (capped at the
preprocessor's default seq_length). Results are returned in the input order. `precision="bfloat16"`
runs the encoder's matmuls in bfloat16 on CPU for those calls only (`encoder/precision.py`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Any, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  (registers the TF Text ops used by the preprocessor)

from encoder.precision import bfloat16_calls, uses_bfloat16, validate_precision

logger = logging.getLogger(__name__)

PAD_MULTIPLE = 8
TOKENIZE_CHUNK = 4096


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def preprocessor_seq_length(preprocessor: Any) -> int:
    """Default seq_length of a preprocessor (handle, hub.KerasLayer or loaded object)."""
    if isinstance(preprocessor, str):
        preprocessor = hub.load(preprocessor)
    obj = getattr(preprocessor, "resolved_object", preprocessor)
    seq_length = getattr(obj, "seq_length", None)  # exported by encoder.export
    if isinstance(seq_length, tf.Variable):
        return int(seq_length.numpy())
    return int(obj(tf.constant([""]))["input_word_ids"].shape[1])


class TextEncoder:
    """Holds the two hub.KerasLayers; `encode` does the dynamic-padding batched encoding.

    `precision`: "float32", or "bfloat16" for CPU bfloat16 matmuls during `encode` (`encoder/precision.py`).
    """

    def __init__(self, preprocess_handle: str, encoder_handle: str, precision: str = "float32"):
        self.precision = validate_precision(precision)
        self._bfloat16 = uses_bfloat16(precision)   # once: RunInference calls `encode` per batch
        self.preprocess_layer = hub.KerasLayer(preprocess_handle, trainable=False)
        self.encoder_layer = hub.KerasLayer(encoder_handle, trainable=False)
        pre = self.preprocess_layer.resolved_object
        self._tokenize = pre.tokenize
        self._pack = pre.bert_pack_inputs
        self.max_seq_length = preprocessor_seq_length(pre)

    def tokenize(self, texts: Sequence[str]) -> List[np.ndarray]:
        """Wordpiece ids (no [CLS]/[SEP]) per text, as int32 numpy arrays."""
        out: List[np.ndarray] = []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = list(texts[start:start + TOKENIZE_CHUNK])
            ragged = self._tokenize(tf.constant(chunk, dtype=tf.string)).merge_dims(-2, -1)
            values = ragged.flat_values.numpy().astype(np.int32)
            splits = ragged.row_splits.numpy()
            out.extend(np.split(values, splits[1:-1]) if len(chunk) > 1 else [values])
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 128,
               output_key: str = "sentence_embedding", log_every: int = 50) -> np.ndarray:
        """Embeds `texts` in batches of similar token counts, each padded to its own length.

        Args:
          texts: N strings.
          batch_size: texts per encoder call.
          output_key: the encoder output to return.
          log_every: log progress every this many batches.

        Returns:
          float32 [N, H] in the input order ([0, 0] for no texts).
        """
        texts = list(texts)
        n = len(texts)
        if n == 0:
            return np.zeros((0, 0), np.float32)
        with bfloat16_calls() if self._bfloat16 else contextlib.nullcontext():
            return self._encode(texts, batch_size, output_key, log_every)

    def _encode(self, texts: List[str], batch_size: int, output_key: str, log_every: int) -> np.ndarray:
        n = len(texts)
        start_time = time.time()
        tokens = self.tokenize(texts)
        packed_len = np.minimum(np.array([len(t) for t in tokens]), self.max_seq_length - 2) + 2
        order = np.argsort(packed_len, kind="stable")
        result: Optional[np.ndarray] = None
        num_batches = -(-n // batch_size)
        for b in range(num_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            seq_length = min(_round_up(int(packed_len[idx].max()), PAD_MULTIPLE),
                             self.max_seq_length)
            pieces = [tokens[i][:seq_length - 2] for i in idx]
            lengths = np.array([len(p) for p in pieces], np.int64)
            values = np.concatenate(pieces) if lengths.sum() else np.zeros([0], np.int32)
            # One "word" per text holding all its wordpieces: [B, 1, (pieces)].
            segment = tf.RaggedTensor.from_nested_row_lengths(
                tf.constant(values, tf.int32),
                [tf.ones([len(idx)], tf.int64), tf.constant(lengths)], validate=False)
            inputs = self._pack([segment], seq_length=seq_length)
            outputs = self.encoder_layer(inputs)
            emb = outputs[output_key].numpy() if isinstance(outputs, dict) else outputs.numpy()
            if emb.ndim != 2:
                raise ValueError(f"output {output_key!r} has shape {emb.shape}, expected [B, H]")
            if result is None:
                result = np.empty((n, emb.shape[1]), np.float32)
            result[idx] = emb
            if log_every and ((b + 1) % log_every == 0 or b + 1 == num_batches) and num_batches > 1:
                done = min((b + 1) * batch_size, n)
                elapsed = time.time() - start_time
                logger.info("encoded %d/%d texts (batch %d/%d, seq_length %d, %.1f texts/s)",
                            done, n, b + 1, num_batches, seq_length, done / max(elapsed, 1e-9))
        return result


@functools.lru_cache(maxsize=4)
def _cached_encoder(preprocess_handle: str, encoder_handle: str, precision: str = "float32") -> TextEncoder:
    return TextEncoder(preprocess_handle, encoder_handle, precision)


def encode_texts(preprocess_handle: str, encoder_handle: str, texts: Sequence[str],
                 batch_size: int = 128, output_key: str = "sentence_embedding",
                 log_every: int = 50, precision: str = "float32") -> np.ndarray:
    """Embeds `texts` -> float32 [N, H] in input order (dynamic per-batch padding).

    Handles are anything `hub.KerasLayer` accepts (local SavedModel path or tfhub URL); loaded
    layers are cached per (preprocess_handle, encoder_handle, precision). `output_key` selects a [B, H]
    encoder output ("sentence_embedding", "pooled_output" or "default"). Progress is logged
    (logger `encoder.text_embedding`, INFO) every `log_every` batches. `precision`: see `TextEncoder`.
    """
    return _cached_encoder(preprocess_handle, encoder_handle, precision).encode(
        texts, batch_size=batch_size, output_key=output_key, log_every=log_every)
