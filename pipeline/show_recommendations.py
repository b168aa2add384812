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

from data.item_csv import read_titles
from pipeline import configs
from schema import contract


def latest_version_dir(model_base: str) -> str:
    """`<model_base>/<highest numeric version>`, the version TF Serving serves; FileNotFoundError if none."""
    versions = [d for d in os.listdir(model_base) if d.isdigit()] if os.path.isdir(model_base) else []
    if not versions:
        raise FileNotFoundError(f"No pushed model versions under {model_base}: run `make run` first.")
    return os.path.join(model_base, max(versions, key=int))


def last_history(interactions_dir: str, user_id: str | None) -> tuple[str, list[str]]:
    """The user's most recent history row in the eval split (the first user if none is given)."""
    path = os.path.join(interactions_dir, contract.EVAL_SPLIT)
    rows = []
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), newline="", encoding="utf-8") as f:
            rows += [r for r in csv.DictReader(f) if user_id is None or r[contract.USER_ID] == user_id]
            if rows and user_id is None:
                user_id = rows[0][contract.USER_ID]
                rows = [r for r in rows if r[contract.USER_ID] == user_id]
    if not rows:
        return user_id or "", []
    latest = max(rows, key=lambda r: int(r[contract.TIMESTAMP]))
    return latest[contract.USER_ID], (latest.get(contract.HISTORY) or "").split()


def main(argv: list[str] | None = None) -> int:
    """Prints the top-k table; returns 0 when the model gave k distinct items, else 1."""
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
    user_id, history = last_history(os.path.join(args.data, contract.INTERACTIONS_DIR), args.user)
    titles = read_titles(os.path.join(args.data, contract.ITEMS_DIR))
    recommend = tf.saved_model.load(version_dir).signatures[contract.SERVING_DEFAULT]
    padded = tf.constant([history or [contract.PAD]])
    result = recommend(**{contract.USER_ID: tf.constant([user_id]), contract.HISTORY: padded,
                          contract.INPUT_EXCLUDE: padded, contract.INPUT_K: tf.constant(args.k)})
    print(f"\nTop-{args.k} for user {user_id} from {version_dir} (history: {len(history)} items)")
    item_ids = result[contract.OUTPUT_ITEM_IDS].numpy()[0]
    for rank, (item, score) in enumerate(zip(item_ids, result[contract.OUTPUT_SCORES].numpy()[0]), 1):
        item = item.decode()
        print(f"{rank:>3}  {item:<10} {float(score):7.3f}  {titles.get(item, '?')}")
    return 0 if len(np.unique(item_ids)) == args.k else 1


if __name__ == "__main__":
    sys.exit(main())
