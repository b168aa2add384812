"""What the request log costs a request, and how the skew statistics scale with the log.

    python -m benchmarks.request_log [--requests 1000] [--log_sizes 5000 20000] [--out benchmarks/results/request_log.json]

1. Latency: two in-process servers (serving.server.Server, gRPC on loopback, batching off, synthetic
   10,000-item model, d=64) serve the same model, one without a request log and one logging every request
   (sampling rate 1.0, the worst case); batch-1 serving_default requests alternate between them so both see
   the same machine load. p50/p99 and their ratio, plus the request-path call alone (sampling + enqueue) and
   the log's counters (written, dropped).
2. Skew statistics: N logged requests (written by RequestLogger) -> `serving.skew.compute_statistics`
   (Beam DirectRunner, one in-process worker): seconds and records/s per size, peak RSS.
Load averages are recorded; the machine is shared, so compare rows of one run (ratios), not runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import numpy as np

MODEL = "tower_recs"


def _pcts(lat_s) -> dict:
    a = np.asarray(lat_s) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": int(a.size)}


def _request(user: str, history: list[str]):
    from serving.testing import predict_request

    return predict_request(MODEL, user, history, k=10)


def latency(tmp: str, requests: int) -> dict:
    """gRPC batch-1 latency without and with a rate-1.0 request log, requests alternating between the two."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from serving.manager import ModelManager
    from serving.request_log import RequestLogConfig, RequestLogger
    from serving.server import Server
    from serving.synthetic_model import build_synthetic_model

    base = os.path.join(tmp, "models", MODEL)
    build_synthetic_model(base, 1, num_items=10_000, num_users=1000, dim=64)
    logger = RequestLogger(RequestLogConfig(prefix=os.path.join(tmp, "log", MODEL), sampling_rate=1.0))
    servers = {}
    for name, request_logger in (("log off", None), ("log rate 1.0", logger)):
        manager = ModelManager(MODEL, base, warmup=True)
        manager.start()
        servers[name] = Server(manager, port=0, rest_api_port=0, request_logger=request_logger).start()
    rng = np.random.default_rng(0)
    batch = [_request(f"user_{rng.integers(1000)}", [f"item_{i}" for i in rng.integers(10_000, size=10)])
             for _ in range(64)]
    stubs = {name: prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{s.port}"))
             for name, s in servers.items()}
    lat = {name: [] for name in servers}
    for i in range(requests + 50):
        for name, stub in stubs.items():
            started = time.perf_counter()
            response = stub.Predict(batch[i % len(batch)], timeout=30)
            if i >= 50:                                    # the first 50 of each warm up
                lat[name].append(time.perf_counter() - started)
    on_path = []
    for i in range(2000):                                  # the request path's share: sample + enqueue
        started = time.perf_counter()
        logger.log_grpc_predict(batch[i % len(batch)], response)
        on_path.append(time.perf_counter() - started)
    for server in servers.values():
        server.shutdown(drain_timeout_s=5)
    rows = {name: _pcts(v) for name, v in lat.items()}
    return {"rows": rows, "p50_ratio": rows["log rate 1.0"]["p50_ms"] / rows["log off"]["p50_ms"],
            "p99_ratio": rows["log rate 1.0"]["p99_ms"] / rows["log off"]["p99_ms"],
            "request_path_call_us": {k: v * 1e3 for k, v in _pcts(on_path).items() if k != "n"},
            "log_counters": logger.stats()}


def statistics(tmp: str, sizes: list[int]) -> list[dict]:
    """Seconds of the request-view TFDV statistics over logs of each size."""
    from schema import contract
    from serving import skew
    from serving.request_log import RequestLogConfig, RequestLogger

    rng = np.random.default_rng(1)
    out = []
    for n in sizes:
        prefix = os.path.join(tmp, f"log_{n}", MODEL)
        logger = RequestLogger(RequestLogConfig(prefix=prefix, sampling_rate=1.0, queue_size=n + 1)).start()
        for _ in range(n):
            history = np.array([[b""] + [f"item_{i}".encode() for i in rng.integers(10_000, size=20)]], object)
            logger.log_arrays_predict(MODEL, 1, contract.SERVING_DEFAULT,
                                      {contract.USER_ID: np.array([f"user_{rng.integers(50_000)}".encode()], object),
                                       contract.HISTORY: history},
                                      {contract.OUTPUT_SCORES: np.zeros([1, 10], np.float32)})
        logger.close(timeout_s=600)
        files = skew.recent_log_files(os.path.dirname(prefix))
        started = time.perf_counter()
        skew.compute_statistics(os.path.join(tmp, f"stats_{n}"), files)
        seconds = time.perf_counter() - started
        out.append({"logged_requests": n, "files": len(files), "seconds": seconds, "records_per_s": n / seconds,
                    "log_mb": sum(os.path.getsize(f) for f in files) / 2 ** 20})
        print(f"  statistics over {n} logged requests: {seconds:.1f} s", flush=True)
    return out


def _markdown(r: dict) -> str:
    lat = r["latency"]
    lines = ["# Request log: cost per request and skew statistics", "",
             f"Load average before/after: {r['load_avg_before']} / {r['load_avg_after']} (2 cores, shared machine: "
             f"compare rows of this run). Model: synthetic 10,000 items, d=64; gRPC, batch 1, batching off.", "",
             "| server | p50 ms | p99 ms | requests |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['n']} |" for name, v in lat["rows"].items()]
    lines += ["", f"Ratio logging/off: p50 {lat['p50_ratio']:.2f}x, p99 {lat['p99_ratio']:.2f}x. Request-path call "
              f"(sample + enqueue): p50 {lat['request_path_call_us']['p50_ms']:.1f} us, p99 "
              f"{lat['request_path_call_us']['p99_ms']:.1f} us. Log counters: {lat['log_counters']}.", "",
              "| logged requests | files | MiB | statistics s | records/s |", "|---|---|---|---|---|"]
    lines += [f"| {s['logged_requests']} | {s['files']} | {s['log_mb']:.1f} | {s['seconds']:.1f} | "
              f"{s['records_per_s']:.0f} |" for s in r["statistics"]]
    lines += ["", f"Peak RSS of the benchmark process: {r['peak_rss_mb']:.0f} MiB."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=1000, help="timed requests per server")
    p.add_argument("--log_sizes", type=int, nargs="+", default=[5000, 20000])
    p.add_argument("--out", default="benchmarks/results/request_log.json")
    a = p.parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)   # as the server runs
    tf.config.threading.set_inter_op_parallelism_threads(1)
    results = {"load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        results["latency"] = latency(tmp, a.requests)
        print(json.dumps(results["latency"], indent=1), flush=True)
        results["statistics"] = statistics(tmp, a.log_sizes)
    results["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = _markdown(results)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
            f.write(text)
    return results


if __name__ == "__main__":
    main()
