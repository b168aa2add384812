"""Tests of the TF Hub-format BERT export (encoder/), against golden all-MiniLM-L6-v2 outputs."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text as text

from encoder import export
from encoder.text_embedding import encode_texts, preprocessor_seq_length
# The allow-list and the op walk are the ones the pipeline's ServingCheck gate uses.
from pipeline.components.serving_ops import TF_TEXT_2_12_OPS, graph_op_names as _graph_ops

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "fixtures", "minilm_golden.json")
ATOL = 1e-4
MIN_COSINE = 0.99999


@pytest.fixture(scope="module")
def golden():
    with open(GOLDEN_PATH, encoding="utf-8") as f:
        data = json.load(f)
    assert "_provenance" in data
    return data["cases"]


@pytest.fixture(scope="module")
def tiny_modules(tmp_path_factory):
    return export.build_hub_modules(str(tmp_path_factory.mktemp("tiny")), tiny=True)


@pytest.fixture(scope="module")
def minilm_modules(tmp_path_factory):
    return export.build_hub_modules(str(tmp_path_factory.mktemp("minilm")))


@pytest.fixture(scope="module")
def minilm_loaded(minilm_modules):
    pre, enc = minilm_modules
    return tf.saved_model.load(pre), tf.saved_model.load(enc)


def _assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    max_abs = np.abs(actual - expected).max()
    cosine = actual @ expected / (np.linalg.norm(actual) * np.linalg.norm(expected))
    assert max_abs <= ATOL and cosine >= MIN_COSINE, f"{what}: max abs {max_abs}, cos {cosine}"


def test_token_ids_match_golden(tiny_modules, golden):
    # The preprocessor does not depend on the weights: tiny and full ones are the same.
    pre = tf.saved_model.load(tiny_modules[0])
    texts = [c["text"] for c in golden]
    assert "" in texts and any(len(c["input_ids"]) == 128 for c in golden)
    out = pre(tf.constant(texts))
    assert set(out) == {"input_word_ids", "input_mask", "input_type_ids"}
    for key, value in out.items():
        assert value.dtype == tf.int32 and value.shape == (len(texts), 128), key
    for i, case in enumerate(golden):
        n = len(case["input_ids"])
        ids = out["input_word_ids"][i].numpy()
        assert ids[:n].tolist() == case["input_ids"], case["text"]
        assert not ids[n:].any()
        assert out["input_mask"][i].numpy().tolist() == [1] * n + [0] * (128 - n)
        assert not out["input_type_ids"][i].numpy().any()
    tokens = pre.tokenize(tf.constant(["Toy Story"]))
    assert isinstance(tokens, tf.RaggedTensor) and tokens.dtype == tf.int32
    assert tokens.shape.rank == 3 and tokens.to_list() == [[[9121], [2466]]]
    special = {k: int(v) for k, v in pre.tokenize.get_special_tokens_dict().items()}
    assert special == {"vocab_size": 30522, "padding_id": 0, "start_of_sequence_id": 101,
                       "end_of_segment_id": 102, "mask_id": 103}


@pytest.mark.slow
def test_outputs_match_golden(minilm_loaded, golden):
    pre, enc = minilm_loaded
    out = enc(pre(tf.constant([c["text"] for c in golden])))
    assert {"pooled_output", "sequence_output", "default", "sentence_embedding"} <= set(out)
    assert out["sequence_output"].shape == (len(golden), 128, 384)
    np.testing.assert_array_equal(out["default"].numpy(), out["pooled_output"].numpy())
    for i, case in enumerate(golden):
        emb = out["sentence_embedding"][i].numpy()
        _assert_close(out["pooled_output"][i], case["pooler_output"], "pooled_output")
        _assert_close(out["sequence_output"][i, 0], case["cls_sequence_output"], "cls")
        _assert_close(emb, case["mean_pooled"], "sentence_embedding")
        _assert_close(emb / np.linalg.norm(emb), case["sentence_embedding_l2"], "l2")


def test_bert_pack_inputs_matches_tf_text(tiny_modules):
    pre = tf.saved_model.load(tiny_modules[0])
    first = pre.tokenize(tf.constant(["hello world", "a b c d e f g h", "", "x"]))
    second = pre.tokenize(tf.constant(["x y z w", "q", "r s t", ""]))
    for seq_length in (8, 13, 32):
        got = pre.bert_pack_inputs([first, second], seq_length=seq_length)
        trimmed = text.RoundRobinTrimmer(max_seq_length=seq_length - 3).trim(
            [first.merge_dims(-2, -1), second.merge_dims(-2, -1)])
        ids, types = text.combine_segments(trimmed, 101, 102)
        want_ids, want_mask = text.pad_model_inputs(ids, max_seq_length=seq_length)
        want_types, _ = text.pad_model_inputs(types, max_seq_length=seq_length)
        np.testing.assert_array_equal(got["input_word_ids"], want_ids)
        np.testing.assert_array_equal(got["input_mask"], want_mask)
        np.testing.assert_array_equal(got["input_type_ids"], want_types)
    # The hub way of choosing another seq_length at call time.
    pack = hub.KerasLayer(pre.bert_pack_inputs, arguments=dict(seq_length=16))
    tokenize = hub.KerasLayer(pre.tokenize)
    packed = pack([tokenize(tf.constant(["one text", "another"]))])
    assert packed["input_word_ids"].shape == (2, 16)


def test_hub_keras_layer(tiny_modules):
    pre_path, enc_path = tiny_modules
    strings = tf.constant(["Heat (1995) Action|Crime|Thriller", "Toy Story (1995) Comedy"])
    preprocess = hub.KerasLayer(pre_path)
    frozen = hub.KerasLayer(enc_path, trainable=False)
    out = frozen(preprocess(strings))
    assert out["sentence_embedding"].shape == (2, 32) and out["pooled_output"].shape == (2, 32)
    assert not frozen.trainable_weights

    trainable = hub.KerasLayer(enc_path, trainable=True)
    loaded = tf.saved_model.load(enc_path)
    assert len(trainable.trainable_weights) == len(loaded.trainable_variables) > 0
    inputs = preprocess(strings)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(trainable(inputs, training=True)["sentence_embedding"] ** 2)
    grads = tape.gradient(loss, trainable.trainable_weights)
    assert all(g is not None for g in grads)
    # Dropout is active only in training mode.
    eval_out = trainable(inputs, training=False)["sentence_embedding"].numpy()
    np.testing.assert_allclose(eval_out, out["sentence_embedding"].numpy(), atol=1e-6)
    train_out = trainable(inputs, training=True)["sentence_embedding"].numpy()
    assert np.abs(train_out - eval_out).max() > 1e-4

    # Keras functional model, as a TFRS item tower would use it.
    text_in = tf.keras.Input(shape=(), dtype=tf.string)
    model = tf.keras.Model(text_in, frozen(preprocess(text_in))["sentence_embedding"])
    np.testing.assert_allclose(model(strings).numpy(), eval_out, atol=1e-6)


def test_serving_signatures(tiny_modules):
    pre_path, enc_path = tiny_modules
    pre, enc = tf.saved_model.load(pre_path), tf.saved_model.load(enc_path)
    enc_sig = enc.signatures["serving_default"]
    assert sorted(enc_sig.structured_input_signature[1]) == [
        "input_mask", "input_type_ids", "input_word_ids"]
    assert sorted(enc_sig.structured_outputs) == [
        "default", "pooled_output", "sentence_embedding", "sequence_output"]
    inputs = pre.signatures["serving_default"](text=tf.constant(["a b", "c"]))
    out = enc_sig(**inputs)
    np.testing.assert_allclose(out["sentence_embedding"], enc(inputs)["sentence_embedding"],
                               atol=1e-6)


FRESH_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the TF Text ops, as TF Serving links them)
    pre_path, enc_path, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    pre, enc = tf.saved_model.load(pre_path), tf.saved_model.load(enc_path)
    inputs = pre(tf.constant(texts))
    out = enc(inputs)
    sig_in = pre.signatures["serving_default"](text=tf.constant(texts))
    sig_out = enc.signatures["serving_default"](**sig_in)
    # (importing tensorflow itself pulls in parts of Keras 3; the project's stack must not load)
    extra = sorted(m for m in sys.modules if m.split(".")[0] in (
        "tf_keras", "tensorflow_hub", "tensorflow_recommenders", "encoder"))
    print(json.dumps({
        "ids": inputs["input_word_ids"].numpy().tolist(),
        "pooled": out["pooled_output"].numpy().tolist(),
        "sig_sentence": sig_out["sentence_embedding"].numpy().tolist(),
        "extra_modules": extra}))
""")


