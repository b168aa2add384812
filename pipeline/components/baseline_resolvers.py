"""Resolver strategies over ML Metadata: the models a candidate must not fall behind.

TFX's LatestBlessedModelStrategy returns the latest *blessed* model, so a candidate allowed to be
5% worse than it can be 5% worse again next run: losses compound. The RetrievalEvaluator instead
compares with
  * the latest model Pusher actually pushed (what users are served now), and
  * the best, on today's eval data, of the last `window` blessed models,
so a chain of slightly worse models is stopped once it drifts `max_relative_drop` below any of them.

    pushed = tfx.dsl.Resolver(strategy_class=LatestPushedModelStrategy,
                              model=tfx.dsl.Channel(type=Model),
                              pushed_model=tfx.dsl.Channel(type=PushedModel)).with_id("LatestPushedModelResolver")
    recent = tfx.dsl.Resolver(strategy_class=RecentBlessedModelsStrategy, config={"window": 5},
                              model=tfx.dsl.Channel(type=Model),
                              model_blessing=tfx.dsl.Channel(type=ModelBlessing)).with_id("RecentBlessedModelsResolver")

KFP v2 compiles only TFX's stock strategies, so `create_pipeline(baseline_resolution="kfp")` uses
LatestBlessedModelStrategy there (see pipeline/pipeline.py).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver

MODEL_KEY = "model"
PUSHED_MODEL_KEY = "pushed_model"
MODEL_BLESSING_KEY = "model_blessing"
PUSHER_MODEL_INPUT = "model"     # the Pusher's input key of the model it pushes


def _input_model_id(store: mlmd.MetadataStore, artifact_id: int, input_key: str) -> Optional[int]:
    """Id of the artifact that the execution which output `artifact_id` read under `input_key`."""
    outputs = [e.execution_id for e in store.get_events_by_artifact_ids([artifact_id])
               if e.type == metadata_store_pb2.Event.OUTPUT]
    for event in store.get_events_by_execution_ids(outputs):
        if event.type == metadata_store_pb2.Event.INPUT and event.path.steps and \
                event.path.steps[0].key == input_key:
            return event.artifact_id
    return None


class LatestPushedModelStrategy(resolver.ResolverStrategy):
    """The Model of the latest PushedModel with `pushed` == 1 (found through the Pusher's events)."""

    def resolve_artifacts(self, store: mlmd.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        models = {m.id: m for m in input_dict.get(MODEL_KEY, [])}
        pushes = [p for p in input_dict.get(PUSHED_MODEL_KEY, []) if p.get_int_custom_property("pushed") == 1]
        for push in sorted(pushes, key=lambda a: a.id, reverse=True):
            model_id = _input_model_id(store, push.id, PUSHER_MODEL_INPUT)
            if model_id in models:
                return {MODEL_KEY: [models[model_id]], PUSHED_MODEL_KEY: [push]}
        return {MODEL_KEY: [], PUSHED_MODEL_KEY: []}


class RecentBlessedModelsStrategy(resolver.ResolverStrategy):
    """The models of the last `window` ModelBlessings with `blessed` == 1, newest first, each once."""

    def __init__(self, window: int = 5):
        if window < 1:
            raise ValueError(f"RecentBlessedModelsStrategy window must be >= 1, got {window}")
        self._window = window

    def resolve_artifacts(self, store: mlmd.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        del store  # the blessings carry `current_model_id`
        models = {m.id: m for m in input_dict.get(MODEL_KEY, [])}
        blessings = sorted((b for b in input_dict.get(MODEL_BLESSING_KEY, [])
                            if b.get_int_custom_property("blessed") == 1), key=lambda a: a.id, reverse=True)
        chosen, chosen_blessings = [], []
        for blessing in blessings:
            model = models.get(blessing.get_int_custom_property("current_model_id"))
            if model is not None and all(m.id != model.id for m in chosen):
                chosen.append(model)
                chosen_blessings.append(blessing)
            if len(chosen) == self._window:
                break
        return {MODEL_KEY: chosen, MODEL_BLESSING_KEY: chosen_blessings}
