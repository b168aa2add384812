"""Ops that stock TF Serving 2.16 can run: TF core 2.16 + TF Text 2.12.1 (what it bundles).

TF core's ops are whatever is registered in a process that imported only `tensorflow`
(`core_op_names()`); TF Text's are the explicit list below, since the installed
tensorflow-text (2.16) registers ops that TF Text 2.12 does not have.
"""
from __future__ import annotations

# The probe runs isolated (no project imports), so the op walk lives there and is reused here.
from pipeline.components import serving_probe

# Each name is registered by TF Text 2.12 (the first four since TF Text 2.0;
# output_row_partition_type of WordpieceTokenizeWithOffsets since 2.5). Anything else must be
# checked against TF Text 2.12 before being added.
TF_TEXT_2_12_OPS = frozenset({
    "CaseFoldUTF8",
    "NormalizeUTF8",
    "RegexSplitWithOffsets",
    "WordpieceTokenizeWithOffsets",
    "WhitespaceTokenizeWithOffsets",
    "UnicodeScriptTokenizeWithOffsets",
    "TFText>FastWordpieceTokenizeWithOffsets",
})


def core_op_names() -> set:
    """Names of every op registered in this process (call before importing tensorflow_text)."""
    import tensorflow as tf

    return serving_probe._registered_ops(tf)


def graph_op_names(saved_model_dir: str) -> set:
    """Every op used in a SavedModel's graphs, function library included (function calls excluded)."""
    return serving_probe._graph_ops(saved_model_dir)