@pytest.mark.slow
def test_fresh_process_tensorflow_and_text_only(minilm_modules, golden, tmp_path):
    cases = golden[:3]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT, *minilm_modules,
         json.dumps([c["text"] for c in cases])],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["extra_modules"] == []
    for i, case in enumerate(cases):
        n = len(case["input_ids"])
        assert result["ids"][i][:n] == case["input_ids"]
        _assert_close(result["pooled"][i], case["pooler_output"], "pooled_output")
        _assert_close(result["sig_sentence"][i], case["mean_pooled"], "sentence_embedding")


@pytest.mark.slow
def test_ops_are_in_tf_core_2_16_plus_tf_text_2_12(minilm_modules):
    assert tf.__version__.startswith("2.16.")
    core_ops = set(dir(tf.raw_ops))  # python-wrapped TF core ops only: no TF Text ops
    assert not core_ops & TF_TEXT_2_12_OPS
    allowed = core_ops | TF_TEXT_2_12_OPS
    pre_ops, enc_ops = (_graph_ops(path) for path in minilm_modules)
    assert not pre_ops - allowed, sorted(pre_ops - allowed)
    assert not enc_ops - allowed, sorted(enc_ops - allowed)
    assert {"WordpieceTokenizeWithOffsets", "RegexSplitWithOffsets"} <= pre_ops
    assert not enc_ops & TF_TEXT_2_12_OPS


