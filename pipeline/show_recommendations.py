"""Prints the top-k of the latest pushed model for one user, with item titles.

    python -m pipeline.show_recommendations --user u0001 --k 10

Loads the SavedModel the way TF Serving does (its `serving_default` signature,
with only TensorFlow and TF Text imported for the model's ops).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

from pipeline import configs


def latest_version_dir(model_base: str) -> str:
    versions = [d for d in os.listdir(model_base) if d.isdigit()] if os.path.isdir(model_base) else []
    if not versions:
        raise FileNotFoundError(f"No pushed model versions under {model_base}: run `make run` first.")
    return os.path.join(model_base, max(versions, key=int))


def read_titles(items_dir: str) -> dict[str, str]:
    titles = {}
    for name in sorted(os.listdir(items_dir)):
        if name.endswith(".csv"):
            with open(os.path.join(items_dir, name), newline="", encoding="utf-8") as f:
                titles.update({row["item_id"]: row["title"] for row in csv.DictReader(f)})
    return titles


def last_history(interactions_dir: str, user_id: str | None) -> tuple[str, list[str]]:
    """The user's most recent history row in the eval split (the first user if none is given)."""
    path = os.path.join(interactions_dir, "eval")
    rows = []
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), newline="", encoding="utf-8") as f:
            rows += [r for r in csv.DictReader(f) if user_id is None or r["user_id"] == user_id]
            if rows and user_id is None:
                user_id = rows[0]["user_id"]
                rows = [r for r in rows if r["user_id"] == user_id]
    if not rows:
        return user_id or "", []
    latest = max(rows, key=lambda r: int(r["timestamp"]))
    return latest["user_id"], (latest.get("history") or "").split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user", help="user id (default: the first user of the eval split)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--model_base", default=os.path.join(configs.SERVING_MODEL_DIR, configs.MODEL_NAME))
    parser.add_argument("--data", default=configs.DATA_PATH, help="data directory in the contract layout")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the TF Text ops the model's graph uses)

    version_dir = latest_version_dir(args.model_base)
    user_id, history = last_history(os.path.join(args.data, "interactions"), args.user)
    titles = read_titles(os.path.join(args.data, "items"))
    recommend = tf.saved_model.load(version_dir).signatures["serving_default"]
    result = recommend(user_id=tf.constant([user_id]), history=tf.constant([history or [""]]),
                       exclude=tf.constant([history or [""]]), k=tf.constant(args.k))
    print(f"\nTop-{args.k} for user {user_id} from {version_dir} (history: {len(history)} items)")
    for rank, (item, score) in enumerate(zip(result["item_ids"].numpy()[0], result["scores"].numpy()[0]), 1):
        item = item.decode()
        print(f"{rank:>3}  {item:<10} {float(score):7.3f}  {titles.get(item, '?')}")
    return 0 if len(np.unique(result["item_ids"].numpy()[0])) == args.k else 1


if __name__ == "__main__":
    sys.exit(main())
