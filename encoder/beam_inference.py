"""The TF Hub BERT item-text encoder as a Beam RunInference model, and its fingerprint.

Beam's `RunInference` batches the elements, loads the model once per worker process and reports
inference metrics; this handler plugs the project's dynamic-padding encoder (`TextEncoder`) into it::

    handler = KeyedModelHandler(TextEncoderModelHandler("models/minilm/preprocess", "models/minilm/encoder"))
    vectors = keyed_texts | RunInference(handler)      # (key, text) -> (key, PredictionResult(text, [H]))

`encoder_fingerprint` names the exact encoder (files and output), so cached embeddings are reused only
when the same encoder would produce them.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable, Optional, Sequence

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from encoder.precision import validate_precision


class TextEncoderModelHandler(ModelHandler[str, PredictionResult, Any]):
    """RunInference handler: item texts -> float32 [H] sentence embeddings (frozen encoder).

    Args:
      preprocess_handle, encoder_handle: the TF Hub BERT modules (paths or URLs).
      output_key: the encoder output to keep.
      batch_size: texts per encoder call inside one RunInference batch.
      max_batch_size: texts per RunInference batch (texts of a batch are sorted by length).
      precision: "float32" or "bfloat16" (CPU bfloat16 matmuls, `encoder/precision.py`).
    """

    def __init__(self, preprocess_handle: str, encoder_handle: str, output_key: str = "sentence_embedding",
                 batch_size: int = 128, max_batch_size: int = 2048, precision: str = "float32"):
        super().__init__()
        self._preprocess, self._encoder, self._output_key = preprocess_handle, encoder_handle, output_key
        self._batch_size, self._max_batch_size = batch_size, max_batch_size
        self._precision = validate_precision(precision)

    def load_model(self):
        from encoder.text_embedding import TextEncoder

        return TextEncoder(self._preprocess, self._encoder, self._precision)

    def run_inference(self, batch: Sequence[str], model, inference_args: Optional[dict] = None
                      ) -> Iterable[PredictionResult]:
        vectors = model.encode(list(batch), batch_size=self._batch_size, output_key=self._output_key, log_every=0)
        return [PredictionResult(text, vector) for text, vector in zip(batch, vectors)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self._max_batch_size}

    def get_metrics_namespace(self) -> str:
        return "TextEncoder"


def _hash_tree(path: str, digest) -> None:
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode("utf-8") + b"\0")
            with open(full, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)


def encoder_fingerprint(preprocess_handle: str, encoder_handle: str, output_key: str,
                        precision: str = "float32") -> str:
    """sha256 of the encoder's files (local handles) or handles (URLs), the output key and a precision other
    than float32 (so float32 fingerprints are the ones written before the precision existed)."""
    digest = hashlib.sha256(output_key.encode("utf-8") + b"\0")
    if validate_precision(precision) != "float32":
        digest.update(precision.encode("utf-8") + b"\0")
    for handle in (preprocess_handle, encoder_handle):
        if os.path.isdir(handle):
            _hash_tree(handle, digest)
        else:
            digest.update(handle.encode("utf-8"))
        digest.update(b"\1")
    return digest.hexdigest()


def text_key(text: str) -> bytes:
    """The cache key of one item text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).digest()
