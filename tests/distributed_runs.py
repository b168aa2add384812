"""Tiny training runs in worker processes (benchmarks/distributed.py's worker), shared by the distributed
and GPU-path tests: the single-process float32 run is their common baseline, so it runs once per session.

    results, out_dir = training_run(workers=2)          # [chief result, worker result], and where they ran
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

from benchmarks.distributed import run_workers

TINY = ("--examples", "4096", "--eval-examples", "1024", "--epochs", "2", "--batch-size", "256", "--users", "50",
        "--items", "200", "--text-dim", "16", "--tiny")


@functools.lru_cache(maxsize=None)
def training_run(workers: int = 1, flags: tuple[str, ...] = ()) -> tuple[list[dict], str]:
    """Each worker's result JSON (chief first) and the run's directory (`<dir>/export` is the model)."""
    out = tempfile.mkdtemp(prefix="tower_recs_training_run_")
    atexit.register(shutil.rmtree, out, True)
    return run_workers(workers, out, [*TINY, *flags, "--export-dir", os.path.join(out, "export")], timeout_s=300), out
