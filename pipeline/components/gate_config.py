"""Settings of the gates before Pusher (no TFX import, so `pipeline.configs` stays light)."""
from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What the RetrievalEvaluator computes and the bar a candidate model must clear.

    Any field can be set for a pipeline run as `TOWER_RECS_EVAL_<FIELD>` (pipeline/overrides.py).
    """

    ks: tuple[int, ...] = (10, 50, 100)
    # Absolute lower bounds on the candidate's overall metrics.
    thresholds: dict = dataclasses.field(default_factory=lambda: {"recall@50": 0.05})
    # Candidate vs. the latest blessed model on this metric.
    baseline_metric: str = "recall@50"
    max_relative_drop: float = 0.05
    batch_size: int = 256
    # Eval users ranked; above this many a deterministic sample (smallest id hashes) is ranked and its
    # size written in metrics.json. 0: every eval user.
    max_users: int = 50_000

    def to_json(self) -> str:
        """The config as the component's JSON execution property."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EvaluationConfig":
        """The config of a `to_json()` string ("" gives the defaults)."""
        values = json.loads(text) if text else {}
        if "ks" in values:
            values["ks"] = tuple(int(k) for k in values["ks"])
        return cls(**values)



@dataclasses.dataclass(frozen=True)
class ServingCheckConfig:
    """What ServingCheck measures and requires of a model loaded as TF Serving would load it.

    Any field can be set for a pipeline run as `TOWER_RECS_SERVING_CHECK_<FIELD>` (pipeline/overrides.py).
    """

    latency_calls: int = 50
    max_p99_ms: float = 1000.0    # generous: a shared 2-core box; TF Serving itself is faster
    require_warmup: bool = True
    timeout_s: int = 600

    def to_json(self) -> str:
        """The config as the component's JSON execution property."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServingCheckConfig":
        """The config of a `to_json()` string ("" gives the defaults)."""
        return cls(**(json.loads(text) if text else {}))
