"""Standalone probe of a SavedModel as TF Serving would load it: NO project imports.

Run by ServingCheck as `python -I serving_probe.py <request.json> <result.json>` (isolated mode:
the project is not on sys.path). It imports only the standard library, `tensorflow`,
`tensorflow_text` (TF Serving links TF Text ops) and TF Serving's API protos (to read the warmup
file), and writes a JSON result:

  ops_not_allowed     graph ops outside TF core (registered before tensorflow_text is imported)
                      + the given TF Text 2.12 list
  signatures          {name: {"inputs": [...], "outputs": [...]}} as loaded
  signature_problems  missing signatures / inputs / outputs vs. the expected ones
  warmup              {"file": bool, "records": n, "errors": [...]} replaying the warmup file (request's
                      "warmup_file", serving.layout.WARMUP_FILE); a record TF Serving with --enable_batching
                      would reject (an input without a batch dimension, or unequal ones) is an error
  latency_ms          {"p50": .., "p99": .., "mean": .., "calls": n} of serving_default at batch 1
  probe_outputs       {output name: {"shape": [...], "values": [[...]]}} the latency request returned
  project_modules     project modules found in sys.modules (must be empty)
"""
import json
import os
import sys
import time


def _registered_ops(tf):
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import _pywrap_tf_session as session

    op_list = op_def_pb2.OpList()
    op_list.ParseFromString(session.TF_GetBuffer(session.TF_GetAllOpList()))
    return {op.name for op in op_list.op} | set(dir(tf.raw_ops))


def _graph_ops(model_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops, functions = set(), set()
    for meta_graph in proto.meta_graphs:
        ops |= {node.op for node in meta_graph.graph_def.node}
        for fn in meta_graph.graph_def.library.function:
            functions.add(fn.signature.name)
            ops |= {node.op for node in fn.node_def}
    return ops - functions


def _percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    index = min(len(values) - 1, max(0, int(round(q / 100.0 * (len(values) - 1)))))
    return values[index]


def main(request_path, result_path):
    """Probes the model the request JSON names and writes the result JSON (see the module docstring)."""
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    model_dir = request["model_dir"]
    result = {"model_dir": model_dir}
    t0 = time.time()
    import tensorflow as tf

    core_ops = _registered_ops(tf)
    import tensorflow_text  # noqa: F401  (TF Serving links TF Text ops)

    allowed = core_ops | set(request["tf_text_ops"])
    result["ops_not_allowed"] = sorted(_graph_ops(model_dir) - allowed)

    loaded = tf.saved_model.load(model_dir)
    result["load_seconds"] = round(time.time() - t0, 2)
    signatures = {}
    for name, fn in loaded.signatures.items():
        signatures[name] = {"inputs": sorted(fn.structured_input_signature[1]),
                            "outputs": sorted(fn.structured_outputs)}
    result["signatures"] = signatures
    problems = []
    for name, expected in sorted(request["expected_signatures"].items()):
        if name not in signatures:
            problems.append(f"signature '{name}' missing")
            continue
        for kind in ("inputs", "outputs"):
            missing = sorted(set(expected[kind]) - set(signatures[name][kind]))
            extra = sorted(set(signatures[name][kind]) - set(expected[kind]))
            if missing or extra:
                problems.append(f"signature '{name}' {kind}: missing {missing}, unexpected {extra}")
    result["signature_problems"] = problems

    # Warmup replay, as TF Serving does at load time.
    warmup = {"file": False, "records": 0, "errors": []}
    warmup_path = os.path.join(model_dir, request["warmup_file"])
    if os.path.exists(warmup_path):
        from tensorflow_serving.apis import prediction_log_pb2

        warmup["file"] = True
        for raw in tf.data.TFRecordDataset(warmup_path):
            warmup["records"] += 1
            if warmup["records"] > request["max_warmup_records"]:
                warmup["errors"].append(f"more than {request['max_warmup_records']} records (TF Serving's limit)")
                break
            log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                warmup["errors"].append(f"record {warmup['records']}: unsupported {log.WhichOneof('log_type')}")
                continue
            req = log.predict_log.request
            name = req.model_spec.signature_name or "serving_default"
            inputs = {key: tf.make_ndarray(value) for key, value in req.inputs.items()}
            unbatched = sorted(key for key, value in inputs.items() if value.ndim == 0)
            if unbatched or len({value.shape[0] for value in inputs.values()}) > 1:
                # tensorflow_serving/batching/batching_util.h ComputeTensorBatchSize
                warmup["errors"].append(f"record {warmup['records']} ({name}): TF Serving with --enable_batching "
                                        f"needs every input batched along dim 0 with one size; rank-0 inputs "
                                        f"{unbatched}, batch sizes {sorted({v.shape[0] for v in inputs.values() if v.ndim})}")
                continue
            try:
                fn = loaded.signatures[name]
                fn(**{key: tf.constant(value) for key, value in inputs.items()})
            except Exception as e:  # noqa: BLE001  (any failure is a failed warmup)
                warmup["errors"].append(f"record {warmup['records']} ({name}): {type(e).__name__}: "
                                        f"{str(e).splitlines()[0][:300] if str(e) else ''}")
    result["warmup"] = warmup

    # Latency of serving_default at batch 1.
    latency = None
    if "serving_default" in signatures and request.get("latency_calls", 0) > 0:
        fn = loaded.signatures["serving_default"]
        inputs = {key: tf.constant(value, dtype=getattr(tf, dtype))
                  for key, (value, dtype) in request["latency_inputs"].items()}
        for _ in range(3):
            fn(**inputs)
        times = []
        for _ in range(int(request["latency_calls"])):
            start = time.perf_counter()
            fn(**inputs)
            times.append((time.perf_counter() - start) * 1000.0)
        latency = {"p50": _percentile(times, 50), "p99": _percentile(times, 99),
                   "mean": sum(times) / len(times), "calls": len(times)}
        # What the probe's request returned, for ServingCheck to check (shapes, ids, order, k).
        outputs = fn(**inputs)
        result["probe_outputs"] = {
            name: {"shape": [int(d) for d in value.shape],
                   "values": [[v.decode("utf-8", "replace") if isinstance(v, bytes) else float(v) for v in row]
                              for row in value.numpy().reshape([value.shape[0], -1]).tolist()]}
            for name, value in outputs.items()}
    result["latency_ms"] = latency
    prefixes = tuple(request.get("project_packages", []))
    result["project_modules"] = sorted(m for m in sys.modules if prefixes and m.split(".")[0] in prefixes)
    result["seconds"] = round(time.time() - t0, 2)
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
