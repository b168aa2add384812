"""Serving under faults and load: good and malformed traffic together, version swaps, one server restart.

    python -m benchmarks.serving_faults [--seconds 40] [--good_threads 4] [--bad_threads 2] [--swap_every_s 5]
                                        [--out benchmarks/results/serving_faults.json]

The local TF Serving stand-in runs the production configuration (server-side batching with
serving/config/batching_parameters.txt) on loopback and serves a synthetic 10,000-item model. For a fixed
time, ``good_threads`` send valid gRPC requests (batched contract, random users, history/exclude widths and
k) while ``bad_threads`` cycle through malformed gRPC and REST requests (declared-shape bombs, oversized rows,
wrong dtypes and ranks, a scalar k, k out of range, unknown names, oversized/negative Content-Length, deep
JSON, ...). Every ``swap_every_s`` a new version is pushed (write elsewhere, then rename); at 60% of the run
the server gets SIGTERM (graceful drain) and a new one starts on the same ports.

Reports good requests served / failed (target: 0 failed outside the restart window), malformed requests
rejected with the expected status (target: all), p50/p99 of good requests, and the server's RSS: peak growth
over the RSS it had with the model loaded, against a stated bound (one more version loaded during a swap
plus request buffers). Writes JSON, a Markdown table and a timeline PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np

MODEL = "tower_recs"
# Clients reconnect within ~0.5 s of the server coming back (gRPC's default backoff starts at 1 s and grows),
# and wait for the connection (wait_for_ready) instead of failing while it is re-established; a request the
# draining server refuses still fails (UNAVAILABLE), inside the restart window.
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 500)]


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return None


def _good_request(rng: random.Random, num_items: int):
    """A valid serving_default request in the batched contract (as serving.client builds them)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    rows = rng.choice([1, 1, 1, 2, 4])
    k = [rng.randint(1, 100) for _ in range(rows)]
    histories = [[f"item_{rng.randrange(num_items)}" for _ in range(rng.randint(0, 20))] for _ in range(rows)]
    excludes = [[f"item_{rng.randrange(num_items)}" for _ in range(rng.randint(0, 50))] for _ in range(rows)]

    def padded(lists):
        width = max(len(x) for x in lists) + 1
        return np.array([[""] * (width - len(x)) + x for x in lists], dtype=object)

    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    req.inputs["user_id"].CopyFrom(tf.make_tensor_proto([f"user_{rng.randrange(1000)}" for _ in range(rows)]))
    req.inputs["history"].CopyFrom(tf.make_tensor_proto(padded(histories), tf.string))
    req.inputs["exclude"].CopyFrom(tf.make_tensor_proto(padded(excludes), tf.string))
    req.inputs["k"].CopyFrom(tf.make_tensor_proto(k, tf.int32))
    return req, rows, max(k)


