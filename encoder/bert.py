"""A Keras-2 (tf_keras) BERT encoder that loads Hugging Face-layout numpy weights.

The layer reproduces `transformers.BertModel` (post-LayerNorm BERT, exact erf GELU, absolute
position embeddings, tanh pooler on [CLS]) so that weights read with
`safetensors.numpy.load_file` from a BERT checkpoint (e.g. all-MiniLM-L6-v2) can be used as is.

Hugging Face stores Linear weights as `[out, in]`; Keras Dense kernels are `[in, out]`, so they
are transposed on load.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes of a BERT model, named as in a Hugging Face `config.json`; defaults: all-MiniLM-L6-v2."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02

    @classmethod
    def from_json_file(cls, path: str) -> "BertConfig":
        """The config of a Hugging Face `config.json` (extra keys ignored).

        Raises:
          ValueError: the model uses an activation or position embedding this encoder does not implement.
        """
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        act = raw.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"Only exact (erf) GELU is implemented, config has hidden_act={act!r}")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("Only absolute position embeddings are implemented")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads


def _dense(units: int, cfg: BertConfig, name: str, activation=None) -> keras.layers.Dense:
    return keras.layers.Dense(
        units, activation=activation, name=name,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=cfg.initializer_range))


def _layer_norm(cfg: BertConfig, name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(axis=-1, epsilon=cfg.layer_norm_eps, name=name)


def exact_gelu(x: tf.Tensor) -> tf.Tensor:
    """GELU with the erf, as Hugging Face's "gelu" (not the tanh approximation)."""
    return tf.nn.gelu(x, approximate=False)


class TransformerLayer(keras.layers.Layer):
    """One post-LN BERT block: self-attention + residual + LN, FFN + residual + LN."""

    def __init__(self, cfg: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        h = cfg.hidden_size
        self.query = _dense(h, cfg, "query")
        self.key = _dense(h, cfg, "key")
        self.value = _dense(h, cfg, "value")
        self.attention_output = _dense(h, cfg, "attention_output")
        self.attention_layer_norm = _layer_norm(cfg, "attention_layer_norm")
        self.intermediate = _dense(cfg.intermediate_size, cfg, "intermediate", activation=exact_gelu)
        self.output_dense = _dense(h, cfg, "output")
        self.output_layer_norm = _layer_norm(cfg, "output_layer_norm")
        self.attention_dropout = keras.layers.Dropout(cfg.attention_probs_dropout_prob)
        self.hidden_dropout = keras.layers.Dropout(cfg.hidden_dropout_prob)

    def build(self, input_shape):
        """Creates the block's weights for hidden states [B, S, hidden_size]."""
        h = self.cfg.hidden_size
        self.query.build([None, None, h])
        self.key.build([None, None, h])
        self.value.build([None, None, h])
        self.attention_output.build([None, None, h])
        self.attention_layer_norm.build([None, None, h])
        self.intermediate.build([None, None, h])
        self.output_dense.build([None, None, self.cfg.intermediate_size])
        self.output_layer_norm.build([None, None, h])
        super().build(input_shape)

    def _split_heads(self, x: tf.Tensor) -> tf.Tensor:
        b, s = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [b, s, self.cfg.num_attention_heads, self.cfg.head_size])
        return tf.transpose(x, [0, 2, 1, 3])  # [B, heads, S, head_size]

    def call(self, hidden: tf.Tensor, attention_bias: tf.Tensor, training=False) -> tf.Tensor:
        """Hidden states [B, S, H] and an additive attention bias [B, 1, 1, S] -> new hidden states [B, S, H]."""
        b, s = tf.shape(hidden)[0], tf.shape(hidden)[1]
        q = self._split_heads(self.query(hidden))
        k = self._split_heads(self.key(hidden))
        v = self._split_heads(self.value(hidden))
        scores = tf.matmul(q, k, transpose_b=True) * (1.0 / float(np.sqrt(self.cfg.head_size)))
        scores = scores + attention_bias  # [B, 1, 1, S] additive mask
        probs = tf.nn.softmax(scores, axis=-1)
        probs = self.attention_dropout(probs, training=training)
        context = tf.matmul(probs, v)  # [B, heads, S, head_size]
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [b, s, self.cfg.hidden_size])
        attn = self.hidden_dropout(self.attention_output(context), training=training)
        hidden = self.attention_layer_norm(hidden + attn)
        ffn = self.output_dense(self.intermediate(hidden))
        ffn = self.hidden_dropout(ffn, training=training)
        return self.output_layer_norm(hidden + ffn)


