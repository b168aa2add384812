"""Serving latency and throughput of the models users run, with the settings they run them with.

    python -m benchmarks.serving_latency [--pipeline_model outputs/serving_model/tower_recs] [--requests 2000]
                                         [--out benchmarks/results/serving.json]

Models: the pipeline's pushed model (``make run`` on the sample data; when none is pushed yet the benchmark
runs the pipeline first) and a synthetic 10,000-item model (d=64, serving.synthetic_model): the catalogue size
of the serving anchors. Server settings: "production" is serving.server's defaults, which are TF Serving's
production configuration (server-side batching with serving/config/batching_parameters.txt, as
serving/Dockerfile and deploy/k8s run it); "batching off" is TF Serving's own default and "2 batch threads"
the production file with num_batch_threads 2, for comparison. Every row is labelled with its model and
settings. These are the stand-in's figures (Python): TF Serving's own are not measured here (no binary).

Per model, in-process: a numpy brute-force floor over a table of the model's catalogue size, the signature
called publicly and the way the server calls it, TF's per-call overhead (an identity function with the same
inputs) and matmul + top_k alone. Per model and settings, through the server: gRPC Predict and REST at batch 1
(p50/p99) and throughput with 1/8/32 client threads. TF runs with intra/inter-op parallelism 1 in-process, as
the server does. Load averages are recorded (the machine is shared: compare rows of one run, not runs).
Targets (docs/anchors): gRPC p50 <= 2 ms, p99 <= 5 ms, >= 1000 req/s with concurrency, in-model top-k within
2x of the numpy floor, all for the 10,000-item model in the production settings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

SETTINGS = {
    "production": [],                                          # serving.server defaults = serving/config
    "batching off": ["--enable_batching", "false"],
    "2 batch threads": ["--batching_parameters_file", None],   # production's file with num_batch_threads 2
}


def _pcts(lat_s) -> dict:
    a = np.asarray(lat_s) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "n": int(a.size)}


def _time_calls(fn, n, warm=20) -> list[float]:
    for _ in range(warm):
        fn()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return lat


def pipeline_model(base: str) -> str:
    """The pushed pipeline model's base path; runs the pipeline on the sample data when nothing is pushed."""
    from serving import layout

    if not layout.version_dirs(base):
        print(f"No pushed model under {base}: running the pipeline on the sample data (python -m "
              f"pipeline.local_runner, several minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "pipeline.local_runner"], check=True)
        if not layout.version_dirs(base):
            raise SystemExit(f"The pipeline pushed no model to {base}; see its report (python -m pipeline.report "
                             f"--latest)")
    return base


def in_process(version_dir: str, requests: int) -> tuple[dict, dict]:
    """Rows measured in this process for one model, and what the model is (items, dim, example ids)."""
    import tensorflow as tf

    from serving.servable import bind_call

    loaded = tf.saved_model.load(version_dir)
    sig = loaded.signatures["serving_default"]
    first = sig(user_id=tf.constant(["user_1"]), history=tf.constant([[""]]), exclude=tf.constant([[""]]),
                k=tf.constant([5]))
    item_ids = [i.decode() for i in first["item_ids"].numpy()[0].tolist()]          # ids the catalogue holds
    n_items, d = (int(x) for x in loaded.index.item_vectors.shape)
    query = loaded.signatures["query_embedding"](user_id=tf.constant(["user_1"]),
                                                 history=tf.constant([["", item_ids[0]]]))["embedding"].numpy()
    table = np.random.default_rng(0).normal(size=(n_items, d)).astype(np.float32)   # values do not matter
    rows = {}
    for k in (10, 100):
        def np_topk(k=k):
            s = query @ table.T
            idx = np.argpartition(-s[0], k)[:k]
            return idx[np.argsort(-s[0][idx])]
        rows[f"numpy floor, k={k}"] = _pcts(_time_calls(np_topk, requests))
    _, specs = sig.structured_input_signature
    bound = bind_call(sig, dict(specs), dict(sig.structured_outputs))
    for k in (10, 100):
        args = dict(user_id=tf.constant(["user_1"]), history=tf.constant([["", item_ids[0]]]),
                    exclude=tf.constant([[""]]), k=tf.constant([k], tf.int32))
        rows[f"in-process signature, k={k}: ConcreteFunction(**kwargs)"] = _pcts(
            _time_calls(lambda: sig(**args), requests))
        rows[f"in-process signature, k={k}: server's bound call"] = _pcts(
            _time_calls(lambda: {n: t.numpy() for n, t in bound(args).items()}, requests))
    for rows_per_call in (4, 16):       # what a merged batch costs per row
        batch = {n: tf.repeat(t, rows_per_call, axis=0) for n, t in args.items() if n != "k"}
        batch["k"] = tf.fill([rows_per_call], 10)
        per_row = [t / rows_per_call for t in _time_calls(
            lambda: {n: t.numpy() for n, t in bound(batch).items()}, max(50, requests // rows_per_call))]
        rows[f"in-process signature, k=10: server's bound call, {rows_per_call} rows per call, per row"] = \
            _pcts(per_row)
    spec = tf.TensorSpec

    @tf.function(input_signature=[spec([None], tf.string), spec([None, None], tf.string),
                                  spec([None, None], tf.string), spec([None], tf.int32)])
    def identity(user_id, history, exclude, k):
        return {"item_ids": tf.reshape(user_id, [-1, 1]), "scores": tf.fill([tf.shape(user_id)[0], 1], 0.0)}

    ident = bind_call(identity.get_concrete_function(), dict(specs), {"item_ids": None, "scores": None})
    rows["identity function, same inputs (TF call overhead)"] = _pcts(
        _time_calls(lambda: {n: t.numpy() for n, t in ident(args).items()}, requests))
    table_t, query_t = tf.constant(table), tf.constant(query)

    @tf.function(input_signature=[spec([None, d], tf.float32), spec([], tf.int32)])
    def matmul_top_k(q, k):
        top = tf.math.top_k(tf.matmul(q, table_t, transpose_b=True), k=k)
        return {"indices": top.indices, "values": top.values}

    core = bind_call(matmul_top_k.get_concrete_function(), {"q": None, "k": None}, {"indices": None, "values": None})
    for k in (10, 100):
        kk = tf.constant(k)
        rows[f"matmul + tf.math.top_k only, k={k}"] = _pcts(
            _time_calls(lambda: {n: t.numpy() for n, t in core({"q": query_t, "k": kk}).items()}, requests))
    for name, r in rows.items():
        r["p50_vs_floor"] = r["p50_ms"] / rows["numpy floor, k=100" if "k=100" in name else "numpy floor, k=10"]["p50_ms"]
    return rows, {"num_items": n_items, "dim": d, "item_ids": item_ids}


def through_server(base: str, model_name: str, settings: list[str], info: dict, a) -> tuple[dict, dict]:
    """gRPC/REST batch-1 rows and throughput per client-thread count, through a server subprocess."""
    from serving.client import RecommenderClient
    from serving.testing import ServerProcess

    history = info["item_ids"][:1]
    rows, throughput = {}, {}
    with tempfile.TemporaryDirectory() as tmp, \
            ServerProcess(base, model_name, log_path=os.path.join(tmp, "server.log"), extra_args=settings) as srv:
        grpc_client = RecommenderClient(srv.grpc_target, model_name, timeout_s=30)
        rows["gRPC Predict batch 1, k=10"] = _pcts(
            _time_calls(lambda: grpc_client.recommend("user_1", 10, history), a.requests))
        rest = RecommenderClient(model_name=model_name, rest_url=srv.rest_url, timeout_s=30)
        rows["REST predict batch 1, k=10"] = _pcts(
            _time_calls(lambda: rest.recommend("user_1", 10, history), max(200, a.requests // 4)))
        grpc_client.close()
        for c in a.concurrency:
            clients = [RecommenderClient(srv.grpc_target, model_name, timeout_s=60) for _ in range(c)]
            for cl in clients:
                cl.recommend("user_1", 10)
            per = max(1, a.throughput_requests // c)
            lat, errors, lock = [], [], threading.Lock()

            def work(cl):
                mine = []
                for i in range(per):
                    t = time.perf_counter()
                    try:
                        cl.recommend(f"user_{i % 1000}", 10, history)
                    except Exception as e:  # noqa: BLE001 - counted, reported
                        errors.append(str(e))
                    mine.append(time.perf_counter() - t)
                with lock:
                    lat.extend(mine)

            threads = [threading.Thread(target=work, args=(cl,)) for cl in clients]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            throughput[str(c)] = dict(_pcts(lat), req_per_s=len(lat) / (time.perf_counter() - started),
                                      errors=len(errors))
            for cl in clients:
                cl.close()
    return rows, throughput


def main(argv=None) -> dict:
    from pipeline import configs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline_model", default=os.path.join(configs.SERVING_MODEL_DIR, configs.MODEL_NAME),
                   help="base path the Pusher writes to (trained with the pipeline when empty)")
    p.add_argument("--model_name", default="tower_recs")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--num_items", type=int, default=10_000, help="catalogue of the synthetic model")
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32])
    p.add_argument("--throughput_requests", type=int, default=1500, help="requests per concurrency level")
    p.add_argument("--out", default="benchmarks/results/serving.json")
    a = p.parse_args(argv)
    load_before = os.getloadavg()

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import tensorflow_text  # noqa: F401  (the pipeline model's item tower uses TF Text ops)

    from serving import layout
    from serving.batching import DEFAULT_PARAMETERS_FILE, BatchingOptions
    from serving.synthetic_model import build_synthetic_model

    tmp = tempfile.mkdtemp(prefix="serving_bench_")
    synthetic_base = os.path.join(tmp, a.model_name)
    build_synthetic_model(synthetic_base, 1, num_items=a.num_items, num_users=1_000, dim=64, seed=0)
    pipeline_base = pipeline_model(a.pipeline_model)
    models = {
        f"synthetic ({a.num_items} items, d=64)": synthetic_base,
        f"pipeline model (sample data, version {layout.version_dirs(pipeline_base)[-1]})": pipeline_base,
    }
    production = BatchingOptions.from_file()
    two_threads = os.path.join(tmp, "batching_2_threads.txt")
    with open(DEFAULT_PARAMETERS_FILE) as f:
        text = f.read()
    if "num_batch_threads { value: 1 }" not in text:
        raise SystemExit(f"{DEFAULT_PARAMETERS_FILE} no longer sets num_batch_threads 1; update this comparison")
    with open(two_threads, "w") as f:
        f.write(text.replace("num_batch_threads { value: 1 }", "num_batch_threads { value: 2 }"))
    settings = {name: [two_threads if v is None else v for v in flags] for name, flags in SETTINGS.items()}
    results: dict = {"settings": {"production": "serving.server defaults: --enable_batching=true with "
                                                "serving/config/batching_parameters.txt " + json.dumps(
                                                    {k: v for k, v in production.__dict__.items()}),
                                  "batching off": "--enable_batching=false (TF Serving's default)",
                                  "2 batch threads": "production with num_batch_threads 2"},
                     "requests": a.requests, "host": platform.node(), "cpus": os.cpu_count(), "runs": []}
    try:
        for model, base in models.items():
            rows, info = in_process(layout.latest_version_dir(base), a.requests)
            model = f"{model}, {info['num_items']} items, d={info['dim']}" if model.startswith("pipeline") else model
            results["runs"].append({"model": model, "settings": "in-process (no server)", "rows": rows})
            for name, flags in settings.items():
                rows, throughput = through_server(base, a.model_name, flags, info, a)
                results["runs"].append({"model": model, "settings": name, "rows": rows, "throughput": throughput})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_avg_before"] = load_before
    results["load_avg_after"] = os.getloadavg()
    results["targets"] = _targets(results["runs"], f"synthetic ({a.num_items} items, d=64)")
    results["markdown"] = _markdown(results)
    print(results["markdown"])
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2, default=str)
        with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
            f.write(results["markdown"] + "\n")
    return results


def _run(runs, model, settings):
    return next(r for r in runs if r["model"] == model and r["settings"] == settings)


def _targets(runs, model) -> dict:
    served = _run(runs, model, "production")
    grpc_row = served["rows"]["gRPC Predict batch 1, k=10"]
    in_model = _run(runs, model, "in-process (no server)")["rows"]["in-process signature, k=10: server's bound call"]
    return {"model": model, "settings": "production",
            "grpc_p50_le_2ms": grpc_row["p50_ms"] <= 2.0, "grpc_p99_le_5ms": grpc_row["p99_ms"] <= 5.0,
            "ge_1000_req_per_s": max(t["req_per_s"] for t in served["throughput"].values()) >= 1000,
            "in_model_le_2x_floor": in_model["p50_vs_floor"] <= 2.0}


def _markdown(results) -> str:
    lines = ["| model | settings | measurement | p50 ms | p99 ms | p50 / numpy floor |", "|---|---|---|---:|---:|---:|"]
    for run in results["runs"]:
        for name, r in run["rows"].items():
            ratio = f"{r['p50_vs_floor']:.1f}x" if "p50_vs_floor" in r else ""
            lines.append(f"| {run['model']} | {run['settings']} | {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                         f"{ratio} |")
    lines += ["", "| model | settings | gRPC client threads | req/s | p50 ms | p99 ms | errors |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for run in results["runs"]:
        for c, t in run.get("throughput", {}).items():
            lines.append(f"| {run['model']} | {run['settings']} | {c} | {t['req_per_s']:.0f} | {t['p50_ms']:.2f} | "
                         f"{t['p99_ms']:.2f} | {t['errors']} |")
    t = results["targets"]
    lines += ["", "Settings: " + "; ".join(f"{k}: {v}" for k, v in results["settings"].items()) + ".",
              f"{results['cpus']} CPUs; load avg (1/5/15 min) before "
              f"{'/'.join(f'{x:.2f}' for x in results['load_avg_before'])}, after "
              f"{'/'.join(f'{x:.2f}' for x in results['load_avg_after'])}. Targets ({t['model']}, {t['settings']}): "
              + ", ".join(f"{k}={'PASS' if v else 'MISS'}" for k, v in t.items() if isinstance(v, bool)) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
