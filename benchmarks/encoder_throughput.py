"""Encoder throughput: fixed 128-token padding vs `encode_texts` dynamic per-batch padding.

    python -m benchmarks.encoder_throughput [--n 1000] [--items data/sample/items] [--model-dir models/minilm]
                                            [--batch-size 128] [--out benchmarks/results/encoder_throughput.json]

Texts are item texts: synthetic "Title (1999) Genre|Genre" by default, or a catalogue's texts
built as the pipeline builds them (`--items`: item CSVs in the contract layout). If --model-dir has no exported modules, the
MiniLM modules are exported there (or to a temporary folder) first. Model loading and one
warm-up batch are excluded from the timings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from data.item_csv import read_items
from encoder.export import build_hub_modules
from encoder.text_embedding import TextEncoder, _cached_encoder, encode_texts
from trainer.item_text import catalogue_texts

GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western"]
WORDS = ["love", "night", "story", "man", "city", "last", "dark", "king", "return", "house",
         "dead", "girl", "world", "blue", "secret", "life", "summer", "war", "star", "river",
         "lost", "american", "time", "game", "little", "big", "brother", "dream", "fire", "road"]


def synthetic_texts(n: int, seed: int = 0) -> List[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        title = " ".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(1, 5)))
        genres = "|".join(rng.sample(GENRES, rng.randint(1, 4)))
        texts.append(f"{title} ({rng.randint(1920, 2020)}) {genres}")
    return texts


def catalogue_sample_texts(path: str, n: Optional[int]) -> List[str]:
    """The first `n` item texts of a catalogue CSV (or folder of them), built as the pipeline builds them."""
    texts = catalogue_texts(read_items(path))
    return texts[:n] if n else texts


def fixed_padding(encoder: TextEncoder, texts: Sequence[str], batch_size: int,
                  output_key: str) -> np.ndarray:
    out = []
    for i in range(0, len(texts), batch_size):
        inputs = encoder.preprocess_layer(tf.constant(list(texts[i:i + batch_size])))
        out.append(encoder.encoder_layer(inputs)[output_key].numpy())
    return np.concatenate(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of texts (default 1000)")
    parser.add_argument("--items", help="item catalogue CSV, or a folder of them, in the contract layout "
                                         "(e.g. data/sample/items); default: synthetic texts")
    parser.add_argument("--model-dir", help="folder with preprocess/ and encoder/ (exported "
                                            "there if missing; default: a temporary folder)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output-key", default="sentence_embedding")
    parser.add_argument("--out", default="benchmarks/results/encoder_throughput.json")
    args = parser.parse_args(argv)

    texts = catalogue_sample_texts(args.items, args.n) if args.items else synthetic_texts(args.n)
    tmp = None
    model_dir = args.model_dir
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory()
        model_dir = tmp.name
    pre = os.path.join(model_dir, "preprocess")
    enc = os.path.join(model_dir, "encoder")
    if not (os.path.isdir(pre) and os.path.isdir(enc)):
        print(f"exporting MiniLM modules to {model_dir} ...", file=sys.stderr)
        pre, enc = build_hub_modules(model_dir)

    load_before = os.getloadavg()[0]
    encoder = _cached_encoder(pre, enc)  # encode_texts reuses this instance
    warm = texts[:args.batch_size]
    fixed_padding(encoder, warm, args.batch_size, args.output_key)
    encode_texts(pre, enc, warm, batch_size=args.batch_size, output_key=args.output_key)

    t0 = time.perf_counter()
    fixed = fixed_padding(encoder, texts, args.batch_size, args.output_key)
    t_fixed = time.perf_counter() - t0
    t0 = time.perf_counter()
    dynamic = encode_texts(pre, enc, texts, batch_size=args.batch_size,
                           output_key=args.output_key)
    t_dynamic = time.perf_counter() - t0

    tokens = encoder.tokenize(texts)
    lengths = np.minimum([len(t) for t in tokens], encoder.max_seq_length - 2) + 2
    max_abs = float(np.abs(fixed - dynamic).max())
    result = {
        "texts": len(texts),
        "source": args.items or "synthetic",
        "batch_size": args.batch_size,
        "output_key": args.output_key,
        "mean_tokens": float(np.mean(lengths)),
        "max_tokens": int(np.max(lengths)),
        "fixed_128": {"seconds": t_fixed, "texts_per_s": len(texts) / t_fixed},
        "dynamic": {"seconds": t_dynamic, "texts_per_s": len(texts) / t_dynamic},
        "speedup": t_fixed / t_dynamic,
        "max_abs_diff_fixed_vs_dynamic": max_abs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__,
                    # shared machine: 1-minute load averages before/after the timed runs
                    "loadavg_1m": [load_before, os.getloadavg()[0]]},
    }
    print(f"\n| padding | texts | seconds | texts/s |\n|---|---:|---:|---:|\n"
          f"| fixed {encoder.max_seq_length} | {len(texts)} | {t_fixed:.2f} | "
          f"{result['fixed_128']['texts_per_s']:.1f} |\n"
          f"| dynamic (encode_texts) | {len(texts)} | {t_dynamic:.2f} | "
          f"{result['dynamic']['texts_per_s']:.1f} |\n\n"
          f"speedup x{result['speedup']:.2f}; mean packed length {result['mean_tokens']:.1f} "
          f"tokens; max |fixed - dynamic| = {max_abs:.2e}; load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
