"""The TFX pipeline definition, shared by the local and Kubeflow runners.

    interactions ─ CsvExampleGen ─ StatisticsGen ─ ExampleValidator ─┐
    items ──────── CsvExampleGen ─ StatisticsGen ─ ExampleValidator ─┴ AnomalyGate
    interactions ─ Transform (id vocabularies, history) ───────────────┐
    items + Transform ─ CatalogTrainer (two-tower, BERT item text) ─ Pusher
"""
from __future__ import annotations

from typing import Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from pipeline.components.anomaly_gate import AnomalyGate
from pipeline.components.catalog_trainer import ITEMS_SPLIT, CatalogTrainer
from trainer.model_config import ModelConfig


def _interaction_example_gen(interactions_path: str) -> tfx.components.CsvExampleGen:
    # The split is chronological per user and made by `data.prepare`, so ExampleGen
    # reads it as given instead of hashing rows into random splits.
    return tfx.components.CsvExampleGen(
        input_base=interactions_path,
        input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name="train", pattern="train/*"),
            tfx.proto.Input.Split(name="eval", pattern="eval/*"),
        ]),
    ).with_id("InteractionExampleGen")


def _item_example_gen(items_path: str) -> tfx.components.CsvExampleGen:
    return tfx.components.CsvExampleGen(
        input_base=items_path,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name=ITEMS_SPLIT, pattern="*")]),
        # One input split would otherwise be hashed into train/eval: the catalogue stays whole.
        output_config=tfx.proto.Output(split_config=tfx.proto.SplitConfig(
            splits=[tfx.proto.SplitConfig.Split(name=ITEMS_SPLIT, hash_buckets=1)])),
    ).with_id("ItemExampleGen")


def _validated(examples, schema_path: str, name: str):
    """StatisticsGen + ImportSchemaGen + ExampleValidator for one ExampleGen output."""
    statistics_gen = tfx.components.StatisticsGen(examples=examples).with_id(f"{name}StatisticsGen")
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path).with_id(f"{name}SchemaGen")
    validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    ).with_id(f"{name}ExampleValidator")
    return statistics_gen, schema_gen, validator


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    interactions_path: str,
    items_path: str,
    interactions_schema_path: str,
    items_schema_path: str,
    serving_model_dir: str,
    preprocessing_fn: str,
    run_fn: str,
    model_config: ModelConfig,
    train_steps: int = 0,
    eval_steps: int = 0,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[list[str]] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline; `serving_model_dir` is `<base>/<model_name>` (TF Serving's layout)."""
    interaction_gen = _interaction_example_gen(interactions_path)
    item_gen = _item_example_gen(items_path)
    i_stats, i_schema, i_validator = _validated(interaction_gen.outputs["examples"], interactions_schema_path,
                                                "Interaction")
    c_stats, c_schema, c_validator = _validated(item_gen.outputs["examples"], items_schema_path, "Item")
    gate = AnomalyGate(interaction_anomalies=i_validator.outputs["anomalies"],
                       item_anomalies=c_validator.outputs["anomalies"])

    transform = tfx.components.Transform(
        examples=interaction_gen.outputs["examples"],
        schema=i_schema.outputs["schema"],
        preprocessing_fn=preprocessing_fn,
    )
    transform.add_upstream_node(gate)

    trainer = CatalogTrainer(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=i_schema.outputs["schema"],
        items=item_gen.outputs["examples"],
        run_fn=run_fn,
        # num_steps=0 means "ModelConfig.epochs over the data" (see trainer/task.py).
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=eval_steps),
        custom_config={"model": model_config.to_dict()},
    )
    trainer.add_upstream_node(gate)

    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)),
    )

    components = [interaction_gen, item_gen, i_stats, i_schema, i_validator, c_stats, c_schema, c_validator,
                  gate, transform, trainer, pusher]
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args,
    )
