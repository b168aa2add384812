"""Settings of the training/serving skew check (no TFX import, so `pipeline.configs` stays light).

One place for the thresholds: the pipeline's TrainingServingSkew step and `python -m serving.skew` both
build their TFDV skew comparators from a `SkewConfig`. Any field can be set for a pipeline run as
`TOWER_RECS_SKEW_<FIELD>` (pipeline/overrides.py), e.g. TOWER_RECS_SKEW_ACTION=stop.

    >>> SkewConfig(action="halt")
    Traceback (most recent call last):
    ...
    ValueError: SkewConfig.action (TOWER_RECS_SKEW_ACTION): must be 'warn' or 'stop', got 'halt'
"""
from __future__ import annotations

import dataclasses
import json

ACTIONS = ("warn", "stop")


@dataclasses.dataclass(frozen=True)
class SkewConfig:
    """TFDV skew comparators between the training data and the logged requests, and what a skew does."""

    # L-infinity distance (largest difference of one value's share) between the training interactions'
    # and the requests' distributions: of user ids, and of the item ids in histories. 0 turns one off.
    user_id_linf: float = 0.1
    history_item_linf: float = 0.1
    # Jensen-Shannon divergence of history lengths; 0 (default) only reports their statistics: requests
    # usually carry full histories while training rows include every user's first, short ones.
    history_length_jsd: float = 0.0
    # "warn": anomalies go into the run report and the run goes on; "stop": the run fails before training,
    # so nothing is trained or pushed.
    action: str = "warn"
    # Fewer logged query rows than this: the comparison is skipped (visibly), as the distances are noise.
    min_requests: int = 100
    # Only log files written in the last this many hours are read (0: every file).
    max_log_age_hours: float = 24.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first setting out of range."""
        def where(field):
            return f"SkewConfig.{field} (TOWER_RECS_SKEW_{field.upper()})"

        for field in ("user_id_linf", "history_item_linf", "history_length_jsd"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{where(field)}: must be in [0, 1] (0: not compared), got {value}")
        if self.action not in ACTIONS:
            raise ValueError(f"{where('action')}: must be 'warn' or 'stop', got {self.action!r}")
        if self.min_requests < 1:
            raise ValueError(f"{where('min_requests')}: must be >= 1, got {self.min_requests}")
        if self.max_log_age_hours < 0:
            raise ValueError(f"{where('max_log_age_hours')}: must be >= 0 (0: every file), "
                             f"got {self.max_log_age_hours}")

    def to_json(self) -> str:
        """The config as the component's JSON execution property."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SkewConfig":
        """The config of a `to_json()` string ("" gives the defaults)."""
        return cls(**(json.loads(text) if text else {}))