@pytest.mark.slow
def test_encode_texts_dynamic_padding(tiny_modules, minilm_modules, golden):
    pre_path, enc_path = tiny_modules
    texts = ["x " * 200, "", "Heat (1995) Action|Crime|Thriller", "a", "Toy Story (1995)",
             "Amélie (2001) Comedy|Romance", "b c d e f g h i j k l m n o p q r s", "z z"]
    got = encode_texts(pre_path, enc_path, texts, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (len(texts), 32)
    pre, enc = tf.saved_model.load(pre_path), tf.saved_model.load(enc_path)
    want = enc(pre(tf.constant(texts)))
    np.testing.assert_allclose(got, want["sentence_embedding"].numpy(), atol=1e-4)
    pooled = encode_texts(pre_path, enc_path, texts[::-1], batch_size=128,
                          output_key="pooled_output")
    np.testing.assert_allclose(pooled[::-1], want["pooled_output"].numpy(), atol=1e-4)
    assert preprocessor_seq_length(pre_path) == 128
    with pytest.raises(ValueError):
        encode_texts(pre_path, enc_path, texts, output_key="sequence_output")

    minilm = encode_texts(*minilm_modules, [c["text"] for c in golden], batch_size=4)
    for row, case in zip(minilm, golden):
        _assert_close(row, case["mean_pooled"], "encode_texts sentence_embedding")


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--out" in help_text and "--tiny" in help_text and "--seq-length" in help_text


def test_bfloat16_encoding_falls_back_to_float32_with_a_warning_where_onednn_has_no_bfloat16(monkeypatch, caplog):
    import logging

    from encoder import precision

    monkeypatch.setattr(precision, "onednn_runs_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="encoder.precision"):
        assert precision.uses_bfloat16("bfloat16") is False
    assert "no bfloat16 on this CPU" in caplog.text and "encoding in float32" in caplog.text
    monkeypatch.setattr(precision, "onednn_runs_bfloat16", lambda: True)
    assert precision.uses_bfloat16("bfloat16") is True and precision.uses_bfloat16("float32") is False
    with pytest.raises(ValueError, match="precision='fp8': must be one of"):
        precision.uses_bfloat16("fp8")
