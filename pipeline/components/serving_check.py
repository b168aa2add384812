"""ServingCheck: an InfraBlessing without Docker (TFX's InfraValidator needs Docker/Kubernetes).

In a fresh, isolated Python process that imports only `tensorflow` and `tensorflow_text`
(`serving_probe.py`, run with `python -I`: no project code on sys.path) it
  1. lists every op of the SavedModel's graphs (function library included) and requires each
     to be registered in TF core 2.16 or listed in TF Text 2.12 (`serving_ops.TF_TEXT_2_12_OPS`),
  2. loads the model and checks the four signatures with their input/output names,
  3. replays `assets.extra/tf_serving_warmup_requests` (PredictionLog TFRecords) like TF Serving;
     with `require_warmup` the file must hold at least one record,
  4. measures serving_default latency at batch 1 (p50/p99 over `latency_calls` calls) and checks
     what that request returned: [1, k] ids and scores, every id in the catalogue (the items
     ExampleGen output), scores finite and sorted descending.
Then it writes the standard `InfraBlessing` exactly as InfraValidator does (custom property
`blessed` 1/0, file INFRA_BLESSED / INFRA_NOT_BLESSED) plus `serving_check.json` with the details.
Where Docker or Kubernetes exists, `pipeline.create_pipeline(infra_validator="docker"|"kubernetes")`
uses TFX's stock InfraValidator with `tensorflow/serving:2.16.1` instead.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, component_spec, standard_artifacts
from tfx.utils import io_utils, path_utils

from pipeline.components.gate_config import ServingCheckConfig  # noqa: F401  (re-exported)
from pipeline.components.serving_ops import TF_TEXT_2_12_OPS
from serving import layout
from schema import contract

RESULT_FILE = "serving_check.json"
BLESSED_FILE = "INFRA_BLESSED"          # as tfx.components.infra_validator.executor
NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
MODEL_KEY = "model"
ITEMS_KEY = "items"
CONFIG_KEY = "config"
BLESSING_KEY = "blessing"
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serving_probe.py")

EXPECTED_SIGNATURES = {
    contract.SERVING_DEFAULT: {
        "inputs": [contract.USER_ID, contract.HISTORY, contract.INPUT_EXCLUDE, contract.INPUT_K],
        "outputs": [contract.OUTPUT_ITEM_IDS, contract.OUTPUT_SCORES]},
    contract.SERVE_TF_EXAMPLES: {"inputs": [contract.INPUT_EXAMPLES],
                                 "outputs": [contract.OUTPUT_ITEM_IDS, contract.OUTPUT_SCORES]},
    contract.QUERY_EMBEDDING: {"inputs": [contract.USER_ID, contract.HISTORY],
                               "outputs": [contract.OUTPUT_EMBEDDING]},
    contract.CANDIDATE_EMBEDDING: {
        "inputs": [contract.ITEM_ID, contract.TITLE, contract.CATEGORIES, contract.DESCRIPTION],
        "outputs": [contract.OUTPUT_EMBEDDING]},
}
# Top-level packages of this project: none may be imported by the probe.
PROJECT_PACKAGES = ["pipeline", "trainer", "encoder", "data", "serving", "benchmarks", "schema"]


def probe(model_dir: str, cfg: ServingCheckConfig) -> dict:
    """Runs serving_probe.py in a fresh isolated interpreter; returns its result dict."""
    with tempfile.TemporaryDirectory() as tmp:
        request_path, result_path = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.json")
        with open(request_path, "w", encoding="utf-8") as f:
            json.dump({
                "model_dir": model_dir,
                "tf_text_ops": sorted(TF_TEXT_2_12_OPS),
                "expected_signatures": EXPECTED_SIGNATURES,
                "warmup_file": layout.WARMUP_FILE,
                "max_warmup_records": layout.MAX_WARMUP_RECORDS,
                "latency_calls": cfg.latency_calls,
                "latency_inputs": {   # a batched request, as clients send it (k per row)
                    contract.USER_ID: [["serving-check-user"], "string"],
                    contract.HISTORY: [[[contract.PAD]], "string"],
                    contract.INPUT_EXCLUDE: [[[contract.PAD]], "string"],
                    contract.INPUT_K: [[cfg.probe_k], "int32"],
                },
                "project_packages": PROJECT_PACKAGES,
            }, f)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        proc = subprocess.run([sys.executable, "-I", PROBE, request_path, result_path], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=cfg.timeout_s)
        if proc.returncode != 0 or not os.path.exists(result_path):
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            return {"model_dir": model_dir, "error": f"probe exited with {proc.returncode}: {tail}"}
        with open(result_path, encoding="utf-8") as f:
            return json.load(f)


def check_probe_outputs(outputs: Optional[dict], k: int, catalogue: Optional[set]) -> list[str]:
    """Problems with what serving_default returned for the probe's one-row request (empty: none).

    Expected: item_ids and scores both [1, k]; every id in the catalogue (no padding: the catalogue
    has more than k items and nothing is excluded); scores finite and sorted descending.

        check_probe_outputs({"item_ids": {"shape": [1, 2], "values": [["a", "b"]]},
                             "scores": {"shape": [1, 2], "values": [[0.9, 0.1]]}}, 2, {"a", "b", "c"})  # -> []
    """
    if not outputs:
        return ["serving_default returned nothing to check"]
    missing = [name for name in (contract.OUTPUT_ITEM_IDS, contract.OUTPUT_SCORES) if name not in outputs]
    if missing:
        return [f"outputs {missing} missing"]
    ids, scores = outputs[contract.OUTPUT_ITEM_IDS], outputs[contract.OUTPUT_SCORES]
    problems = [f"{name} shape {out['shape']}, expected [1, {k}] (k={k} not honoured)"
                for name, out in ((contract.OUTPUT_ITEM_IDS, ids), (contract.OUTPUT_SCORES, scores))
                if out["shape"] != [1, k]]
    if problems:
        return problems
    row_ids, row_scores = ids["values"][0], scores["values"][0]
    if catalogue is None:
        problems.append("catalogue unknown: cannot check the returned ids")
    else:
        unknown = [i for i in row_ids if i not in catalogue]
        if unknown:
            problems.append(f"{len(unknown)} of {k} item ids not in the catalogue (e.g. {unknown[:3]})")
    if len(set(row_ids)) != len(row_ids):
        problems.append("item ids repeat within a row")
    if any(not math.isfinite(v) for v in row_scores):
        problems.append(f"non-finite scores {row_scores[:5]}")
    elif any(a < b for a, b in zip(row_scores, row_scores[1:])):
        problems.append(f"scores not sorted descending: {row_scores[:5]}")
    return problems


def judge(result: dict, cfg: ServingCheckConfig, catalogue: Optional[set] = None) -> tuple[bool, list[str]]:
    """(blessed, reasons) of a `probe` result: one reason per check, prefixed PASS / FAIL.

    `catalogue`: the item ids the returned ids must come from (the items ExampleGen output).
    """
    if "error" in result:
        return False, [f"FAIL the model does not load in a TF-only process: {result['error']}"]
    reasons = []
    bad_ops = result.get("ops_not_allowed", [])
    reasons.append(f"FAIL ops not in TF core 2.16 + TF Text 2.12: {bad_ops}" if bad_ops
                   else "PASS all graph ops are in TF core 2.16 + TF Text 2.12")
    problems = result.get("signature_problems", [])
    reasons.append("FAIL " + "; ".join(problems) if problems else "PASS signatures and their inputs/outputs")
    warmup = result.get("warmup") or {}
    if warmup.get("errors"):
        reasons.append(f"FAIL warmup replay: {len(warmup['errors'])} of {warmup['records']} requests failed: "
                       f"{warmup['errors'][0]}")
    elif cfg.require_warmup and not warmup.get("file"):
        reasons.append(f"FAIL no {layout.WARMUP_FILE}")
    elif cfg.require_warmup and warmup.get("records", 0) < 1:
        reasons.append(f"FAIL {layout.WARMUP_FILE} holds no records: TF Serving would load the model cold")
    else:
        reasons.append(f"PASS warmup replay of {warmup.get('records', 0)} requests")
    latency = result.get("latency_ms")
    if not latency:
        reasons.append("FAIL latency not measured (no serving_default)")
    elif latency["p99"] > cfg.max_p99_ms:
        reasons.append(f"FAIL p99 latency {latency['p99']:.1f} ms > {cfg.max_p99_ms} ms")
    else:
        reasons.append(f"PASS latency p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms "
                       f"<= {cfg.max_p99_ms} ms")
    if latency:
        problems = check_probe_outputs(result.get("probe_outputs"), cfg.probe_k, catalogue)
        reasons.append("FAIL probe outputs: " + "; ".join(problems) if problems else
                       f"PASS probe outputs: [1, {cfg.probe_k}] ids in the catalogue, scores sorted descending")
    if result.get("project_modules"):
        reasons.append(f"FAIL probe imported project modules {result['project_modules']}")
    return all(r.startswith("PASS") for r in reasons), reasons


def read_catalogue(items: types.Artifact) -> set:
    """The item ids (str) of the items ExampleGen output, read through the one reader."""
    from pipeline import example_reader

    ids = example_reader.read_columns(example_reader.split_pattern(items, contract.ITEMS_SPLIT),
                                      example_reader.ITEMS_SCHEMA, [contract.ITEM_ID])[contract.ITEM_ID]
    return {i.decode("utf-8") if isinstance(i, bytes) else i for i in ids.tolist()}


class ServingCheckSpec(component_spec.ComponentSpec):
    """Input: the model; output: an InfraBlessing; parameter: a `ServingCheckConfig.to_json()`."""

    PARAMETERS = {CONFIG_KEY: component_spec.ExecutionParameter(type=str)}
    INPUTS = {MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model),
              ITEMS_KEY: component_spec.ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {BLESSING_KEY: component_spec.ChannelParameter(type=standard_artifacts.InfraBlessing)}


class ServingCheckExecutor(base_executor.BaseExecutor):
    """Probes the model in an isolated process and writes the InfraBlessing as InfraValidator does."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        """Runs the probe and writes `serving_check.json` and INFRA_BLESSED / INFRA_NOT_BLESSED."""
        start = time.time()
        cfg = ServingCheckConfig.from_json(exec_properties.get(CONFIG_KEY) or "")
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
        catalogue = read_catalogue(artifact_utils.get_single_instance(input_dict[ITEMS_KEY]))
        result = probe(path_utils.serving_model_path(model.uri), cfg)
        blessed, reasons = judge(result, cfg, catalogue)
        result.update(blessed=blessed, reasons=reasons, config=dataclasses.asdict(cfg),
                      message="; ".join(r for r in reasons if r.startswith("FAIL")) or "all checks passed",
                      total_seconds=round(time.time() - start, 2))
        io_utils.write_string_file(os.path.join(blessing.uri, RESULT_FILE), json.dumps(result, indent=2))
        io_utils.write_string_file(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE), "")
        blessing.set_int_custom_property("blessed", int(blessed))
        blessing.set_string_custom_property("current_model", model.uri)
        blessing.set_int_custom_property("current_model_id", model.id)
        blessing.set_string_custom_property("blessing_message", result["message"][:2000])
        if result.get("latency_ms"):
            blessing.set_float_custom_property("latency_p50_ms", float(result["latency_ms"]["p50"]))
            blessing.set_float_custom_property("latency_p99_ms", float(result["latency_ms"]["p99"]))
        logging.info("ServingCheck: blessed=%s in %.1fs\n  %s", blessed, result["total_seconds"],
                     "\n  ".join(reasons))


class ServingCheck(base_component.BaseComponent):
    """Checks the candidate SavedModel loads and serves like TF Serving 2.16 would -> InfraBlessing.

        serving_check = ServingCheck(model=trainer.outputs["model"], items=item_gen.outputs["examples"],
                                     config=ServingCheckConfig(max_p99_ms=500))
        pusher = tfx.components.Pusher(..., infra_blessing=serving_check.outputs["blessing"])
    """

    SPEC_CLASS = ServingCheckSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ServingCheckExecutor)

    def __init__(self, model: types.BaseChannel, items: types.BaseChannel,
                 config: Optional[ServingCheckConfig] = None):
        super().__init__(spec=ServingCheckSpec(
            model=model, items=items, config=(config or ServingCheckConfig()).to_json(),
            blessing=types.Channel(type=standard_artifacts.InfraBlessing)))
