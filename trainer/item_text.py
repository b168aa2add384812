"""Item text: how a catalogue row becomes one string, and the TF Hub BERT that embeds it.

    >>> item_text(tf.constant(["Heat (1995)"]), tf.constant(["Action|Crime"]), tf.constant([""])).numpy()
    array([b'Heat (1995). Action, Crime'], dtype=object)

The same TF function runs when the trainer embeds the catalogue and inside the
exported `candidate_embedding` signature, so a brand-new item is embedded from
its text exactly like the catalogue items were.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

from schema import contract


def item_text(title: tf.Tensor, categories: tf.Tensor, description: tf.Tensor) -> tf.Tensor:
    """Joins title, '|'-separated categories and description into one cleaned string per item.

    Args:
      title, categories, description: string tensors [B] (categories '|'-separated, may be empty).

    Returns:
      A string tensor [B]: "Title. Category, Category. Description", empty parts left out.
    """
    categories = tf.strings.regex_replace(categories, r"\(no genres listed\)", "")
    categories = tf.strings.regex_replace(categories, r"\s*\|\s*", ", ")
    parts = [tf.strings.strip(title), tf.strings.strip(categories), tf.strings.strip(description)]
    text = tf.strings.reduce_join(tf.stack(parts, axis=1), axis=1, separator=". ")
    # Drop the separators left by empty parts and collapse whitespace.
    text = tf.strings.regex_replace(text, r"(\. )+$", "")
    text = tf.strings.regex_replace(text, r"(\. ){2,}", ". ")
    return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


class ItemTextEncoder(tf.keras.layers.Layer):
    """TF Hub BERT preprocessor + encoder: item texts [B] -> sentence embeddings [B, H].

        encoder = ItemTextEncoder("models/minilm/preprocess", "models/minilm/encoder", seq_length=64)
        vectors = encoder(tf.constant(["The Galaxy Voyage. Sci-Fi"]))
    """

    def __init__(self, preprocess_handle: str, encoder_handle: str, seq_length: int = 64,
                 output_key: str = "sentence_embedding", trainable: bool = False, **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        self.seq_length = seq_length
        preprocessor = hub.load(preprocess_handle)
        self.tokenize = hub.KerasLayer(preprocessor.tokenize, name="tokenize")
        self.pack = hub.KerasLayer(preprocessor.bert_pack_inputs, arguments=dict(seq_length=seq_length),
                                   name="bert_pack_inputs")
        self.encoder = hub.KerasLayer(encoder_handle, trainable=trainable, output_key=output_key,
                                      name="bert_encoder")

    def call(self, texts: tf.Tensor) -> tf.Tensor:
        """Item texts [B] (string) -> sentence embeddings [B, H] (float32)."""
        return self.encoder(self.pack([self.tokenize(texts)]))


def embed_catalogue(preprocess_handle: str, encoder_handle: str, texts: Sequence[str],
                    output_key: str = "sentence_embedding", batch_size: int = 128,
                    precision: str = "float32") -> np.ndarray:
    """Embeds each text once with the frozen encoder (dynamic padding per batch).

    Args:
      preprocess_handle, encoder_handle: the TF Hub BERT modules (paths or URLs).
      texts: N item texts.
      output_key: the encoder output to keep.
      batch_size: texts per encoder call.
      precision: "float32" or "bfloat16" (`ModelConfig.catalogue_embedding_precision`).

    Returns:
      float32 [N, H], in the order of `texts`.
    """
    from encoder.text_embedding import encode_texts  # the encoder package owns the fast batched path

    return encode_texts(preprocess_handle, encoder_handle, list(texts), batch_size=batch_size,
                        output_key=output_key, precision=precision)


def catalogue_texts(catalogue: dict[str, Sequence]) -> list[str]:
    """The `item_text` of every catalogue row.

    Args:
      catalogue: `{column: values}` with the contract's title, categories and description columns
        (str or bytes), e.g. `data.item_csv.read_items(...)` or the trainer's ExampleGen reader.

    Returns:
      One text per row, in row order.
    """
    texts = item_text(tf.constant(catalogue[contract.TITLE]), tf.constant(catalogue[contract.CATEGORIES]),
                      tf.constant(catalogue[contract.DESCRIPTION]))
    return [t.decode("utf-8") for t in texts.numpy()]
