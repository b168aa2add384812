"""Reduced-precision encoding on CPU, scoped to the calls that ask for it.

Grappler's oneDNN bfloat16 auto-mixed-precision pass rewrites a function's matmuls and their neighbours to
bfloat16 when the function is instantiated. `tf.config.optimizer.set_experimental_options` turns it on for the
whole process (every component the local orchestrator runs after it, the Trainer included); `bfloat16_calls`
turns it on only for the TF function calls made by this thread inside the `with` block, and restores the
previous call options after it, so later calls in the same process run the float32 graphs again::

    with bfloat16_calls():
        vectors = encoder.encode(texts)      # the encoder's graphs run with bfloat16 matmuls
    vectors32 = encoder.encode(texts)        # float32 again: TF caches one instantiation per call config

Measured on this project's 2-core CPU with AVX512_BF16 (MiniLM; the sample catalogue, the scaling benchmark's and
ml-latest-small's texts): 1.48-1.56x the texts/s, every vector within cosine 0.9998 of the float32 one
(`make bench-encoder`, benchmarks/results/encoder_precision.md). CPUs without native
bfloat16 emulate it (slower): `cpu_has_native_bfloat16` says which this is; where oneDNN has no bfloat16 at all
(no AVX512F), the encoding stays float32 with a warning (`onednn_runs_bfloat16`).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

PRECISIONS = ("float32", "bfloat16")

logger = logging.getLogger(__name__)


def validate_precision(precision: str, name: str = "precision") -> str:
    """`precision` if it is one of `PRECISIONS`, else a ValueError naming `name`."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name}={precision!r}: must be one of {PRECISIONS}")
    return precision


def onednn_runs_bfloat16() -> bool:
    """Whether TensorFlow's oneDNN kernels run bfloat16 on this CPU at all (natively or emulated on AVX512F);
    where they do not, grappler's pass would leave the graph alone."""
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_utils   # TF's own check, as its bfloat16 tests use

    return bool(_pywrap_utils.IsDataTypeSupportedByOneDNNOnThisCPU(tf.bfloat16.as_datatype_enum))


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512_BF16 or AMX); False where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextlib.contextmanager
def bfloat16_calls() -> Iterator[None]:
    """TF function calls of this thread inside the block run with oneDNN bfloat16 auto mixed precision."""
    import tensorflow as tf
    from tensorflow.core.protobuf import rewriter_config_pb2
    # Private, pinned API: the per-thread call options that carry the graph rewriter config. The public
    # switch (tf.config.optimizer) is process-wide and sticks in threads that read it while it was on.
    from tensorflow.python.eager import context

    eager = context.context()
    saved = eager.function_call_options
    config = tf.compat.v1.ConfigProto.FromString(saved.config_proto_serialized or b"")
    config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    eager.function_call_options = context.FunctionCallOptions(executor_type=saved.executor_type, config_proto=config)
    try:
        yield
    finally:
        eager.function_call_options = saved


def uses_bfloat16(precision: str) -> bool:
    """Whether `precision` asks for bfloat16 and this CPU can run it; decided once per encoder (it reads the CPU's
    flags and warns): False for "float32", and, with a warning, where oneDNN has no bfloat16 (encoding stays
    float32); True with a warning where bfloat16 is emulated (slower)."""
    if validate_precision(precision) == "float32":
        return False
    if not onednn_runs_bfloat16():
        logger.warning("bfloat16 encoding was asked for, but TensorFlow's oneDNN has no bfloat16 on this CPU "
                       "(it needs AVX512F or AVX-NE-CONVERT): encoding in float32")
        return False
    if not cpu_has_native_bfloat16():
        logger.warning("bfloat16 encoding on a CPU without native bfloat16 (AVX512_BF16/AMX) is emulated and "
                       "slower than float32")
    return True
