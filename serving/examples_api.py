"""Classify and Regress: TF Serving's tf.Example APIs, on a servable's signatures.

    result = classify(servable, request)      # tensorflow.serving.ClassificationResult
    result = regress(servable, request)       # tensorflow.serving.RegressionResult

As tensorflow_serving/servables/tensorflow/{classifier,regressor}.cc with the default
``--enable_signature_method_name_check=false``: the signature (default ``serving_default``) must take one
string input named ``inputs`` (serialized tf.Examples) and return ``classes`` and/or ``scores``
([batch, classes]) for Classify, or ``outputs`` ([batch] or [batch, 1] float) for Regress. The examples come
from ``input.example_list``, or ``input.example_list_with_context`` with the context merged into each
example (tensorflow_serving/servables/tensorflow/util.cc InputToSerializedExampleTensor). Anything else is
INVALID_ARGUMENT with TF Serving's message; the retrieval model has no such signature, so both APIs answer
that way for it.
"""
from __future__ import annotations

import numpy as np
from tensorflow.core.example import example_pb2

from serving.errors import invalid
from serving.servable import DEFAULT_SIGNATURE, Servable, Signature


def serialized_examples(model_input) -> np.ndarray:
    """tensorflow.serving.Input -> [N] object array of serialized tf.Examples."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = model_input.example_list_with_context.context
        examples = []
        for e in model_input.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(e)
            examples.append(merged.SerializeToString())
    else:
        examples = []
    if not examples:
        raise invalid("Input is empty.")
    return np.array(examples, dtype=object)


def _signature(servable: Servable, name: str, inputs: str, outputs: set[str], api: str) -> Signature:
    sig = servable.signatures.get(name or DEFAULT_SIGNATURE)
    if sig is None:
        raise invalid(f"No signature was found with the name: {name or DEFAULT_SIGNATURE}")
    if len(sig.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if inputs not in sig.inputs:
        raise invalid(f"No {api} inputs found in SignatureDef: signature '{sig.name}' takes "
                      f"{sig.describe_inputs()}; {api} needs one string input named '{inputs}'")
    if not outputs & set(sig.outputs):
        raise invalid(f"Expected {api} signature outputs to contain {' or '.join(sorted(outputs))}; signature "
                      f"'{sig.name}' returns {sorted(sig.outputs)}")
    return sig


def classify(servable: Servable, request, deadline: float | None = None):
    """ClassificationRequest -> (signature name, ClassificationResult)."""
    from tensorflow_serving.apis import classification_pb2

    sig = _signature(servable, request.model_spec.signature_name, "inputs", {"classes", "scores"}, "classification")
    if len(sig.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    examples = serialized_examples(request.input)
    wanted = sorted({"classes", "scores"} & set(sig.outputs))
    out = servable.run(sig, servable.bind_inputs(sig, {"inputs": examples}), wanted, deadline)
    n = len(examples)
    classes, scores = out.get("classes"), out.get("scores")
    for name, value, dtype in (("classes", classes, object), ("scores", scores, np.float32)):
        if value is None:
            continue
        if value.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {list(value.shape)}")
        if value.dtype != dtype:
            raise invalid(f"Expected {name} Tensor of {'DT_STRING' if dtype is object else 'DT_FLOAT'}. "
                          f"Got: {value.dtype}")
        if value.shape[0] != n:
            raise invalid(f"Expected {name} output batch size of {n}. Got: {value.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. "
                      f"{scores.shape[1]}")
    width = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(n):
        row = result.classifications.add()
        for c in range(width):
            cl = row.classes.add()
            if classes is not None:
                cl.label = classes[i, c].decode("utf-8", "replace")
            if scores is not None:
                cl.score = float(scores[i, c])
    return sig.name, result


def regress(servable: Servable, request, deadline: float | None = None):
    """RegressionRequest -> (signature name, RegressionResult)."""
    from tensorflow_serving.apis import regression_pb2

    sig = _signature(servable, request.model_spec.signature_name, "inputs", {"outputs"}, "regression")
    if len(sig.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    examples = serialized_examples(request.input)
    value = servable.run(sig, servable.bind_inputs(sig, {"inputs": examples}), ["outputs"], deadline)["outputs"]
    if value.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {value.dtype}")
    if not (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)):
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                      f"{list(value.shape)}")
    if value.shape[0] != len(examples):
        raise invalid(f"Input batch size did not match output batch size: {len(examples)} vs. {value.shape[0]}")
    result = regression_pb2.RegressionResult()
    for v in value.reshape(-1):
        result.regressions.add().value = float(v)
    return sig.name, result
