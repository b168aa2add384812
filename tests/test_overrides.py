"""One override mechanism for every setting (pipeline/overrides.py): TOWER_RECS_MODEL_/EVAL_/SERVING_CHECK_<FIELD>."""
import dataclasses
import json
import os
import subprocess
import sys
import typing

import pytest

from pipeline.components.gate_config import EvaluationConfig, ServingCheckConfig
from pipeline.overrides import from_env, with_overrides
from trainer.model_config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = [(ModelConfig, "MODEL"), (EvaluationConfig, "EVAL"), (ServingCheckConfig, "SERVING_CHECK")]


# Fields whose values the config checks (gate_config.py: metric names, ranges; model_config.py: optimizer): a valid other value.
CHECKED_FIELDS = {"baseline_metric": ("ndcg@50", "ndcg@50"), "popularity_metric": ("recall@10", "recall@10"),
                  "thresholds": ({"recall@10": 0.25}, '{"recall@10": 0.25}'), "max_relative_drop": (0.1, "0.1"),
                  "optimizer": ("adam", "adam"), "unseen_item_scale": (0.25, "0.25"),
                  "new_item_popularity": (0.25, "0.25"),
                  "catalogue_embedding_precision": ("bfloat16", "bfloat16")}


def _another_value(value, annotation, name=""):
    """(a value of `annotation` unlike `value`, the text that sets it)."""
    if name in CHECKED_FIELDS and CHECKED_FIELDS[name][0] != value:
        return CHECKED_FIELDS[name]
    origin = typing.get_origin(annotation) or annotation
    if annotation is bool:
        return (not value), str(not value).lower()
    if annotation in (int, float):
        return value + 3, str(value + 3)
    if annotation is str:
        return value + "-x", value + "-x"
    if origin is tuple:
        return tuple(value) + (7,), json.dumps(list(value) + [7])
    if origin is dict:
        return {"recall@7": 0.25}, json.dumps({"recall@7": 0.25})
    raise AssertionError(f"no test value for {annotation}: teach pipeline/overrides.py and this test the type")


@pytest.mark.parametrize("cls,group", GROUPS, ids=[g for _, g in GROUPS])
def test_every_field_is_settable_from_the_environment(cls, group):
    """Generic over the dataclass: a field added later is covered with no change here or in overrides.py."""
    hints = typing.get_type_hints(cls)
    default = cls()
    for field in dataclasses.fields(cls):
        expected, text = _another_value(getattr(default, field.name), hints[field.name], field.name)
        changed = from_env(default, group, {f"TOWER_RECS_{group}_{field.name.upper()}": text})
        assert getattr(changed, field.name) == expected, field.name
        assert type(getattr(changed, field.name)) is type(expected), field.name
        assert dataclasses.replace(changed, **{field.name: getattr(default, field.name)}) == default


def test_unknown_names_and_bad_values_are_errors_naming_the_variable_and_type():
    with pytest.raises(ValueError, match=r"TOWER_RECS_MODEL_EPOCH is not a setting.*did you mean TOWER_RECS_MODEL_EPOCHS"):
        from_env(ModelConfig(), "MODEL", {"TOWER_RECS_MODEL_EPOCH": "3"})
    with pytest.raises(ValueError, match=r"TOWER_RECS_MODEL_EPOCHS='six': expected an int \(ModelConfig.epochs\)"):
        from_env(ModelConfig(), "MODEL", {"TOWER_RECS_MODEL_EPOCHS": "six"})
    with pytest.raises(ValueError, match=r"TOWER_RECS_MODEL_HIDDEN_DIMS='\[1.5\]': expected a JSON list"):
        from_env(ModelConfig(), "MODEL", {"TOWER_RECS_MODEL_HIDDEN_DIMS": "[1.5]"})
    with pytest.raises(ValueError, match=r"TOWER_RECS_SERVING_CHECK_REQUIRE_WARMUP='maybe': expected a bool"):
        from_env(ServingCheckConfig(), "SERVING_CHECK", {"TOWER_RECS_SERVING_CHECK_REQUIRE_WARMUP": "maybe"})
    with pytest.raises(ValueError, match=r"TOWER_RECS_EVAL_THRESHOLDS='0.1': expected a JSON object"):
        from_env(EvaluationConfig(), "EVAL", {"TOWER_RECS_EVAL_THRESHOLDS": "0.1"})
    with pytest.raises(ValueError, match=r"--set: ModelConfig has no field\(s\) \['temprature'\]"):
        with_overrides(ModelConfig(), {"temprature": "0.1"})


def _configs_in_a_fresh_process(**environ) -> subprocess.CompletedProcess:
    """`pipeline.configs` reads the environment at import, as the tfx CLI's runner process does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWER_RECS_")}
    env.update(PYTHONPATH=ROOT, **environ)
    code = ("import dataclasses, json\nfrom pipeline import configs\nkw = configs.pipeline_kwargs()\n"
            "print(json.dumps({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in kw.items()}))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_pipeline_settings_come_from_the_environment():
    proc = _configs_in_a_fresh_process(TOWER_RECS_MODEL_EPOCHS="3", TOWER_RECS_MODEL_HIDDEN_DIMS="[32, 16]",
                                       TOWER_RECS_MODEL_NAME="films", TOWER_RECS_EVAL_STEPS="4",
                                       TOWER_RECS_EVAL_THRESHOLDS='{"recall@10": 0.2}',
                                       TOWER_RECS_SERVING_CHECK_MAX_P99_MS="250.5")
    assert proc.returncode == 0, proc.stderr
    kwargs = json.loads(proc.stdout)
    assert kwargs["model_config"]["epochs"] == 3 and kwargs["model_config"]["hidden_dims"] == [32, 16]
    assert kwargs["model_config"]["temperature"] == ModelConfig().temperature       # untouched fields keep defaults
    assert os.path.isabs(kwargs["model_config"]["encoder_handle"])                  # local handles: project-relative
    assert kwargs["serving_model_dir"].endswith(os.path.join("serving_model", "films"))   # MODEL_NAME: a setting
    assert kwargs["eval_steps"] == 4                                                # EVAL_STEPS: a setting
    assert kwargs["evaluation_config"]["thresholds"] == {"recall@10": 0.2}
    assert kwargs["serving_check_config"]["max_p99_ms"] == 250.5


@pytest.mark.parametrize("environ,message", [
    ({"TOWER_RECS_MODEL_EPOCHZ": "3"}, "TOWER_RECS_MODEL_EPOCHZ is not a setting"),
    ({"TOWER_RECS_EPOCHS": "3"}, "TOWER_RECS_EPOCHS is now TOWER_RECS_MODEL_EPOCHS"),
])
def test_a_bad_setting_stops_the_pipeline_before_it_is_built(environ, message):
    proc = _configs_in_a_fresh_process(**environ)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
