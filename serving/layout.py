"""TF Serving's on-disk layout of a model: the one place its names are written down.

TF Serving watches ``<base_path>/<version>/`` where ``<version>`` is a decimal integer directory holding a
``saved_model.pb``; it replays ``assets.extra/tf_serving_warmup_requests`` (at most 1,000 PredictionLog
records) before a version takes traffic. The trainer writes this layout, the local server and the
ServingCheck probe read it, the tools list it.

    >>> version_dirs("outputs/serving_model/tower_recs")        # [1700000000, 1700000600]
    >>> latest_version_dir("outputs/serving_model/tower_recs")  # '.../tower_recs/1700000600'

Standard library only: ``pipeline/components/serving_probe.py`` runs with ``python -I`` (no project on
``sys.path``) and gets these values from its request file.
"""
from __future__ import annotations

import os

SAVED_MODEL_FILE = "saved_model.pb"
# Relative to a version directory (tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc).
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


def version_dirs(base_path: str) -> list[int]:
    """Versions TF Serving would see under ``base_path``: integer-named dirs holding a saved_model.pb, sorted.

    Anything else (``.tmp-*``, ``incoming-123``, a dir still being copied without its saved_model.pb) is
    ignored, which is how a pusher makes a version appear atomically: write elsewhere, then rename.
    """
    try:
        names = os.listdir(base_path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names
                  if n.isdigit() and os.path.isfile(os.path.join(base_path, n, SAVED_MODEL_FILE)))


def latest_version_dir(base_path: str) -> str:
    """Path of the highest version under ``base_path``; FileNotFoundError naming the dir when there is none."""
    versions = version_dirs(base_path)
    if not versions:
        raise FileNotFoundError(f"No model version (<int>/{SAVED_MODEL_FILE}) under {base_path}")
    return os.path.join(base_path, str(versions[-1]))
