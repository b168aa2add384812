"""SpanWindowStrategy: the interaction Examples of the last `num_spans` ingested spans (a rolling window).

TFX 1.16's ExampleGen resolves `{SPAN}` to one span per run (the latest, or a RangeConfig static range of
one span), so a window of spans is a Resolver over the spans ExampleGen ingested in this and earlier runs,
TFX's RangeConfig `rolling_range` semantics. TFX's SpanRangeStrategy does that but returns every artifact of
a span: a span ingested twice (its files changed and ExampleGen ran again) would be trained on twice. This
strategy keeps the newest artifact of each span:

    window = tfx.dsl.Resolver(
        strategy_class=SpanWindowStrategy, config={"num_spans": 3},
        examples=tfx.dsl.Channel(type=Examples, producer_component_id="InteractionExampleGen",
                                 output_key="examples")).with_id("SpanWindowResolver")
    window.add_upstream_node(interaction_gen)   # resolve after this run's span is ingested
    transform = tfx.components.Transform(examples=window.outputs["examples"], ...)

The window ends at the newest span ingested so far, or at `end_span` when the run pins one
(`SpanConfig.pin`, a backfill): then it is spans end_span - num_spans + 1 .. end_span, like a static range.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import ml_metadata as mlmd
from tfx import types
from tfx.dsl.components.common import resolver

EXAMPLES_KEY = "examples"


def span_of(artifact: types.Artifact) -> int:
    """The span of an ExampleGen output: ExampleGen records it as the custom property "span" (the
    `span` property stays 0), as TFX's SpanRangeStrategy reads it."""
    if artifact.has_custom_property("span"):
        return int(artifact.get_int_custom_property("span") or artifact.get_string_custom_property("span") or 0)
    return int(artifact.span or 0)


class SpanWindowStrategy(resolver.ResolverStrategy):
    """The newest Examples artifact of each of the last `num_spans` spans up to `end_span` (0: the newest
    ingested)."""

    def __init__(self, num_spans: int = 1, end_span: int = 0):
        if num_spans < 1:
            raise ValueError(f"SpanWindowStrategy num_spans must be >= 1, got {num_spans}")
        self._num_spans = num_spans
        self._end_span = end_span

    def resolve_artifacts(self, store: mlmd.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        del store
        newest: Dict[int, types.Artifact] = {}
        for artifact in input_dict.get(EXAMPLES_KEY, []):
            span = span_of(artifact)
            if self._end_span and span > self._end_span:
                continue
            if span not in newest or artifact.id > newest[span].id:
                newest[span] = artifact
        spans = sorted(newest, reverse=True)[:self._num_spans]
        if not spans:
            return None  # nothing ingested yet: the run cannot train
        return {EXAMPLES_KEY: [newest[span] for span in spans]}
