"""CatalogEmbedder: BERT embeddings of every catalogue item text, cached across runs, computed in Beam.

Each item's text (`trainer.item_text.item_text`, the same function the serving graph uses) is keyed by
its sha256; the embeddings of the previous run (the latest `CatalogEmbeddings` artifact, resolved by
the pipeline's Resolver) are reused when the encoder fingerprint (`encoder.beam_inference`) matches,
and only texts not seen before go through Beam's `RunInference`. A rerun after 1% of the item texts
changed encodes that 1%; with a new encoder everything is encoded again.

    resolver = tfx.dsl.Resolver(strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
                                embeddings=tfx.dsl.Channel(type=CatalogEmbeddings))
    embedder = CatalogEmbedder(items=item_gen.outputs["examples"], previous=resolver.outputs["embeddings"],
                               preprocess_handle=..., encoder_handle=..., output_key="sentence_embedding")
    # CatalogTrainer(..., embeddings=embedder.outputs["embeddings"])

Output: gzipped TFRecords of tf.Example {text_sha256: bytes, embedding: float [H]}, one per distinct
text of the current catalogue, plus `fingerprint.txt`; the artifact's `texts_encoded` / `texts_reused`
custom properties say how much was computed.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import apache_beam as beam
import numpy as np
from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact, artifact_utils, component_spec, standard_artifacts
from tfx.utils import io_utils

from pipeline import example_reader
from schema import contract

ITEMS_KEY = "items"
PREVIOUS_KEY = "previous"
EMBEDDINGS_KEY = "embeddings"
FINGERPRINT_FILE = "fingerprint.txt"
FILE_PREFIX = "embeddings"
KEY_FEATURE = "text_sha256"
VECTOR_FEATURE = "embedding"
_METRICS = "CatalogEmbedder"
_REUSED = beam.metrics.Metrics.counter(_METRICS, "texts_reused")
_ENCODED = beam.metrics.Metrics.counter(_METRICS, "texts_encoded")


class CatalogEmbeddings(artifact.Artifact):
    """Item-text embeddings keyed by text hash, for one encoder fingerprint."""

    TYPE_NAME = "tower_recs.CatalogEmbeddings"


class CatalogEmbedderSpec(component_spec.ComponentSpec):
    """Inputs: the catalogue and (optional) the previous embeddings; output: the embeddings."""

    PARAMETERS = {
        "preprocess_handle": component_spec.ExecutionParameter(type=str),
        "encoder_handle": component_spec.ExecutionParameter(type=str),
        "output_key": component_spec.ExecutionParameter(type=str),
        "precision": component_spec.ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        ITEMS_KEY: component_spec.ChannelParameter(type=standard_artifacts.Examples),
        PREVIOUS_KEY: component_spec.ChannelParameter(type=CatalogEmbeddings, optional=True),
    }
    OUTPUTS = {EMBEDDINGS_KEY: component_spec.ChannelParameter(type=CatalogEmbeddings)}


# -- Beam transforms -----------------------------------------------------------------------------------
class _KeyedTexts(beam.DoFn):
    """RecordBatch of catalogue rows -> (text sha256, text) per row (item_text of title, categories, description)."""

    def process(self, batch):
        import tensorflow as tf

        from encoder.beam_inference import text_key
        from trainer.item_text import item_text

        columns = {name: [b"" if v is None else v for v in example_reader.first_values(batch.column(name))]
                   for name in (contract.TITLE, contract.CATEGORIES, contract.DESCRIPTION)}
        if not columns[contract.TITLE]:
            return
        texts = item_text(tf.constant(columns[contract.TITLE]), tf.constant(columns[contract.CATEGORIES]),
                          tf.constant(columns[contract.DESCRIPTION])).numpy()
        for text in texts:
            decoded = text.decode("utf-8")
            yield text_key(decoded), decoded


def _parse(record: bytes) -> tuple[bytes, np.ndarray]:
    import tensorflow as tf

    example = tf.train.Example.FromString(record)
    features = example.features.feature
    return features[KEY_FEATURE].bytes_list.value[0], np.asarray(features[VECTOR_FEATURE].float_list.value,
                                                                   np.float32)


def _serialize(key: bytes, vector: np.ndarray) -> bytes:
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        KEY_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[key])),
        VECTOR_FEATURE: tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(vector, np.float32))),
    })).SerializeToString()


def _split_cached(kv):
    key, groups = kv
    if not groups["text"]:
        return  # no longer in the catalogue
    if groups["cached"]:
        _REUSED.inc()
        yield beam.pvalue.TaggedOutput("hit", (key, groups["cached"][0]))
    else:
        yield beam.pvalue.TaggedOutput("miss", (key, groups["text"][0]))


def build_embeddings(pipeline, items_pattern: str, output_prefix: str, handler,
                     previous_pattern: Optional[str] = None):
    """Adds the embedding job to `pipeline`: the catalogue's texts, reused vectors, RunInference for the rest."""
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    texts = (pipeline | "ReadItems" >> example_reader.beam_source(items_pattern, example_reader.ITEMS_SCHEMA)
             | "KeyedTexts" >> beam.ParDo(_KeyedTexts()) | "DistinctTexts" >> beam.Distinct())
    if previous_pattern:
        cached = (pipeline | "ReadPrevious" >> beam.io.ReadFromTFRecord(previous_pattern)
                  | "ParsePrevious" >> beam.Map(_parse))
    else:
        cached = pipeline | "NoPrevious" >> beam.Create([])
    split = ({"text": texts, "cached": cached} | "Join" >> beam.CoGroupByKey()
             | "Split" >> beam.FlatMap(_split_cached).with_outputs("hit", "miss"))

    def count_encoded(kv):
        _ENCODED.inc()
        return kv[0], kv[1].inference

    encoded = (split.miss | "Encode" >> RunInference(KeyedModelHandler(handler))
               | "Vectors" >> beam.Map(count_encoded))
    return ((split.hit, encoded) | "All" >> beam.Flatten() | "Serialize" >> beam.MapTuple(_serialize)
            | "Write" >> beam.io.WriteToTFRecord(output_prefix, file_name_suffix=".gz"))


