"""A TFX Trainer that also receives the item catalogue as a tracked input.

The stock Trainer takes one `examples` channel. A retrieval model must also see
every catalogue item (including items nobody has interacted with yet) to build
its serving index, so this component adds an `items` channel of `Examples` and
hands its files to `run_fn` as `fn_args.custom_config["item_files"]`. Everything
else (spec parameters, executor, `run_fn` contract) is the stock Trainer's.

    trainer = CatalogTrainer(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        items=item_example_gen.outputs["examples"],
        run_fn="trainer.run_fn.run_fn",
        train_args=tfx.proto.TrainArgs(num_steps=100),
        eval_args=tfx.proto.EvalArgs(num_steps=10))
"""
from __future__ import annotations

import os
from typing import Any, Optional

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.components.trainer import fn_args_utils
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, component_spec, standard_artifacts, standard_component_specs
from tfx.utils import json_utils

from pipeline.components.catalog_embedder import CatalogEmbeddings, embeddings_pattern
from schema import contract

ITEMS_KEY = "items"
ITEM_FILES_KEY = "item_files"
EMBEDDINGS_KEY = "embeddings"
EMBEDDING_FILES_KEY = "embedding_files"


class CatalogTrainerSpec(component_spec.ComponentSpec):
    """The stock TrainerSpec plus an `items` input."""

    PARAMETERS = standard_component_specs.TrainerSpec.PARAMETERS
    INPUTS = {
        **standard_component_specs.TrainerSpec.INPUTS,
        ITEMS_KEY: component_spec.ChannelParameter(type=standard_artifacts.Examples),
        EMBEDDINGS_KEY: component_spec.ChannelParameter(type=CatalogEmbeddings, optional=True),
    }
    OUTPUTS = standard_component_specs.TrainerSpec.OUTPUTS
    TYPE_ANNOTATION = standard_component_specs.TrainerSpec.TYPE_ANNOTATION


class CatalogTrainerExecutor(trainer_executor.GenericExecutor):
    """GenericExecutor that adds the catalogue's file pattern to custom_config."""

    def _GetFnArgs(self, input_dict, output_dict, exec_properties) -> fn_args_utils.FnArgs:
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        items_uri = artifact_utils.get_split_uri(input_dict[ITEMS_KEY], contract.ITEMS_SPLIT)
        fn_args.custom_config = dict(fn_args.custom_config or {})
        fn_args.custom_config[ITEM_FILES_KEY] = os.path.join(items_uri, "*")
        if input_dict.get(EMBEDDINGS_KEY):
            fn_args.custom_config[EMBEDDING_FILES_KEY] = embeddings_pattern(input_dict[EMBEDDINGS_KEY][0])
        return fn_args


class CatalogTrainer(base_component.BaseComponent):
    """Trainer with an extra `items` channel (the catalogue as `Examples`); see the module docstring.

    Args:
      examples, transform_graph, schema, train_args, eval_args: the stock Trainer's.
      items: the catalogue ExampleGen output; its `items` split reaches `run_fn` as
        `fn_args.custom_config["item_files"]` (a file pattern).
      run_fn: dotted path of the training function, e.g. "trainer.run_fn.run_fn".
      custom_config: JSON-serialisable dict passed to `run_fn` (the pipeline's `{"model": ...}`).
      embeddings: optional CatalogEmbedder output (cached item-text vectors); its files reach `run_fn` as
        `fn_args.custom_config["embedding_files"]`, else `run_fn` embeds the catalogue itself.
      base_model: optional Model to warm-start from (the stock Trainer's `base_model`, e.g. a Resolver with
        LatestBlessedModelStrategy); `run_fn` gets its serving path as `fn_args.base_model`.

    Outputs: `model` (the serving SavedModel) and `model_run` (TensorBoard logs), as the stock Trainer.
    """

    SPEC_CLASS = CatalogTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(CatalogTrainerExecutor)

    def __init__(
        self,
        examples: types.BaseChannel,
        transform_graph: types.BaseChannel,
        schema: types.BaseChannel,
        items: types.BaseChannel,
        run_fn: str,
        train_args: Optional[trainer_pb2.TrainArgs] = None,
        eval_args: Optional[trainer_pb2.EvalArgs] = None,
        custom_config: Optional[dict[str, Any]] = None,
        embeddings: Optional[types.BaseChannel] = None,
        base_model: Optional[types.BaseChannel] = None,
    ):
        spec = CatalogTrainerSpec(
            examples=examples,
            transform_graph=transform_graph,
            schema=schema,
            items=items,
            embeddings=embeddings,
            base_model=base_model,
            train_args=train_args or trainer_pb2.TrainArgs(),
            eval_args=eval_args or trainer_pb2.EvalArgs(),
            run_fn=run_fn,
            custom_config=json_utils.dumps(custom_config or {}),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
        )
        super().__init__(spec=spec)
