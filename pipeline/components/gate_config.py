"""Settings of the gates before Pusher (no TFX import, so `pipeline.configs` stays light).

Both configs check themselves when built (`__post_init__`), so a misspelt metric name or an
out-of-range value set through `TOWER_RECS_EVAL_*` / `TOWER_RECS_SERVING_CHECK_*` fails when the
pipeline is built, naming the setting and what is valid, instead of silently reading 0 >= 0:

    >>> EvaluationConfig(baseline_metric="recal@50")
    Traceback (most recent call last):
    ...
    ValueError: EvaluationConfig.baseline_metric (TOWER_RECS_EVAL_BASELINE_METRIC): unknown metric 'recal@50'; ...
"""
from __future__ import annotations

import dataclasses
import json

# What `trainer.metrics.retrieval_metrics` computes for each K: "<name>@<K>".
METRIC_NAMES = ("recall", "ndcg")


def metric_names(ks) -> list[str]:
    """Every metric name the RetrievalEvaluator computes for cutoffs `ks`, e.g. ["ndcg@10", "recall@10"]."""
    return sorted(f"{name}@{k}" for name in METRIC_NAMES for k in ks)


def _setting(cls: type, field: str, group: str) -> str:
    return f"{cls.__name__}.{field} (TOWER_RECS_{group}_{field.upper()})"


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What the RetrievalEvaluator computes and the bar a candidate model must clear.

    Any field can be set for a pipeline run as `TOWER_RECS_EVAL_<FIELD>` (pipeline/overrides.py).
    Defaults: chosen so a trained model passes and a one-step model fails on the sample data and on
    ml-latest-small (numbers in README "Blessing gates").
    """

    ks: tuple[int, ...] = (10, 50, 100)
    # Absolute lower bounds on the candidate's overall metrics.
    thresholds: dict = dataclasses.field(default_factory=lambda: {"recall@50": 0.05})
    # MostPopular (train-split popularity, same users, exclusions and catalogue) on this metric must be
    # beaten by this relative margin: candidate >= most_popular * (1 + popularity_margin); -1 turns the
    # bar off (only for toy fixtures that test pushing/serving, where popularity is unbeatable).
    popularity_metric: str = "ndcg@10"
    popularity_margin: float = 0.25
    # Candidate vs. the latest pushed model and the best (on today's eval data) of the last
    # `baseline_window` blessed models on this metric: candidate >= baseline * (1 - max_relative_drop).
    baseline_metric: str = "recall@50"
    max_relative_drop: float = 0.05
    baseline_window: int = 5
    batch_size: int = 256
    # Eval users ranked; above this many a deterministic sample (smallest id hashes) is ranked and its
    # size written in metrics.json. 0: every eval user.
    max_users: int = 50_000

    def __post_init__(self):
        object.__setattr__(self, "ks", tuple(self.ks))
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first setting out of range (and the valid metric names)."""
        def where(field):
            return _setting(EvaluationConfig, field, "EVAL")

        if not self.ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in self.ks):
            raise ValueError(f"{where('ks')}: expected one or more cutoffs >= 1, got {list(self.ks)}")
        valid = metric_names(self.ks)
        if not isinstance(self.thresholds, dict):
            raise ValueError(f"{where('thresholds')}: expected {{metric: minimum}}, got {self.thresholds!r}")
        for metric, minimum in self.thresholds.items():
            if metric not in valid:
                raise ValueError(f"{where('thresholds')}: unknown metric {metric!r}; valid names (ks="
                                 f"{list(self.ks)}): {valid}")
            if not isinstance(minimum, (int, float)) or isinstance(minimum, bool) or not 0.0 <= minimum <= 1.0:
                raise ValueError(f"{where('thresholds')}: minimum of {metric!r} must be in [0, 1], got {minimum!r}")
        for field in ("popularity_metric", "baseline_metric"):
            if getattr(self, field) not in valid:
                raise ValueError(f"{where(field)}: unknown metric {getattr(self, field)!r}; valid names (ks="
                                 f"{list(self.ks)}): {valid}")
        if not -1.0 <= self.popularity_margin <= 10.0:
            raise ValueError(f"{where('popularity_margin')}: must be in [-1, 10] (0.25 = 25% better than "
                             f"MostPopular, -1 = no popularity bar), got {self.popularity_margin}")
        if not 0.0 <= self.max_relative_drop < 1.0:
            raise ValueError(f"{where('max_relative_drop')}: must be in [0, 1), got {self.max_relative_drop}")
        if self.baseline_window < 1:
            raise ValueError(f"{where('baseline_window')}: must be >= 1, got {self.baseline_window}")
        if self.batch_size < 1:
            raise ValueError(f"{where('batch_size')}: must be >= 1, got {self.batch_size}")

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
    require_warmup: bool = True   # a warmup file with >= 1 record (TF Serving replays it at load)
    # k of the latency probe's request; its outputs are checked (shapes, ids, order, k honoured).
    probe_k: int = 10
    timeout_s: int = 600

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first setting out of range."""
        def where(field):
            return _setting(ServingCheckConfig, field, "SERVING_CHECK")

        if self.latency_calls < 1:
            raise ValueError(f"{where('latency_calls')}: must be >= 1 (the probe's outputs are checked), "
                             f"got {self.latency_calls}")
        if not self.max_p99_ms > 0:
            raise ValueError(f"{where('max_p99_ms')}: must be > 0, got {self.max_p99_ms}")
        if self.probe_k < 1:
            raise ValueError(f"{where('probe_k')}: must be >= 1, got {self.probe_k}")
        if self.timeout_s < 1:
            raise ValueError(f"{where('timeout_s')}: must be >= 1, got {self.timeout_s}")

    def to_json(self) -> str:
        """The config as the component's JSON execution property."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServingCheckConfig":
        """The config of a `to_json()` string ("" gives the defaults)."""
        return cls(**(json.loads(text) if text else {}))
