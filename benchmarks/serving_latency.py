"""Serving latency: numpy brute-force floor vs. the SavedModel in-process vs. gRPC through the local server.

    python -m benchmarks.serving_latency [--model_dir <version dir or base path>] [--requests 2000]
                                         [--out benchmarks/results/serving.json]

Without --model_dir a synthetic model (10,000 items, d=64, serving.synthetic_model) is built in a temp dir.
Measures: numpy matmul + argpartition top-k (batch 1, k=10/100); in-process, the serving_default signature
called the public way (ConcreteFunction(**kwargs)) and the way the server calls it (pre-converted tensors,
flat call: serving.model_manager.Signature.call), an identity function with the same inputs (TF's per-call
overhead) and matmul + top_k alone over a same-size table (the top-k op cost); gRPC Predict p50/p99 at batch 1
through `serving.server`, REST, and throughput with 1/8/32 client threads. TF runs with intra/inter-op
parallelism 1, as the server does by default. Records the load average before and after (timings on a
shared box are noisy). Prints a Markdown table (ratios vs. the numpy floor) and writes JSON.
Targets: gRPC p50 <= 2 ms, p99 <= 5 ms, >= 1000 req/s concurrent; in-model top-k <= 2x numpy floor.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402


def _pcts(lat_s):
    a = np.asarray(lat_s) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "n": int(a.size)}


def _time_calls(fn, n, warm=20):
    for _ in range(warm):
        fn()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return lat


def _version_dir(path: str) -> tuple[str, str]:
    """(base path, version dir) from either."""
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return os.path.dirname(path), path
    versions = sorted(int(d) for d in os.listdir(path) if d.isdigit())
    return path, os.path.join(path, str(versions[-1]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir")
    p.add_argument("--model_name", default="tower_recs")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--num_items", type=int, default=10_000, help="catalogue size (numpy floor; synthetic model)")
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32])
    p.add_argument("--throughput_requests", type=int, default=1500, help="requests per concurrency level")
    p.add_argument("--server_args", default="", help="extra serving.server flags, e.g. '--enable_batching false'")
    p.add_argument("--out", default="benchmarks/results/serving.json")
    a = p.parse_args(argv)
    load_before = os.getloadavg()

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import tensorflow_text  # noqa: F401
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from serving.client import RecommenderClient
    from serving.servable import bind_call
    from serving.testing import ServerProcess
    from serving.synthetic_model import build_synthetic_model

    tmp = None
    if a.model_dir:
        base, vdir = _version_dir(a.model_dir)
    else:
        tmp = tempfile.mkdtemp(prefix="serving_bench_")
        base = os.path.join(tmp, a.model_name)
        vdir = build_synthetic_model(base, 1, num_items=a.num_items, num_users=1_000, dim=64, seed=0)

    # A temp dir path means nothing to a reader of the JSON: record what the model was instead.
    results: dict = {"model_dir": a.model_dir or f"synthetic ({a.num_items} items, d=64, temporary dir)", "requests": a.requests, "host": platform.node(),
                     "cpus": os.cpu_count(), "rows": {}}
    rows = results["rows"]

    # ---- in-process signature (and the catalogue it holds, for the numpy floor)
    loaded = tf.saved_model.load(vdir)
    sig = loaded.signatures["serving_default"]
    q = loaded.signatures["query_embedding"](user_id=tf.constant(["user_1"]), history=tf.zeros([1, 0], tf.string))
    d = int(q["embedding"].shape[-1])
    # The floor does the same work on a table of the catalogue's size (values do not matter for timing).
    catalogue = loaded.index.item_vectors                     # trainer.retrieval_index.BruteForceIndex
    n_items = int(catalogue.shape[0]) if catalogue is not None else a.num_items
    table = np.random.default_rng(0).normal(size=(n_items, d)).astype(np.float32)
    results.update(num_items=n_items, dim=d)
    query = q["embedding"].numpy()

    for k in (10, 100):
        def np_topk(k=k):
            s = query @ table.T
            idx = np.argpartition(-s[0], k)[:k]
            return idx[np.argsort(-s[0][idx])]
        rows[f"numpy floor, k={k}"] = _pcts(_time_calls(np_topk, a.requests))

    for k in (10, 100):
        args = dict(user_id=tf.constant(["user_1"]), history=tf.constant([["", "item_1"]]),
                    exclude=tf.constant([[""]]), k=tf.constant([k], tf.int32))
        rows[f"in-process signature, k={k}: ConcreteFunction(**kwargs)"] = _pcts(
            _time_calls(lambda: sig(**args), a.requests))
        _, specs = sig.structured_input_signature
        bound = bind_call(sig, dict(specs), dict(sig.structured_outputs))
        rows[f"in-process signature, k={k}: server's bound call"] = _pcts(
            _time_calls(lambda: {n: t.numpy() for n, t in bound(args).items()}, a.requests))

    # The split: TF's per-call overhead (identity function, same inputs) and the top-k ops alone.
    S = tf.TensorSpec

    @tf.function(input_signature=[S([None], tf.string), S([None, None], tf.string), S([None, None], tf.string),
                                  S([None], tf.int32)])
    def identity(user_id, history, exclude, k):
        return {"item_ids": tf.reshape(user_id, [-1, 1]), "scores": tf.fill([tf.shape(user_id)[0], 1], 0.0)}
    ident = bind_call(identity.get_concrete_function(),
                      {"user_id": S([None], tf.string), "history": S([None, None], tf.string),
                       "exclude": S([None, None], tf.string), "k": S([None], tf.int32)},
                      {"item_ids": S([None, None], tf.string), "scores": S([None, None], tf.float32)})
    rows["identity function, same inputs (TF call overhead)"] = _pcts(
        _time_calls(lambda: {n: t.numpy() for n, t in ident(args).items()}, a.requests))
    table_t = tf.constant(table)
    query_t = tf.constant(query)

    @tf.function(input_signature=[S([None, d], tf.float32), S([], tf.int32)])
    def matmul_top_k(q, k):
        top = tf.math.top_k(tf.matmul(q, table_t, transpose_b=True), k=k)
        return {"indices": top.indices, "values": top.values}
    core = bind_call(matmul_top_k.get_concrete_function(), {"q": S([None, d]), "k": S([], tf.int32)},
                     {"indices": S([None, None], tf.int32), "values": S([None, None], tf.float32)})
    for k in (10, 100):
        kk = tf.constant(k)
        rows[f"matmul + tf.math.top_k only, k={k}"] = _pcts(
            _time_calls(lambda: {n: t.numpy() for n, t in core({"q": query_t, "k": kk}).items()}, a.requests))
    del loaded, sig

    # ---- through the server
    log_path = os.path.join(tmp or tempfile.gettempdir(), "serving_bench_server.log")
    with ServerProcess(base, a.model_name, log_path=log_path,
                       extra_args=["--enable_model_warmup", "false", *a.server_args.split()]) as srv:
        client = RecommenderClient(srv.grpc_target, a.model_name, timeout_s=10)
        rows["gRPC Predict batch 1, k=10 (client)"] = _pcts(
            _time_calls(lambda: client.recommend("user_1", 10, ["item_1"]), a.requests))
        rest = RecommenderClient(model_name=a.model_name, rest_url=srv.rest_url, timeout_s=10)
        rows["REST predict batch 1, k=10"] = _pcts(
            _time_calls(lambda: rest.recommend("user_1", 10, ["item_1"]), max(200, a.requests // 4)))

        # throughput: N threads, each its own channel, a bounded number of requests in all
        thr = {}
        for c in a.concurrency:
            clients = [RecommenderClient(srv.grpc_target, a.model_name, timeout_s=30) for _ in range(c)]
            for cl in clients:
                cl.recommend("user_1", 10)
            per = max(1, a.throughput_requests // c)
            lat, errors, lock = [], [], threading.Lock()

            def work(cl):
                mine = []
                for i in range(per):
                    t = time.perf_counter()
                    try:
                        cl.recommend(f"user_{i % 1000}", 10, ["item_1"])
                    except Exception as e:  # noqa: BLE001
                        errors.append(str(e))
                    mine.append(time.perf_counter() - t)
                with lock:
                    lat.extend(mine)
            threads = [threading.Thread(target=work, args=(cl,)) for cl in clients]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            thr[c] = dict(_pcts(lat), req_per_s=len(lat) / wall, errors=len(errors))
            for cl in clients:
                cl.close()
        results["throughput"] = thr
        client.close()

    floor = rows["numpy floor, k=10"]["p50_ms"]
    for name, r in rows.items():
        r["p50_vs_floor"] = r["p50_ms"] / (rows["numpy floor, k=100"]["p50_ms"] if "k=100" in name else floor)
    g = rows["gRPC Predict batch 1, k=10 (client)"]
    best_rps = max(t["req_per_s"] for t in thr.values())
    results["targets"] = {
        "grpc_p50_le_2ms": g["p50_ms"] <= 2.0, "grpc_p99_le_5ms": g["p99_ms"] <= 5.0,
        "ge_1000_req_per_s": best_rps >= 1000,
        "in_model_le_2x_floor": rows["in-process signature, k=10: server's bound call"]["p50_vs_floor"] <= 2.0,
    }
    results["load_avg_before"] = load_before
    results["load_avg_after"] = os.getloadavg()
    results["server_args"] = a.server_args

    lines = ["| measurement | p50 ms | p99 ms | mean ms | p50 / numpy floor |", "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} | "
                     f"{r['p50_vs_floor']:.1f}x |")
    lines += ["", "| gRPC clients (threads) | req/s | p50 ms | p99 ms | errors |", "|---:|---:|---:|---:|---:|"]
    for c, t in thr.items():
        lines.append(f"| {c} | {t['req_per_s']:.0f} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | {t['errors']} |")
    lines += ["", f"{n_items} items, d={d}, {os.cpu_count()} CPUs, server args: '{a.server_args or 'defaults'}', "
              f"load avg (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, after "
              f"{'/'.join(f'{x:.2f}' for x in results['load_avg_after'])}; targets: "
              + ", ".join(f"{k}={'PASS' if v else 'MISS'}" for k, v in results["targets"].items())]
    table = "\n".join(lines)
    results["markdown"] = table
    print(table)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
