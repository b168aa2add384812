"""Ops that stock TF Serving 2.16 can run: TF core 2.16 + TF Text 2.12.1 (what it bundles).

TF core's ops are whatever is registered in a process that imported only `tensorflow`
(`core_op_names()`); TF Text's are the explicit list below, since the installed
tensorflow-text (2.16) registers ops that TF Text 2.12 does not have.
"""
from __future__ import annotations

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
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import _pywrap_tf_session

    op_list = op_def_pb2.OpList()
    op_list.ParseFromString(_pywrap_tf_session.TF_GetBuffer(_pywrap_tf_session.TF_GetAllOpList()))
    return {op.name for op in op_list.op} | set(dir(tf.raw_ops))


def graph_op_names(saved_model_dir: str) -> set:
    """Every op used in a SavedModel's graphs, function library included (function calls excluded)."""
    import os

    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops, functions = set(), set()
    for meta_graph in proto.meta_graphs:
        ops |= {node.op for node in meta_graph.graph_def.node}
        for fn in meta_graph.graph_def.library.function:
            functions.add(fn.signature.name)
            ops |= {node.op for node in fn.node_def}
    return ops - functions