class BertEncoder(keras.layers.Layer):
    """BERT encoder taking the TF Hub input dict and returning the TF Hub output dict.

    Inputs: `input_word_ids`, `input_mask`, `input_type_ids` (int32 [B, S]).
    Outputs: `sequence_output` [B, S, H], `pooled_output` [B, H] (tanh dense on [CLS]),
    `default` (= pooled_output), `sentence_embedding` [B, H] (mask-weighted mean of
    sequence_output, the sentence-transformers pooling; not L2-normalised),
    `encoder_outputs` (list of per-layer [B, S, H]).
    """

    def __init__(self, cfg: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.embedding_layer_norm = _layer_norm(cfg, "embeddings_layer_norm")
        self.embedding_dropout = keras.layers.Dropout(cfg.hidden_dropout_prob)
        self.transformer_layers = [TransformerLayer(cfg, name=f"transformer_layer_{i}")
                                   for i in range(cfg.num_hidden_layers)]
        self.pooler = _dense(cfg.hidden_size, cfg, "pooler_transform", activation="tanh")

    def build(self, input_shape=None):
        """Creates every weight up front, so `load_hf_weights` can assign them before the first call."""
        cfg = self.cfg

        def init():
            return keras.initializers.TruncatedNormal(stddev=cfg.initializer_range)

        self.word_embeddings = self.add_weight(
            "word_embeddings", shape=[cfg.vocab_size, cfg.hidden_size], initializer=init())
        self.position_embeddings = self.add_weight(
            "position_embeddings", shape=[cfg.max_position_embeddings, cfg.hidden_size],
            initializer=init())
        self.type_embeddings = self.add_weight(
            "type_embeddings", shape=[cfg.type_vocab_size, cfg.hidden_size], initializer=init())
        self.embedding_layer_norm.build([None, None, cfg.hidden_size])
        for layer in self.transformer_layers:
            layer.build([None, None, cfg.hidden_size])
        self.pooler.build([None, cfg.hidden_size])
        super().build(input_shape)

    def call(self, inputs: Mapping[str, tf.Tensor], training=False) -> Dict[str, tf.Tensor]:
        """The TF Hub BERT call: {input_word_ids, input_mask, input_type_ids} int [B, S] -> the output dict
        (pooled_output / default [B, H], sequence_output [B, S, H], encoder_outputs, sentence_embedding)."""
        word_ids = tf.cast(inputs["input_word_ids"], tf.int32)
        mask = tf.cast(inputs["input_mask"], tf.int32)
        type_ids = tf.cast(inputs["input_type_ids"], tf.int32)
        seq_len = tf.shape(word_ids)[1]

        emb = tf.gather(self.word_embeddings, word_ids)
        emb += tf.gather(self.type_embeddings, type_ids)
        emb += tf.expand_dims(self.position_embeddings[:seq_len], 0)
        hidden = self.embedding_dropout(self.embedding_layer_norm(emb), training=training)

        float_mask = tf.cast(mask, hidden.dtype)  # [B, S]
        attention_bias = (1.0 - float_mask[:, tf.newaxis, tf.newaxis, :]) * -1e9

        encoder_outputs = []
        for layer in self.transformer_layers:
            hidden = layer(hidden, attention_bias, training=training)
            encoder_outputs.append(hidden)

        pooled = self.pooler(hidden[:, 0, :])
        weights = float_mask[:, :, tf.newaxis]
        mean = tf.reduce_sum(hidden * weights, axis=1) / tf.maximum(
            tf.reduce_sum(weights, axis=1), 1e-9)
        return {
            "sequence_output": hidden,
            "pooled_output": pooled,
            "default": pooled,
            "sentence_embedding": mean,
            "encoder_outputs": encoder_outputs,
        }

    # ------------------------------------------------------------------ weights
    def load_hf_weights(self, weights: Mapping[str, np.ndarray], prefix: Optional[str] = None) -> None:
        """Assigns a Hugging Face `BertModel` state dict (numpy arrays) to this layer."""
        if not self.built:
            self.build()
        if prefix is None:
            prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        used = set()

        def get(name: str) -> np.ndarray:
            key = prefix + name
            if key not in weights:
                raise KeyError(f"Missing weight {key!r}")
            used.add(key)
            return np.asarray(weights[key], dtype=np.float32)

        def assign(var: tf.Variable, value: np.ndarray, name: str) -> None:
            if tuple(var.shape) != value.shape:
                raise ValueError(f"{name}: expected shape {tuple(var.shape)}, got {value.shape}")
            var.assign(value)

        def load_dense(dense: keras.layers.Dense, name: str) -> None:
            assign(dense.kernel, get(name + ".weight").T, name)  # [out, in] -> [in, out]
            assign(dense.bias, get(name + ".bias"), name)

        def load_ln(ln: keras.layers.LayerNormalization, name: str) -> None:
            assign(ln.gamma, get(name + ".weight"), name)
            assign(ln.beta, get(name + ".bias"), name)

        assign(self.word_embeddings, get("embeddings.word_embeddings.weight"), "word")
        assign(self.position_embeddings, get("embeddings.position_embeddings.weight"), "position")
        assign(self.type_embeddings, get("embeddings.token_type_embeddings.weight"), "type")
        load_ln(self.embedding_layer_norm, "embeddings.LayerNorm")
        for i, layer in enumerate(self.transformer_layers):
            p = f"encoder.layer.{i}."
            load_dense(layer.query, p + "attention.self.query")
            load_dense(layer.key, p + "attention.self.key")
            load_dense(layer.value, p + "attention.self.value")
            load_dense(layer.attention_output, p + "attention.output.dense")
            load_ln(layer.attention_layer_norm, p + "attention.output.LayerNorm")
            load_dense(layer.intermediate, p + "intermediate.dense")
            load_dense(layer.output_dense, p + "output.dense")
            load_ln(layer.output_layer_norm, p + "output.LayerNorm")
        load_dense(self.pooler, "pooler.dense")
        unused = [k for k in weights if k.startswith(prefix) and k not in used
                  and not k.endswith("position_ids")]
        if unused:
            raise ValueError(f"Unused weights (architecture mismatch?): {sorted(unused)[:10]}")


def random_hf_weights(cfg: BertConfig, seed: int = 0) -> Dict[str, np.ndarray]:
    """Seeded random weights in the Hugging Face BertModel layout (for tiny test models)."""
    rng = np.random.default_rng(seed)
    h, f = cfg.hidden_size, cfg.intermediate_size

    def normal(*shape):
        return (rng.standard_normal(shape) * cfg.initializer_range).astype(np.float32)

    def ln(name, w):
        w[name + ".weight"] = (1.0 + 0.1 * rng.standard_normal(h)).astype(np.float32)
        w[name + ".bias"] = normal(h)

    def dense(name, w, out_dim, in_dim):
        w[name + ".weight"] = normal(out_dim, in_dim)
        w[name + ".bias"] = normal(out_dim)

    w: Dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": normal(cfg.vocab_size, h),
        "embeddings.position_embeddings.weight": normal(cfg.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": normal(cfg.type_vocab_size, h),
    }
    ln("embeddings.LayerNorm", w)
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            dense(p + "attention.self." + n, w, h, h)
        dense(p + "attention.output.dense", w, h, h)
        ln(p + "attention.output.LayerNorm", w)
        dense(p + "intermediate.dense", w, f, h)
        dense(p + "output.dense", w, h, f)
        ln(p + "output.LayerNorm", w)
    dense("pooler.dense", w, h, h)
    return w