def _malformed_catalogue():
    """(name, kind, build) where kind is "grpc" (build -> PredictRequest) or "rest" (build -> raw HTTP bytes)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, types_pb2

    def base():
        req, _, _ = _good_request(random.Random(0), 100)
        return req

    def with_input(name, proto):
        req = base()
        req.inputs[name].CopyFrom(proto)
        return req

    def declared(dtype, shape, **values):
        proto = tensor_pb2.TensorProto(dtype=dtype)
        for d in shape:
            proto.tensor_shape.dim.add().size = d
        for field, vals in values.items():
            getattr(proto, field).extend(vals)
        return proto

    def without(name):
        req = base()
        del req.inputs[name]
        return req

    def rest(body: bytes, length: str | None = None) -> bytes:
        length = str(len(body)) if length is None else length
        return (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode() + body

    signature = base()
    signature.model_spec.signature_name = "no_such_signature"
    return [
        ("row shape bomb [1, 1e10]", "grpc", lambda: with_input(
            "history", declared(types_pb2.DT_STRING, [1, 10 ** 10], string_val=[b"x"]))),
        ("rows bomb [1e12]", "grpc", lambda: with_input("k", declared(types_pb2.DT_INT32, [10 ** 12], int_val=[5]))),
        ("exclude 1e6 wide", "grpc", lambda: with_input(
            "exclude", declared(types_pb2.DT_STRING, [1, 10 ** 6], string_val=[b""]))),
        ("1001 excluded ids", "grpc", lambda: with_input("exclude", tf.make_tensor_proto(
            np.array([[""] + [f"item_{i}" for i in range(1001)]], object), tf.string))),
        ("scalar k", "grpc", lambda: with_input("k", tf.make_tensor_proto(5, tf.int32))),
        ("k = 1000", "grpc", lambda: with_input("k", tf.make_tensor_proto([1000], tf.int32))),
        ("k = 0", "grpc", lambda: with_input("k", tf.make_tensor_proto([0], tf.int32))),
        ("k as string", "grpc", lambda: with_input("k", tf.make_tensor_proto(["5"]))),
        ("history rank 1", "grpc", lambda: with_input("history", tf.make_tensor_proto(["item_1"]))),
        ("missing k", "grpc", lambda: without("k")),
        ("unknown input", "grpc", lambda: with_input("bogus", tf.make_tensor_proto(["x"]))),
        ("unknown signature", "grpc", lambda: signature),
        ("100 kB user id", "grpc", lambda: with_input("user_id", tf.make_tensor_proto(["u" * 100_000]))),
        ("negative dim", "grpc", lambda: with_input(
            "user_id", declared(types_pb2.DT_STRING, [-5], string_val=[b"u"]))),
        ("Content-Length 100 GB", "rest", lambda: rest(b"{}", "100000000000")),
        ("Content-Length -1", "rest", lambda: rest(b"{}", "-1")),
        ("JSON nested 10,000 deep", "rest", lambda: rest(b"[" * 10_000 + b"]" * 10_000)),
        ("invalid JSON", "rest", lambda: rest(b"{not json")),
        ("k as float in JSON", "rest", lambda: rest(json.dumps({"inputs": {
            "user_id": ["u"], "history": [[""]], "exclude": [[""]], "k": [5.0]}}).encode())),
    ]


def _send_raw(port: int, data: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--good_threads", type=int, default=4)
    p.add_argument("--bad_threads", type=int, default=2)
    p.add_argument("--swap_every_s", type=float, default=5.0)
    p.add_argument("--num_items", type=int, default=10_000)
    p.add_argument("--rss_bound_mb", type=float, default=200.0,
                   help="allowed peak RSS growth over the loaded model: a second version during a swap, batching "
                        "and request buffers (a request is capped at 64 MB of tensors by the server's limits)")
    p.add_argument("--out", default="benchmarks/results/serving_faults.json")
    a = p.parse_args(argv)
    load_before = os.getloadavg()

    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from serving.synthetic_model import build_synthetic_model
    from serving.testing import ServerProcess, free_port

    tmp = tempfile.mkdtemp(prefix="serving_faults_")
    base = os.path.join(tmp, MODEL)
    template = build_synthetic_model(os.path.join(tmp, "template"), 1, num_items=a.num_items, num_users=1000,
                                     dim=64, seed=0)
    next_version = [1]

    def push_version() -> int:
        version = next_version[0]
        next_version[0] += 1
        staging = os.path.join(base, f".tmp-{version}")
        shutil.copytree(template, staging)
        os.rename(staging, os.path.join(base, str(version)))
        return version

    os.makedirs(base)
    push_version()
    ports = (free_port(), free_port())
    server_args = ["--file_system_poll_wait_seconds", "0.5"]
    log_path = os.path.join(tmp, "server.log")
    srv = ServerProcess(base, MODEL, log_path=log_path, extra_args=server_args, port=ports[0], rest_port=ports[1]).start()
    processes = [{"pid": srv.proc.pid, "baseline_mb": _rss_mb(srv.proc.pid), "peak_mb": 0.0}]

    lock = threading.Lock()
    stop = threading.Event()
    events: list[tuple[float, str]] = []
    good: list[tuple[float, float, str, int]] = []     # (t, latency s, status, version)
    bad: list[tuple[float, str, str, bool]] = []       # (t, case, status, rejected as expected)
    rss: list[tuple[float, float]] = []
    details: list[tuple[float, str, str]] = []         # (t, status, message) of failed good requests
    restart_window = [None, None]
    start = time.monotonic()

    def now() -> float:
        return time.monotonic() - start

    def sample_rss():
        while not stop.is_set():
            current = processes[-1]
            value = _rss_mb(current["pid"])
            if value is not None:
                current["peak_mb"] = max(current["peak_mb"], value)
                with lock:
                    rss.append((now(), value))
            time.sleep(0.1)

    def good_traffic(seed: int):
        rng = random.Random(seed)
        channel = grpc.insecure_channel(f"127.0.0.1:{ports[0]}", options=CHANNEL_OPTIONS)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        while not stop.is_set():
            req, rows, width = _good_request(rng, a.num_items)
            t0 = time.perf_counter()
            try:
                resp = stub.Predict(req, timeout=30, wait_for_ready=True)
                ids = resp.outputs["item_ids"]
                shape = [d.size for d in ids.tensor_shape.dim]
                status = "OK" if shape == [rows, width] or (shape[0] == rows and shape[1] >= width) else "BAD_SHAPE"
                version = resp.model_spec.version.value
            except grpc.RpcError as e:
                status, version = e.code().name, 0
                with lock:
                    details.append((round(now(), 2), status, (e.details() or "")[:200]))
            with lock:
                good.append((now(), time.perf_counter() - t0, status, version))
            if status != "OK":
                time.sleep(0.1)          # a client backs off rather than spinning on a restarting server
        channel.close()

    catalogue = _malformed_catalogue()

    def bad_traffic(offset: int):
        channel = grpc.insecure_channel(f"127.0.0.1:{ports[0]}", options=CHANNEL_OPTIONS)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        i = offset
        while not stop.is_set():
            name, kind, build = catalogue[i % len(catalogue)]
            i += 1
            if kind == "grpc":
                try:
                    stub.Predict(build(), timeout=30, wait_for_ready=True)
                    status, expected = "OK", False
                except grpc.RpcError as e:
                    status = e.code().name
                    expected = status in ("INVALID_ARGUMENT", "FAILED_PRECONDITION")
            else:
                try:
                    code = _send_raw(ports[1], build())
                    status, expected = f"HTTP {code}", code in (400, 413)
                except OSError as e:
                    status, expected = f"connection error: {type(e).__name__}", False
            with lock:
                bad.append((now(), name, status, expected))
            time.sleep(0.01 if expected else 0.1)
        channel.close()

    threads = [threading.Thread(target=sample_rss, daemon=True)]
    threads += [threading.Thread(target=good_traffic, args=(i,)) for i in range(a.good_threads)]
    threads += [threading.Thread(target=bad_traffic, args=(i * 7,)) for i in range(a.bad_threads)]
    for t in threads:
        t.start()
    restart_at = 0.6 * a.seconds
    next_swap = a.swap_every_s
    try:
        while now() < a.seconds:
            if restart_window[0] is None and now() >= restart_at:
                restart_window[0] = now()
                events.append((now(), "SIGTERM"))
                srv.terminate(timeout_s=60)
                srv.stop()
                srv = ServerProcess(base, MODEL, log_path=log_path, extra_args=server_args, port=ports[0],
                                    rest_port=ports[1]).start()
                processes.append({"pid": srv.proc.pid, "baseline_mb": _rss_mb(srv.proc.pid), "peak_mb": 0.0})
                restart_window[1] = now()
                events.append((now(), "restarted"))
            if now() >= next_swap:
                version = push_version()
                events.append((now(), f"push v{version}"))
                next_swap += a.swap_every_s
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads[1:]:
            t.join(60)
        srv.stop()
        server_log = srv.log_text()
        shutil.rmtree(tmp, ignore_errors=True)

    lo, hi = restart_window
    in_window = [g for g in good if lo is not None and lo <= g[0] <= hi + 1.0]
    outside = [g for g in good if g not in in_window]
    latencies = np.array([g[1] for g in good if g[2] == "OK"]) * 1e3
    by_case: dict[str, dict] = {}
    for _, name, status, expected in bad:
        entry = by_case.setdefault(name, {"sent": 0, "rejected": 0, "statuses": {}})
        entry["sent"] += 1
        entry["rejected"] += int(expected)
        entry["statuses"][status] = entry["statuses"].get(status, 0) + 1
    bad_outside = [b for b in bad if not (lo is not None and lo <= b[0] <= hi + 1.0)]
    growth = [p["peak_mb"] - p["baseline_mb"] for p in processes if p["baseline_mb"]]
    # Retention per swap once the allocator has room for two versions: RSS just before the restart against
    # RSS 1 s before the third push (both in the first process).
    pushes = [t for t, e in events if e.startswith("push") and (lo is None or t < lo)]
    per_swap = None
    if lo is not None and len(pushes) >= 4:
        before = [v for t, v in rss if t < pushes[2] - 1.0][-1]
        end = [v for t, v in rss if t < lo][-1]
        per_swap = round((end - before) / (len(pushes) - 2), 2)
    results = {
        "model": f"synthetic ({a.num_items} items, d=64)",
        "settings": {"server": "serving.server, production batching (serving/config/batching_parameters.txt)",
                     "seconds": a.seconds, "good_threads": a.good_threads, "bad_threads": a.bad_threads,
                     "swap_every_s": a.swap_every_s, "restart_at_s": round(restart_at, 1)},
        "good": {"sent": len(good), "served": sum(g[2] == "OK" for g in good),
                 "failed_outside_restart_window": sum(g[2] != "OK" for g in outside),
                 "failed_in_restart_window": sum(g[2] != "OK" for g in in_window),
                 "failure_statuses": sorted({g[2] for g in good if g[2] != "OK"}),
                 "versions_served": sorted({g[3] for g in good if g[3]}),
                 "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))},
        "malformed": {"sent": len(bad), "rejected_as_expected": sum(b[3] for b in bad),
                      "unexpected_outside_restart_window": sum(not b[3] for b in bad_outside), "cases": by_case},
        "restart_window_s": [round(lo, 2), round(hi, 2)] if lo is not None else None,
        "good_failures_outside_window": [d for d in details if not (lo is not None and lo <= d[0] <= hi + 1.0)][:10],
        "versions_pushed": next_version[0] - 1,
        "rss_mb": {"processes": [{k: round(v, 1) if isinstance(v, float) else v for k, v in p.items() if k != "pid"}
                                 for p in processes],
                   "peak_growth_mb": round(max(growth), 1) if growth else None, "bound_mb": a.rss_bound_mb,
                   "retained_per_swap_after_second_mb": per_swap},
        "server_errors_logged": server_log.count(" ERROR "),
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "cpus": os.cpu_count(),
        "events": [(round(t, 2), e) for t, e in events],
    }
    results["targets"] = {
        "no_good_failures_outside_restart": results["good"]["failed_outside_restart_window"] == 0,
        "all_malformed_rejected": results["malformed"]["unexpected_outside_restart_window"] == 0,
        "rss_growth_within_bound": growth and max(growth) <= a.rss_bound_mb,
    }
    table = _markdown(results)
    results["markdown"] = table
    print(table)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2, default=str)
        with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
            f.write(table + "\n")
        _plot(good, rss, events, restart_window, os.path.splitext(a.out)[0] + ".png", results)
    return results


def _markdown(r: dict) -> str:
    g, m, s = r["good"], r["malformed"], r["settings"]
    lines = [f"Fault and load run: {r['model']}, {s['server']}; {s['seconds']:.0f} s, {s['good_threads']} good + "
             f"{s['bad_threads']} malformed client threads, a new version every {s['swap_every_s']:.0f} s "
             f"({r['versions_pushed']} pushed), SIGTERM + restart at {s['restart_at_s']} s "
             f"(window {r['restart_window_s']} s); {r['cpus']} CPUs, load avg before "
             f"{'/'.join(f'{x:.2f}' for x in r['load_avg_before'])}.", "",
             "| measure | value | target |", "|---|---:|---|",
             f"| good requests served | {g['served']} of {g['sent']} | |",
             f"| good requests failed outside the restart window | {g['failed_outside_restart_window']} | 0 "
             f"({'met' if r['targets']['no_good_failures_outside_restart'] else 'MISSED'}) |",
             f"| good requests failed in the restart window | {g['failed_in_restart_window']} "
             f"({', '.join(g['failure_statuses']) or '-'}) | |",
             f"| versions that served good requests | {len(g['versions_served'])} | |",
             f"| good p50 / p99 | {g['p50_ms']:.2f} / {g['p99_ms']:.2f} ms | |",
             f"| malformed requests rejected with the expected status | {m['rejected_as_expected']} of {m['sent']} | "
             f"all outside the restart window "
             f"({'met' if r['targets']['all_malformed_rejected'] else 'MISSED'}) |",
             f"| peak RSS growth over the loaded model | {r['rss_mb']['peak_growth_mb']} MB | "
             f"<= {r['rss_mb']['bound_mb']:.0f} MB ({'met' if r['targets']['rss_growth_within_bound'] else 'MISSED'}) |",
             f"| RSS retained per swap after the second | {r['rss_mb']['retained_per_swap_after_second_mb']} MB | |",
             "", "| malformed case | sent | rejected | statuses |", "|---|---:|---:|---|"]
    for name, c in m["cases"].items():
        lines.append(f"| {name} | {c['sent']} | {c['rejected']} | "
                     f"{', '.join(f'{k}: {v}' for k, v in sorted(c['statuses'].items()))} |")
    return "\n".join(lines)


def _plot(good, rss, events, window, path: str, results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ok = [(t, lat * 1e3) for t, lat, status, _ in good if status == "OK"]
    failed = [(t, lat * 1e3) for t, lat, status, _ in good if status != "OK"]
    if ok:
        top.scatter(*zip(*ok), s=2, alpha=0.4, label="good request latency")
    if failed:
        top.scatter(*zip(*failed), s=12, color="red", label="good request failed")
    top.set_yscale("log")
    top.set_ylabel("latency (ms)")
    if rss:
        bottom.plot(*zip(*rss), label="server RSS")
    bottom.set_ylabel("RSS (MB)")
    bottom.set_xlabel("seconds")
    for ax in (top, bottom):
        for t, name in events:
            ax.axvline(t, color="grey" if name.startswith("push") else "black", lw=0.6, ls=":")
        if window[0] is not None:
            ax.axvspan(window[0], window[1], color="orange", alpha=0.2, label="restart window")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(f"{results['model']}: good requests under swaps (dotted) and a restart (shaded)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
