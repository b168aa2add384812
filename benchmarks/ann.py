"""Million-item retrieval: the served IVF index vs exact search, FAISS and a numpy floor, on the same vectors.

    python -m benchmarks.ann [--sizes 100000 1000000] [--queries 200] [--out benchmarks/results/ann.json]

Vectors: clustered synthetic ones (no trained model has a catalogue this size here): d=64, unit norm, items
around sub-topics of topics with Zipf-like sizes and varied spreads; queries are drawn from the same mixture.
Per catalogue size, one run:
  - ground truth: exact top-100 (numpy, float32);
  - the served index (trainer.retrieval_index.PartitionedIndex, built as the export builds it, with
    ModelConfig's defaults) swept over nprobe, in-process: recall@100 vs exact and batch-1 latency; and at the
    default nprobe the same index exported as a SavedModel and loaded into a TF Session the way TF Serving loads
    it (the server's way of running the graph, without TF2's eager calls), called twice over: through a Python
    Session callable, and through TF's C API (TF_SessionRun, benchmarks.c_session), as a C++ server calls it,
    without the Python binding's cost per call (0.1 ms on a graph that does nothing);
  - exact search in TF (BruteForceIndex) and the numpy brute-force floor (matmul + argpartition);
  - FAISS IVF-Flat (inner product, the same partition count) over nprobe, and FAISS HNSW (M=16) over efSearch;
  every in-process search above takes turns in blocks of 20 queries, so all see the same machine load, three
  times over the queries (latency percentiles pool the passes);
  - through the local server's gRPC Predict (serving.server, production settings): a synthetic model with these
    vectors (serving.synthetic_model, whose index is `build_index` with ModelConfig's defaults): recall@100 of
    the served results vs exact, batch-1 p50/p99 at k=10 and k=100, and load + warmup time (server start to
    AVAILABLE, which includes the warmup replay).
TF, numpy and FAISS all run single-threaded, as the server runs TF (intra/inter-op 1). Latencies are batch 1 and
time the search call alone: results are decoded (bytes ids to positions) after the clock stops.
"Matched recall" FAISS IVF: its smallest nprobe whose recall@100 is within 0.002 of the served index's (or above).
The within-2x target compares the C API Session row (what TF Serving pays) with it; the in-process and Python
Session ratios are reported beside it.
Load averages are recorded: the machine is shared, compare rows of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np

K = 100
DIM = 64
MODEL_NAME = "tower_recs"
HNSW_M = 16
HNSW_EF_SEARCH = (128, 256, 512, 1024)


def clustered_vectors(num_items: int, num_queries: int, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(items [N, d], queries [Q, d]), unit norm: 50 topics x sub-topics, Zipf sizes, varied spreads."""
    rng = np.random.default_rng(seed)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    topics = unit(rng.normal(size=(50, dim)))
    num_sub = max(10, num_items // 500)
    subs = unit(topics[rng.integers(0, len(topics), num_sub)] + 0.6 * unit(rng.normal(size=(num_sub, dim))))
    popularity = 1.0 / np.arange(1, num_sub + 1) ** 0.7
    popularity /= popularity.sum()
    spread = rng.uniform(0.4, 1.2, size=num_sub).astype(np.float32)

    def draw(n, extra_spread):
        sub = rng.choice(num_sub, size=n, p=popularity)
        noise = unit(rng.normal(size=(n, dim))) * (spread[sub] + extra_spread)[:, None]
        return unit(subs[sub] + noise)

    items = np.concatenate([draw(min(200_000, num_items - s), 0.0) for s in range(0, num_items, 200_000)])
    return items, draw(num_queries, 0.3)


def exact_top_k(items: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """[Q, k] item positions of the exact top-k by inner product."""
    out = []
    for q in queries:
        s = items @ q
        top = np.argpartition(-s, k)[:k]
        out.append(top[np.argsort(-s[top])])
    return np.asarray(out)


def recall(found: list, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / |truth| over queries."""
    return float(np.mean([len(set(map(int, f)) & set(map(int, t))) / len(t) for f, t in zip(found, truth)]))


def _pcts(lat_s) -> dict:
    a = np.asarray(lat_s) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": int(a.size)}


def _timed(fn, inputs, warm: int = 10) -> tuple[list, dict]:
    """(results, latency stats) of fn(x) for each input, one at a time, after `warm` untimed calls."""
    for x in inputs[:warm]:
        fn(x)
    results, lat = [], []
    for x in inputs:
        t = time.perf_counter()
        results.append(fn(x))
        lat.append(time.perf_counter() - t)
    return results, _pcts(lat)


def interleaved_rows(searchers: dict, queries: np.ndarray, truth: np.ndarray, block: int = 20,
                     passes: int = 3) -> dict:
    """{name: recall@100 + batch-1 latency} of every searcher, taking turns block by block (`block` queries
    each, after one untimed call), so all of them see the same machine load and none pays for waking up
    after another library ran; `passes` times over the queries, because this shared machine has slow spells
    that last seconds (latency pools every pass, recall is the first's). numpy's BLAS and FAISS run
    single-threaded, as TF does in the server.
    """
    from threadpoolctl import threadpool_limits

    found = {name: [] for name in searchers}
    lat = {name: [] for name in searchers}
    with threadpool_limits(1):
        for pass_ in range(passes):
            for start in range(0, len(queries), block):
                for name, search in searchers.items():
                    search(queries[start])
                    for q in queries[start:start + block]:
                        t = time.perf_counter()
                        result = search(q)
                        lat[name].append(time.perf_counter() - t)
                        if pass_ == 0:
                            found[name].append(result)
    return {name: dict(_pcts(lat[name]), recall_at_100=recall(found[name], truth)) for name in searchers}


def tf_searchers(items, cfg, nprobes) -> tuple[dict, dict]:
    """{name: query -> top-100 positions} of the served index over nprobe and of exact TF search; index info."""
    import tensorflow as tf

    from trainer.retrieval_index import BruteForceIndex, build_index

    ids = [str(i) for i in range(len(items))]
    started = time.perf_counter()
    index = build_index(ids, items, cfg)
    info = {"index": type(index).__name__, "build_s": time.perf_counter() - started,
            "partitions": getattr(index, "partitions", None), "default_nprobe": getattr(index, "nprobe", None)}
    no_exclusions, k = tf.constant([[""]]), tf.constant([K])
    spec = tf.TensorSpec([1, items.shape[1]], tf.float32)

    def searcher(idx):      # traced now: nprobe is read when the graph is built
        call = tf.function(lambda q: idx(q, no_exclusions, k)[0]).get_concrete_function(spec)
        return lambda q: call(tf.constant(q[None])).numpy()[0]     # ids as bytes: recall() decodes them

    searchers = {}
    if info["partitions"]:
        default = index.nprobe
        # Partitions were merged to hold the default nprobe's worst request; these requests (k=100, no
        # exclusions) need 100 candidates, which even 4 partitions of >= 55 items hold.
        for nprobe in (n for n in nprobes if n <= index.partitions):
            index.nprobe = nprobe
            searchers[f"served IVF ({cfg.ann_scoring}), nprobe={nprobe}"] = searcher(index)
        index.nprobe = default
        searchers.update(session_searchers(index, items.shape[1], cfg))
    searchers["exact, TF (BruteForceIndex)"] = searcher(
        BruteForceIndex(ids, items, max_k=cfg.max_k, max_exclude=cfg.max_exclude))
    return searchers, info


def session_row(cfg, how: str = "") -> str:
    return f"served IVF ({cfg.ann_scoring}) at nprobe {cfg.ann_nprobe}, SavedModel run in a TF Session{how}"


C_API = " from TF's C API (as TF Serving runs it)"


def session_searchers(index, dim: int, cfg) -> dict:
    """{row name: query -> top-100 ids} of `index` exported as a SavedModel and run the way TF Serving runs one:
    loaded into a (TF1) Session as its SavedModelBundle is, single-threaded, and called through a Python
    Session callable and through TF_SessionRun (benchmarks.c_session). The two differ by Python's cost per call.
    """
    import tensorflow as tf

    from benchmarks.c_session import CApiSignature, signature_tensor_names

    module = tf.Module()
    module.index = index

    @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32)])
    def search(query):
        ids, _ = module.index(query, tf.fill([tf.shape(query)[0], 1], ""), tf.constant([K]))
        return {"ids": ids}

    export_dir = tempfile.mkdtemp(prefix="ann_session_")
    try:
        tf.saved_model.save(module, export_dir, signatures={"serving_default": search})
        names = signature_tensor_names(export_dir)
        query_name, ids_name = names["inputs"]["query"], names["outputs"]["ids"]
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=1, inter_op_parallelism_threads=1))
        with graph.as_default():
            tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        c_api = CApiSignature(export_dir, query_name, ids_name, threads=1)
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)   # the Sessions hold the restored variables
    call = session.make_callable(ids_name, [query_name])
    return {session_row(cfg, " (Python Session callable)"): lambda q: call(q[None])[0],
            session_row(cfg, C_API): lambda q: c_api(q[None])}


def faiss_searchers(items, partitions, nprobes, seed) -> tuple[dict, dict]:
    """FAISS IVF-Flat (inner product, `partitions` lists) over nprobe and HNSW over efSearch; build times."""
    import faiss

    def search(index, **params):
        def run(q):
            for name, value in params.items():
                setattr(index if name == "nprobe" else index.hnsw, name, value)
            return index.search(q[None], K)[1][0]
        return run

    faiss.omp_set_num_threads(os.cpu_count() or 1)   # building only; searches run single-threaded
    started = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(items.shape[1]), items.shape[1], partitions,
                             faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.train(items[np.random.default_rng(seed).choice(len(items), min(len(items), 64 * partitions), replace=False)])
    ivf.add(items)
    builds = {"FAISS IVF-Flat": time.perf_counter() - started}
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(items.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    hnsw.add(items)
    builds[f"FAISS HNSW M={HNSW_M}"] = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    searchers = {f"FAISS IVF-Flat, nprobe={n}": search(ivf, nprobe=n) for n in nprobes}
    searchers.update({f"FAISS HNSW M={HNSW_M}, efSearch={ef}": search(hnsw, efSearch=ef) for ef in HNSW_EF_SEARCH})
    return searchers, builds


def served_rows(items, queries, truth, cfg, requests) -> dict:
    """gRPC Predict through the local server: recall@100 of served results, batch-1 latency, load + warmup."""
    from serving.client import RecommenderClient
    from serving.synthetic_model import build_synthetic_model
    from serving.testing import ServerProcess

    tmp = tempfile.mkdtemp(prefix="ann_bench_")
    try:
        base = os.path.join(tmp, MODEL_NAME)
        started = time.perf_counter()
        build_synthetic_model(base, 1, num_items=len(items), num_users=len(queries), dim=items.shape[1],
                              item_vectors=items, user_vectors=queries, cfg=cfg, item_prefix="")
        export_s = time.perf_counter() - started
        started = time.perf_counter()
        with ServerProcess(base, MODEL_NAME, log_path=os.path.join(tmp, "server.log"),
                           ready_timeout_s=600) as server:
            load_s = time.perf_counter() - started
            client = RecommenderClient(server.grpc_target, MODEL_NAME, timeout_s=30)
            users = [f"user_{i}" for i in range(len(queries))]
            found, _ = _timed(lambda u: [int(i) for i, _ in client.recommend(u, K)], users, warm=0)
            rows = {}
            for k in (10, K):
                picks = [users[i % len(users)] for i in range(requests)]
                _, stats = _timed(lambda u: client.recommend(u, k), picks, warm=20)
                rows[f"gRPC Predict (local server, production settings), k={k}"] = stats
            rows[f"gRPC Predict (local server, production settings), k={K}"]["recall_at_100"] = recall(found, truth)
            client.close()
        return {"rows": rows, "export_s": export_s, "load_and_warmup_s": load_s}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_size(num_items, a) -> dict:
    """Every row for one catalogue size."""
    from trainer.model_config import ModelConfig
    from trainer.retrieval_index import auto_partitions

    cfg = ModelConfig()
    items, queries = clustered_vectors(num_items, a.queries, seed=a.seed)
    truth = exact_top_k(items, queries)
    partitions = cfg.ann_partitions or auto_partitions(num_items)
    print(f"{num_items} items: building the indexes", flush=True)
    searchers, info = tf_searchers(items, cfg, a.nprobes)
    searchers["numpy brute-force floor"] = lambda q: exact_top_k(items, q[None])[0]
    faiss_search, info["faiss_build_s"] = faiss_searchers(items, partitions, a.nprobes, a.seed)
    searchers.update(faiss_search)
    print(f"{num_items} items: {len(searchers)} searches taking turns over {len(queries)} queries", flush=True)
    rows = interleaved_rows(searchers, queries, truth, passes=a.passes)
    for name, row in rows.items():
        if "nprobe=" in name:
            row["nprobe"] = int(name.rsplit("=", 1)[1])
    print(f"{num_items} items: through the server", flush=True)
    served = served_rows(items, queries, truth, cfg, a.requests)
    rows.update(served.pop("rows"))
    return {"num_items": num_items, "dim": DIM, "queries": a.queries, "passes": a.passes, "index": info, **served,
            "rows": rows, "targets": _targets(num_items, rows, served, cfg)}


def _matched_faiss(rows, wanted_recall) -> tuple[str, dict] | None:
    """FAISS IVF's smallest nprobe within 0.002 of `wanted_recall` (or above); else its best recall."""
    ivf = sorted(((n, r) for n, r in rows.items() if n.startswith("FAISS IVF")), key=lambda x: x[1]["nprobe"])
    return next(((n, r) for n, r in ivf if r["recall_at_100"] >= wanted_recall - 0.002),
                max(ivf, key=lambda x: x[1]["recall_at_100"], default=None))


def _targets(num_items, rows, served, cfg) -> dict:
    grpc_row = rows[f"gRPC Predict (local server, production settings), k={K}"]
    ours = rows.get(f"served IVF ({cfg.ann_scoring}), nprobe={cfg.ann_nprobe}")
    out = {"grpc_recall_at_100": grpc_row["recall_at_100"], "grpc_p50_ms": grpc_row["p50_ms"],
           "grpc_p99_ms": grpc_row["p99_ms"], "load_and_warmup_s": served["load_and_warmup_s"]}
    if ours:
        match = _matched_faiss(rows, ours["recall_at_100"])
        out["faiss_ivf_matched"] = match[0] if match else "none reached the served recall"
        out["in_process_p50_vs_faiss_ivf_matched"] = ours["p50_ms"] / match[1]["p50_ms"] if match else None
        out["grpc_p50_vs_faiss_ivf_matched"] = grpc_row["p50_ms"] / match[1]["p50_ms"] if match else None
        for key, how in (("session", " (Python Session callable)"), ("c_api_session", C_API)):
            session = rows.get(session_row(cfg, how))
            if session and match:
                out[f"{key}_p50_vs_faiss_ivf_matched"] = session["p50_ms"] / match[1]["p50_ms"]
    if num_items >= 1_000_000:
        out["recall_ge_0.95"] = grpc_row["recall_at_100"] >= 0.95
        out["p50_le_5ms"] = grpc_row["p50_ms"] <= 5.0
        out["p99_le_10ms"] = grpc_row["p99_ms"] <= 10.0
        ratio = out.get("c_api_session_p50_vs_faiss_ivf_matched")   # the graph as TF Serving runs it
        out["within_2x_faiss_ivf"] = bool(ratio is not None and ratio <= 2.0)
        out["load_and_warmup_le_30s"] = served["load_and_warmup_s"] <= 30.0
    return out


def _markdown(results) -> str:
    lines = []
    for run in results["runs"]:
        info = run["index"]
        lines += [f"### {run['num_items']:,} items, d={run['dim']} (clustered synthetic), {run['queries']} queries"
                  f" x {run.get('passes', 1)} passes",
                  "", f"Served index: {info['index']}, {info['partitions']} partitions, default nprobe "
                  f"{info['default_nprobe']}, built in {info['build_s']:.1f} s (FAISS: "
                  + ", ".join(f"{n} {t:.1f} s" for n, t in info["faiss_build_s"].items()) + "); synthetic model export "
                  f"{run['export_s']:.1f} s; server load + warmup {run['load_and_warmup_s']:.1f} s.", "",
                  "| search | recall@100 vs exact | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
        for name, r in run["rows"].items():
            rec = f"{r['recall_at_100']:.3f}" if "recall_at_100" in r else ""
            lines.append(f"| {name} | {rec} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")
        lines += ["", "Targets: " + ", ".join(
            f"{k}={('PASS' if v else 'MISS') if isinstance(v, bool) else (f'{v:.3f}' if isinstance(v, float) else v)}"
            for k, v in run["targets"].items()) + ".", ""]
    lines.append(f"{results['cpus']} CPUs; load avg (1/5/15 min) before "
                 f"{'/'.join(f'{x:.2f}' for x in results['load_avg_before'])}, after "
                 f"{'/'.join(f'{x:.2f}' for x in results['load_avg_after'])}. TF, numpy and FAISS searches "
                 f"single-threaded, batch 1.")
    return "\n".join(lines)


def _plot(results, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["runs"]), figsize=(6 * len(results["runs"]), 4.5), squeeze=False)
    for ax, run in zip(axes[0], results["runs"]):
        for prefix, style in (("served IVF", "o-"), ("FAISS IVF", "s--"), ("FAISS HNSW", "^:")):
            pts = [(r["recall_at_100"], r["p50_ms"]) for n, r in run["rows"].items() if n.startswith(prefix)]
            if pts:
                ax.plot(*zip(*pts), style, label=prefix + (" (in-process, over nprobe)" if "IVF" in prefix else ""))
        for name, marker in (("numpy brute-force floor", "kx"), ("exact, TF (BruteForceIndex)", "r+"),
                             *((n, m) for n, m in zip((n for n in run["rows"] if "in a TF Session" in n),
                                                      ("bD", "mD")))):
            r = run["rows"][name]
            ax.plot(r["recall_at_100"], r["p50_ms"], marker, markersize=10, label=name)
        g = run["rows"][f"gRPC Predict (local server, production settings), k={K}"]
        ax.plot(g["recall_at_100"], g["p50_ms"], "g*", markersize=12, label="served, gRPC Predict k=100")
        ax.set(xlabel="recall@100 vs exact", ylabel="batch-1 p50 ms (log)", yscale="log",
               title=f"{run['num_items']:,} items, d={run['dim']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=200, help="queries for recall and in-process latency")
    p.add_argument("--passes", type=int, default=3, help="timed passes over the queries, in-process searches")
    p.add_argument("--requests", type=int, default=1000, help="gRPC requests per k for latency")
    p.add_argument("--nprobes", type=int, nargs="+", default=[4, 8, 12, 16, 20, 24, 32, 48, 64])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/ann.json")
    a = p.parse_args(argv)
    load_before = os.getloadavg()

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import faiss
    faiss.omp_set_num_threads(1)

    results = {"vectors": "clustered synthetic (benchmarks/ann.py clustered_vectors); no trained model with a "
                          "catalogue this size exists here", "host": platform.node(), "cpus": os.cpu_count(),
               "runs": []}
    for size in a.sizes:
        results["runs"].append(run_size(size, a))
    results["load_avg_before"], results["load_avg_after"] = load_before, os.getloadavg()
    results["markdown"] = _markdown(results)
    print(results["markdown"])
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2, default=str)
        with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
            f.write("# Million-item retrieval (`make bench-ann`)\n\n" + results["markdown"] + "\n")
        _plot(results, os.path.splitext(a.out)[0] + ".png")
    return results


if __name__ == "__main__":
    main()
