"""What a benchmark ran on, for its results file: timings compare only between runs on the same CPU.

    >>> from benchmarks.machine import cpu_description
    >>> cpu_description()          # e.g. 'AMD EPYC (avx512_bf16)'
"""
from __future__ import annotations

import platform


def cpu_description() -> str:
    """The CPU's model name and its bfloat16 instructions (/proc/cpuinfo); bfloat16 speed-ups depend on them."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    flags = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in info]
    return f"{model} ({', '.join(flags) or 'no bfloat16 instructions'})"
