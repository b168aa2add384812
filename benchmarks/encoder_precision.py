"""Catalogue embedding at float32 vs bfloat16 (`ModelConfig.catalogue_embedding_precision`), same run.

    python -m benchmarks.encoder_precision [--items data/sample/items ...] [--movielens DIR] [--n 3000]
                                           [--rounds 3] [--model-dir models/minilm] [--out benchmarks/results]

For each text source (catalogue CSVs in the contract layout, and ml-latest-small's titles + genres with
`--movielens`), the MiniLM encoder embeds the same texts with `encode_texts` (dynamic padding, the
CatalogEmbedder's path) alternately at float32 and bfloat16, `--rounds` times each, after one untimed
warm-up of each (graph instantiation); the table reports the median texts/s of each, their ratio, and how
far the bfloat16 vectors are from the float32 ones (cosine, max |difference|). Writes encoder_precision.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Optional, Sequence

import numpy as np

from benchmarks.machine import cpu_description
from encoder.precision import cpu_has_native_bfloat16
from encoder.text_embedding import encode_texts

PRECISIONS = ("float32", "bfloat16")


def source_texts(items: Sequence[str], movielens: Optional[str], n: int) -> dict[str, list[str]]:
    """{source name: its first `n` item texts}, built as the pipeline builds them."""
    from benchmarks.encoder_throughput import catalogue_sample_texts

    sources = {path: catalogue_sample_texts(path, n) for path in items}
    if movielens:
        from benchmarks import quality

        _, frame = quality.load_data(movielens, "auto")
        sources[os.path.basename(os.path.normpath(movielens))] = quality.item_texts(frame)[:n]
    return sources


def compare(pre: str, enc: str, texts: list[str], rounds: int) -> dict:
    """Alternating timed runs of both precisions on `texts`: median texts/s and the vectors' agreement."""
    vectors, speeds = {}, {p: [] for p in PRECISIONS}
    for precision in PRECISIONS:     # warm-up: each sequence length's graph instantiated at each precision
        encode_texts(pre, enc, texts, log_every=0, precision=precision)
    for _ in range(rounds):
        for precision in PRECISIONS:
            start = time.perf_counter()
            vectors[precision] = encode_texts(pre, enc, texts, log_every=0, precision=precision)
            speeds[precision].append(len(texts) / (time.perf_counter() - start))
    full, reduced = vectors["float32"], vectors["bfloat16"]
    cosine = np.sum(full * reduced, axis=1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(reduced, axis=1))
    median = {p: float(np.median(s)) for p, s in speeds.items()}
    return {"texts": len(texts), "texts_per_s": median, "runs_texts_per_s": speeds,
            "speedup": median["bfloat16"] / median["float32"], "min_cosine": float(cosine.min()),
            "mean_cosine": float(cosine.mean()), "max_abs_diff": float(np.abs(full - reduced).max())}


def write_markdown(result: dict, path: str) -> None:
    lines = ["# Catalogue embedding precision (`python -m benchmarks.encoder_precision`)", "",
             f"MiniLM through `encode_texts` (the CatalogEmbedder's path), {result['rounds']} alternating runs of "
             f"each precision, median. CPU: {result['machine'].get('cpu', 'not recorded')}, native bfloat16: "
             f"{result['machine']['native_bfloat16']}; "
             f"{result['machine']['cpus']} CPUs; load average {result['machine']['loadavg_1m'][0]:.1f} -> "
             f"{result['machine']['loadavg_1m'][1]:.1f}.", "",
             "| texts | n | float32 texts/s | bfloat16 texts/s | speedup | min cosine | max abs diff |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["sources"].items():
        lines.append(f"| {name} | {r['texts']} | {r['texts_per_s']['float32']:.0f} | "
                     f"{r['texts_per_s']['bfloat16']:.0f} | {r['speedup']:.2f}x | {r['min_cosine']:.5f} | "
                     f"{r['max_abs_diff']:.4f} |")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", action="append", help="item CSV or folder in the contract layout "
                                                         "(repeatable; default data/sample/items)")
    parser.add_argument("--movielens", help="a MovieLens folder (ml-latest-small) as one more source")
    parser.add_argument("--n", type=int, default=3000, help="texts per source (default 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each precision (default 3)")
    parser.add_argument("--model-dir", default="models/minilm", help="folder with preprocess/ and encoder/")
    parser.add_argument("--out", default="benchmarks/results", help="folder for encoder_precision.{json,md}")
    args = parser.parse_args(argv)

    pre, enc = (os.path.join(args.model_dir, name) for name in ("preprocess", "encoder"))
    if not (os.path.isdir(pre) and os.path.isdir(enc)):
        parser.error(f"no preprocess/ and encoder/ in {args.model_dir} (make encoder exports them)")
    load_before = os.getloadavg()[0]
    sources = {name: compare(pre, enc, texts, args.rounds)
               for name, texts in source_texts(args.items or ["data/sample/items"], args.movielens, args.n).items()}
    result = {"rounds": args.rounds, "sources": sources,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu": cpu_description(),
                          "native_bfloat16": cpu_has_native_bfloat16(),
                          "loadavg_1m": [load_before, os.getloadavg()[0]]}}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "encoder_precision.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    write_markdown(result, os.path.join(args.out, "encoder_precision.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