def read_embeddings(file_pattern: str) -> dict[bytes, np.ndarray]:
    """{text sha256: vector} of a CatalogEmbeddings artifact's files (the trainer's lookup)."""
    import glob

    import tensorflow as tf

    files = sorted(glob.glob(file_pattern))
    out: dict[bytes, np.ndarray] = {}
    if not files:
        return out
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        key, vector = _parse(record.numpy())
        out[key] = vector
    return out


def embeddings_pattern(artifact_: types.Artifact) -> str:
    return os.path.join(artifact_.uri, FILE_PREFIX + "-*")


class CatalogEmbedderExecutor(base_beam_executor.BaseBeamExecutor):
    """Embeds the catalogue's texts, reusing the previous artifact's vectors for the same encoder."""

    def Do(self, input_dict: dict[str, list], output_dict: dict[str, list], exec_properties: dict[str, Any]) -> None:
        from encoder.beam_inference import TextEncoderModelHandler, encoder_fingerprint

        items = artifact_utils.get_single_instance(input_dict[ITEMS_KEY])
        output = artifact_utils.get_single_instance(output_dict[EMBEDDINGS_KEY])
        preprocess, encoder = exec_properties["preprocess_handle"], exec_properties["encoder_handle"]
        output_key = exec_properties.get("output_key") or "sentence_embedding"
        precision = exec_properties.get("precision") or "float32"
        fingerprint = encoder_fingerprint(preprocess, encoder, output_key, precision)
        previous_pattern = None
        for previous in input_dict.get(PREVIOUS_KEY) or []:
            path = os.path.join(previous.uri, FINGERPRINT_FILE)
            if os.path.exists(path) and io_utils.read_string_file(path).strip() == fingerprint:
                previous_pattern = embeddings_pattern(previous)
        pipeline = self._make_beam_pipeline()
        build_embeddings(pipeline, example_reader.split_pattern(items, contract.ITEMS_SPLIT),
                         os.path.join(output.uri, FILE_PREFIX),
                         TextEncoderModelHandler(preprocess, encoder, output_key, precision=precision),
                         previous_pattern)
        result = pipeline.run()
        result.wait_until_finish()
        counts = {name: _counter(result, name) for name in ("texts_encoded", "texts_reused")}
        io_utils.write_string_file(os.path.join(output.uri, FINGERPRINT_FILE), fingerprint)
        output.set_string_custom_property("encoder_fingerprint", fingerprint)
        for name, value in counts.items():
            output.set_int_custom_property(name, value)


def _counter(result, name: str) -> int:
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(_METRICS).with_name(name))
    return int(sum(c.committed or c.attempted or 0 for c in query["counters"]))


class CatalogEmbedder(base_beam_component.BaseBeamComponent):
    """Cached BERT embeddings of the catalogue's item texts (see the module docstring).

    Args:
      items: the catalogue ExampleGen output.
      preprocess_handle, encoder_handle, output_key: the TF Hub BERT (ModelConfig's fields).
      previous: the latest `CatalogEmbeddings` (a Resolver's output), or None.
      precision: "float32" or "bfloat16" (`ModelConfig.catalogue_embedding_precision`, `encoder/precision.py`);
        part of the cache's fingerprint, so vectors of one precision are never reused for the other.

    Outputs: `embeddings` (CatalogEmbeddings), read by the CatalogTrainer.
    """

    SPEC_CLASS = CatalogEmbedderSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(CatalogEmbedderExecutor)

    def __init__(self, items: types.BaseChannel, preprocess_handle: str, encoder_handle: str,
                 output_key: str = "sentence_embedding", previous: Optional[types.BaseChannel] = None,
                 precision: str = "float32"):
        from encoder.precision import validate_precision

        spec = CatalogEmbedderSpec(items=items, previous=previous, preprocess_handle=preprocess_handle,
                                   encoder_handle=encoder_handle, output_key=output_key,
                                   precision=validate_precision(precision, "catalogue_embedding_precision"),
                                   embeddings=types.Channel(type=CatalogEmbeddings))
        super().__init__(spec=spec)
