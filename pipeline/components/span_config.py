"""Settings of spanned input and of the span-to-span drift check (no TFX import: `pipeline.configs` stays light).

Spans are time-ordered folders `<data>/interactions/span-<N>/{train,eval}/` (written by
`python -m data.sample|data.movielens|data.prepare ... --spans N`). Every field can be set for a run as
`TOWER_RECS_SPAN_<FIELD>` / `TOWER_RECS_DRIFT_<FIELD>` (pipeline/overrides.py):

    TOWER_RECS_SPAN_WINDOW=3 make run              # train on the last 3 spans, evaluate on the newest
    TOWER_RECS_SPAN_PIN=2 make run                 # ingest span 2 (backfill / rerun), not the latest
    TOWER_RECS_DRIFT_STOP_ON_DRIFT=1 make run      # drift between consecutive spans fails the run

Both configs check themselves when built, naming the setting:

    >>> SpanConfig(window=0)
    Traceback (most recent call last):
    ...
    ValueError: SpanConfig.window (TOWER_RECS_SPAN_WINDOW): must be >= 1, got 0
"""
from __future__ import annotations

import dataclasses
import json

from schema import contract

LAYOUTS = ("auto", "spans", "flat")


def _setting(cls: type, field: str, group: str) -> str:
    return f"{cls.__name__}.{field} (TOWER_RECS_{group}_{field.upper()})"


@dataclasses.dataclass(frozen=True)
class SpanConfig:
    """Which interaction spans a run reads.

    layout: "auto" (default): spans when `<interactions>/span-*` folders exist, else the unspanned
      `{train,eval}/` layout; "spans" / "flat" force one.
    window: the Trainer (through Transform) sees the last `window` ingested spans, the newest included
      (TFX's RangeConfig rolling range, resolved over ML Metadata); the evaluator always judges on the
      newest span's eval split. 1: the newest span only.
    pin: 0 (default): ExampleGen ingests the latest span (TFX's `{SPAN}` resolution); N > 0: span N
      (RangeConfig static range), e.g. to backfill older spans one run each so a window can cover them.
    """

    layout: str = "auto"
    window: int = 1
    pin: int = 0

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"{_setting(SpanConfig, 'layout', 'SPAN')}: must be one of {LAYOUTS}, got {self.layout!r}")
        if self.window < 1:
            raise ValueError(f"{_setting(SpanConfig, 'window', 'SPAN')}: must be >= 1, got {self.window}")
        if self.pin < 0:
            raise ValueError(f"{_setting(SpanConfig, 'pin', 'SPAN')}: must be >= 0 (0: the latest span), "
                             f"got {self.pin}")


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    """TFDV drift comparators between the train splits of consecutive spans, and what drift does.

    Thresholds (0 turns a comparator off). Defaults measured on consecutive spans of the sample data
    (`--spans 4`: L-infinity user_id <= 0.053, item_id <= 0.007, rating JS <= 0.087) and of
    ml-latest-small (`--spans 3`: user_id <= 0.077, item_id <= 0.004; rating JS 0.208 from span 1
    to 2, where MovieLens moved from whole to half stars, a real shift worth a warning):
      user_id_linf, item_id_linf: L-infinity distance of the id distributions (categorical).
      rating_js: Jensen-Shannon divergence of the rating histogram.
      timestamp_js: off by default: consecutive time spans never overlap, so it is always 1.
    stop_on_drift: False (default): drift is a warning in the RunReport; True: the run fails at the
      SpanDriftValidator, before Transform, and no model is trained or pushed.
    """

    user_id_linf: float = 0.2
    item_id_linf: float = 0.05
    rating_js: float = 0.1
    timestamp_js: float = 0.0
    stop_on_drift: bool = False

    def __post_init__(self):
        for field in ("user_id_linf", "item_id_linf", "rating_js", "timestamp_js"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{_setting(DriftConfig, field, 'DRIFT')}: must be in [0, 1] (0: off), got {value}")

    def comparators(self) -> dict[str, tuple[str, float]]:
        """{feature: (comparator, threshold)} of the comparators that are on."""
        out = {contract.USER_ID: ("infinity_norm", self.user_id_linf),
               contract.ITEM_ID: ("infinity_norm", self.item_id_linf),
               contract.RATING: ("jensen_shannon_divergence", self.rating_js),
               contract.TIMESTAMP: ("jensen_shannon_divergence", self.timestamp_js)}
        return {feature: spec for feature, spec in out.items() if spec[1] > 0}

    def to_json(self) -> str:
        """The config as the component's JSON execution property."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DriftConfig":
        """The config of a `to_json()` string ("" gives the defaults)."""
        return cls(**(json.loads(text) if text else {}))
