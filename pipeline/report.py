"""Run report: one HTML page (PNG plots embedded) per pipeline run, and the `--latest` summary.

The `RunReport` component runs last (after Pusher) and writes into its output artifact
  report.html, summary.json, data.png, metrics.png, slices.png, latency.png
and copies report.html / summary.json to `<report_dir>/latest.html|json` (by default
`<OUTPUT_DIR>/reports/`). Contents: blessing decision and reasons (evaluator + serving check),
whether/where the model was pushed, data statistics (StatisticsGen), candidate vs. previous model
metrics, slices, serving latency and checks, training/serving skew (TrainingServingSkew: measurements
and anomalies, or why it was skipped).

    python -m pipeline.report --latest     # "Model blessed: yes (...) — report: <path>"

reads ML Metadata (configs.METADATA_PATH) and reports a failed latest run (e.g. bad data) as such.
"""

import argparse
import base64
import html
import io
import json
import os
import sys
from typing import Any, Optional

from tfx import v1 as tfx
from tfx import types as tfx_types
from tfx.types import artifact_utils, standard_artifacts

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
LATEST_HTML = "latest.html"
LATEST_JSON = "latest.json"


class HtmlReport(tfx_types.Artifact):
    """A run's HTML report (report.html, summary.json and the PNG plots)."""
    TYPE_NAME = "tower_recs.HtmlReport"  # KFP v2 needs <namespace>.<TypeName>


# -- reading artifacts ---------------------------------------------------------------------------
def _read_json(path: str) -> Optional[dict]:
    from tfx.dsl.io import fileio

    if not fileio.exists(path):
        return None
    with fileio.open(path, "r") as f:
        return json.loads(f.read())


def statistics_summary(artifact) -> dict[str, Any]:
    """{split: {"examples": n, "features": {name: {missing, unique|min|max}}}} from StatisticsGen."""
    from tensorflow_metadata.proto.v0 import statistics_pb2
    from tfx.dsl.io import fileio

    out: dict[str, Any] = {}
    for split in artifact_utils.decode_split_names(artifact.split_names):
        path = os.path.join(artifact.uri, f"Split-{split}", "FeatureStats.pb")
        if not fileio.exists(path):
            continue
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        with fileio.open(path, "rb") as f:
            stats.ParseFromString(f.read())
        for dataset in stats.datasets:
            feats = {}
            for feature in dataset.features:
                name = feature.path.step[-1] if feature.path.step else feature.name
                if feature.HasField("string_stats"):
                    common = feature.string_stats.common_stats
                    info = {"unique": int(feature.string_stats.unique)}
                elif feature.HasField("num_stats"):
                    common = feature.num_stats.common_stats
                    info = {"min": feature.num_stats.min, "max": feature.num_stats.max,
                            "mean": feature.num_stats.mean}
                else:
                    continue
                total = common.num_non_missing + common.num_missing
                info["missing"] = float(common.num_missing / total) if total else 0.0
                feats[name] = info
            out[split] = {"examples": int(dataset.num_examples), "features": feats}
    return out


def skew_summary(anomalies) -> Optional[dict]:
    """TrainingServingSkew's result (`skew.json` in its ExampleAnomalies artifact); None without one."""
    return _read_json(os.path.join(anomalies.uri, "skew.json")) if anomalies is not None else None


def _skew_html(skew: Optional[dict]) -> str:
    if not skew:
        return ""
    verdict = "SKEW" if skew.get("skewed") else skew.get("status", "")
    parts = [f"<h2 class='{'no' if skew.get('skewed') else 'yes'}'>Training/serving skew: {html.escape(verdict)}</h2>",
             f"<p>{html.escape(skew.get('reason', ''))} ({skew.get('requests', 0)} logged query rows in "
             f"{skew.get('files', 0)} file(s) of {html.escape(skew.get('request_log') or 'no request log')}; "
             f"action on skew: {html.escape(skew.get('action', ''))})</p>"]
    if skew.get("measurements"):
        parts.append(_table(["feature", "comparator", "training vs. requests", "threshold", "result"],
                            [[m["feature"], m["comparator"], m["value"], m["threshold"],
                              "SKEW" if m["value"] > m["threshold"] else "ok"] for m in skew["measurements"]]))
    parts += [f"<p>{html.escape(a)}</p>" for a in skew.get("anomalies", [])]
    return "\n".join(parts)


# -- plots ---------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _bars(groups: list[str], series: dict[str, list[float]], title: str, ylabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(groups) + 2), 3.2))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def build_plots(summary: dict) -> dict[str, bytes]:
    """{file name: PNG bytes} of a run summary: data.png, metrics.png, slices.png, latency.png (those with data)."""
    plots = {}
    data = summary.get("data") or {}
    groups, counts = [], []
    for source, splits in data.items():
        for split, info in splits.items():
            groups.append(f"{source}/{split}")
            counts.append(info["examples"])
    if groups:
        plots["data.png"] = _bars(groups, {"examples": counts}, "Examples per input split", "rows")
    evaluation = summary.get("evaluation") or {}
    candidate, baseline = evaluation.get("candidate"), evaluation.get("baseline")
    if candidate:
        names = [m for m in candidate["overall"] if m != "users"]
        series = {"candidate": [candidate["overall"][m] for m in names]}
        if baseline:
            series["previous (baseline)"] = [baseline["overall"].get(m, 0.0) for m in names]
        popular = (evaluation.get("baselines") or {}).get("most_popular")
        if popular:
            series["MostPopular"] = [popular["overall"].get(m, 0.0) for m in names]
        plots["metrics.png"] = _bars(names, series, "Full-catalogue retrieval metrics", "value")
        metric = evaluation.get("config", {}).get("baseline_metric", names[0])
        slices = [s for s, v in candidate["slices"].items() if v.get("users")]
        if slices:
            series = {"candidate": [candidate["slices"][s].get(metric, 0.0) for s in slices]}
            if baseline:
                series["previous (baseline)"] = [baseline["slices"].get(s, {}).get(metric, 0.0) for s in slices]
            plots["slices.png"] = _bars(slices, series, f"{metric} by slice", metric)
    latency = (summary.get("serving") or {}).get("latency_ms")
    if latency:
        plots["latency.png"] = _bars(["p50", "p99", "mean"], {"ms": [latency["p50"], latency["p99"],
                                                                     latency["mean"]]},
                                     f"serving_default latency, batch 1 ({latency['calls']} calls)", "ms")
    return plots


# -- HTML ----------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def gate_rows(summary: dict) -> list[list[str]]:
    """[gate, PASS/FAIL, the check with its numbers] for every check of both gates."""
    rows = []
    gates = (("evaluator", summary.get("evaluation") or {}), ("serving check", summary.get("serving") or {}))
    for gate, result in gates:
        for reason in result.get("reasons", []):
            verdict, _, detail = reason.partition(" ")
            rows.append([gate, verdict, detail])
    return rows


def model_rows(evaluation: dict) -> list[tuple[str, dict]]:
    """(label, metrics) of the candidate, MostPopular, the latest pushed and the best recent blessed model."""
    baselines = evaluation.get("baselines") or {}
    window = len(baselines.get("blessed_window") or [])
    rows = [("candidate", evaluation.get("candidate")),
            ("MostPopular (train popularity)", baselines.get("most_popular")),
            ("latest pushed", baselines.get("latest_pushed")),
            (f"best of last {window} blessed", baselines.get("best_blessed"))]
    if not baselines and evaluation.get("baseline"):
        rows.append(("previous", evaluation["baseline"]))
    return [(label, model) for label, model in rows if model]


def span_drift_html(drift: Optional[dict]) -> str:
    """The "Drift between spans" section of a SpanDriftValidator drift.json ("" without spans)."""
    if not drift:
        return ""
    from pipeline.components.span_drift import describe

    cls = "no" if drift.get("drifted") else "yes"
    action = " (stops the run: DriftConfig.stop_on_drift)" if drift.get("config", {}).get("stop_on_drift") else \
        " (warning only; TOWER_RECS_DRIFT_STOP_ON_DRIFT=1 stops the run)"
    rows = [[r["feature"], r["comparator"], r["value"], r["threshold"], "DRIFT" if r["drift"] else "ok"]
            for r in drift.get("comparisons", [])]
    return (f"<h2>Drift between spans</h2><p class='{cls}'>{html.escape(describe(drift))}"
            f"{html.escape(action) if drift.get('drifted') else ''}</p>"
            + (_table(["feature", "comparator", "value", "threshold", "result"], rows) if rows else ""))


def render_html(summary: dict, plots: dict[str, bytes]) -> str:
    """The report page of a run summary, with `plots` embedded as data URIs."""
    def img(name):
        if name not in plots:
            return "<p><i>not available</i></p>"
        return f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(plots[name]).decode()}">'

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>tower-recs run report</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}.yes{color:#080}.no{color:#b00}"
             "</style></head><body>",
             f"<h1>Run report: {html.escape(summary.get('pipeline', ''))}</h1>",
             f"<p>{html.escape(summary.get('created', ''))}</p>"]
    cls = "yes" if summary["blessed"] else "no"
    parts.append(f"<h2 class='{cls}'>Model blessed: {'yes' if summary['blessed'] else 'no'}</h2>"
                 f"<p>{html.escape(summary['reason'])}</p>")
    pushed = summary.get("pushed")
    parts.append(f"<p>Pushed: {'yes, to ' + html.escape(pushed) if pushed else 'no'}</p>")
    evaluation = summary.get("evaluation") or {}
    serving = summary.get("serving") or {}
    parts.append("<h2>Gates</h2>" + _table(["gate", "result", "check (numbers)"], gate_rows(summary)))
    parts.append(_skew_html(summary.get("skew")))
    parts.append(span_drift_html(summary.get("span_drift")))
    parts.append("<h2>Data</h2>" + img("data.png"))
    for source, splits in (summary.get("data") or {}).items():
        for split, info in splits.items():
            rows = [[name, f.get("missing", 0.0), f.get("unique", ""), f.get("min", ""), f.get("max", "")]
                    for name, f in sorted(info["features"].items())]
            parts.append(f"<h3>{html.escape(source)} / {html.escape(split)}: {info['examples']} rows</h3>"
                         + _table(["feature", "missing fraction", "unique", "min", "max"], rows))

    parts.append("<h2>Model quality (candidate vs. MostPopular and the baselines)</h2>" + img("metrics.png"))
    candidate, baseline = evaluation.get("candidate"), evaluation.get("baseline")
    if candidate:
        names = [m for m in candidate["overall"]]
        rows = [[label, model.get("uri", "")] + [model["overall"].get(m, "") for m in names]
                for label, model in model_rows(evaluation)]
        parts.append(_table(["model", "uri"] + names, rows))
        parts.append("<h2>Slices</h2>" + img("slices.png"))
        slice_rows = []
        for name, values in candidate["slices"].items():
            base = (baseline or {}).get("slices", {}).get(name, {})
            slice_rows.append([name, values.get("users", 0)] + [values.get(m, "") for m in names if m != "users"]
                              + [base.get(evaluation["config"]["baseline_metric"], "")])
        parts.append(_table(["slice", "users"] + [m for m in names if m != "users"]
                            + [f"previous {evaluation['config']['baseline_metric']}"], slice_rows))
        parts.append(f"<p>Eval data: {html.escape(json.dumps(evaluation.get('data', {})))}</p>")
    parts.append("<h2>Serving</h2>" + img("latency.png"))
    if serving:
        warmup = serving.get("warmup") or {}
        parts.append(_table(["item", "value"], [
            ["load seconds (TF + TF Text only process)", serving.get("load_seconds", "")],
            ["warmup requests replayed", warmup.get("records", "")],
            ["ops outside TF core 2.16 + TF Text 2.12", serving.get("ops_not_allowed", "")],
            ["signatures", ", ".join(sorted(serving.get("signatures", {})))],
        ]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary(evaluation_uri, model_blessing, infra_blessing, statistics: dict, pushed_model, pipeline_name=""):
    import datetime

    evaluation = _read_json(os.path.join(evaluation_uri, "metrics.json")) or {}
    serving = _read_json(os.path.join(infra_blessing.uri, "serving_check.json")) or {}
    model_ok = model_blessing.get_int_custom_property("blessed") == 1
    infra_ok = infra_blessing.get_int_custom_property("blessed") == 1
    fails = []
    if not model_ok:
        fails.append("evaluator: " + (evaluation.get("message") or
                                      model_blessing.get_string_custom_property("blessing_message")))
    if not infra_ok:
        fails.append("serving check: " + (serving.get("message") or "not infra-blessed"))
    if not fails:
        metric = (evaluation.get("config") or {}).get("baseline_metric", "recall@50")
        value = ((evaluation.get("candidate") or {}).get("overall") or {}).get(metric)
        base = ((evaluation.get("baseline") or {}) or {}).get("overall", {}).get(metric)
        popular = ((evaluation.get("baselines") or {}).get("most_popular") or {}).get("overall", {}).get(metric)
        reason = f"{metric} {value:.4f}" if value is not None else "all checks passed"
        reason += f", MostPopular {popular:.4f}" if popular is not None else ""
        reason += f", baseline {base:.4f}" if base is not None else " (first model: no baseline)"
        if serving.get("latency_ms"):
            reason += f"; p99 {serving['latency_ms']['p99']:.1f} ms"
    else:
        reason = "; ".join(fails)
    pushed = None
    if pushed_model is not None and pushed_model.get_int_custom_property("pushed") == 1:
        pushed = pushed_model.get_string_custom_property("pushed_destination")
    return {
        "pipeline": pipeline_name,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "blessed": bool(model_ok and infra_ok), "model_blessed": model_ok, "infra_blessed": infra_ok,
        "reason": reason, "pushed": pushed, "data": statistics,
        "evaluation": evaluation, "serving": serving,
    }


def write_report(out_dir: str, summary: dict, latest_dir: Optional[str] = None) -> str:
    """Writes report.html, summary.json and the PNGs to `out_dir` (and latest.html|json to `latest_dir`).

    Returns:
      The path of report.html.
    """
    from tfx.dsl.io import fileio

    plots = build_plots(summary)
    fileio.makedirs(out_dir)
    for name, data in plots.items():
        with fileio.open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    page = render_html(summary, plots)
    report_path = os.path.join(out_dir, REPORT_FILE)
    summary = dict(summary, report=report_path)
    with fileio.open(report_path, "w") as f:
        f.write(page)
    with fileio.open(os.path.join(out_dir, SUMMARY_FILE), "w") as f:
        f.write(json.dumps(summary, indent=2))
    if latest_dir:
        fileio.makedirs(latest_dir)
        with fileio.open(os.path.join(latest_dir, LATEST_HTML), "w") as f:
            f.write(page)
        with fileio.open(os.path.join(latest_dir, LATEST_JSON), "w") as f:
            f.write(json.dumps(dict(summary, latest_report=os.path.join(latest_dir, LATEST_HTML)), indent=2))
    return report_path


@tfx.dsl.components.component
def RunReport(
    evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation],
    model_blessing: tfx.dsl.components.InputArtifact[standard_artifacts.ModelBlessing],
    infra_blessing: tfx.dsl.components.InputArtifact[standard_artifacts.InfraBlessing],
    interaction_statistics: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleStatistics],
    item_statistics: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleStatistics],
    pushed_model: tfx.dsl.components.InputArtifact[standard_artifacts.PushedModel],
    report: tfx.dsl.components.OutputArtifact[HtmlReport],
    report_dir: tfx.dsl.components.Parameter[str] = "",
    pipeline_name: tfx.dsl.components.Parameter[str] = "",
    skew_anomalies: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleAnomalies] = None,
    span_drift: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleAnomalies] = None,
) -> None:
    """Writes report.html (+ PNGs, summary.json) and copies it to `<report_dir>/latest.html`.

    `skew_anomalies`: TrainingServingSkew's anomalies, shown as "Training/serving skew".
    `span_drift`: the SpanDriftValidator's anomalies (spanned input only), shown as "Drift between spans".
    """
    statistics = {"interactions": statistics_summary(interaction_statistics),
                  "items": statistics_summary(item_statistics)}
    summary = _summary(evaluation.uri, model_blessing, infra_blessing, statistics, pushed_model, pipeline_name)
    summary["skew"] = skew_summary(skew_anomalies)
    if span_drift is not None:
        from pipeline.components.span_drift import DRIFT_FILE

        summary["span_drift"] = _read_json(os.path.join(span_drift.uri, DRIFT_FILE))
    path = write_report(report.uri, summary, report_dir or None)
    report.set_int_custom_property("blessed", int(summary["blessed"]))
    report.set_string_custom_property("reason", summary["reason"][:2000])
    from absl import logging

    logging.info("Model blessed: %s (%s) — report: %s", "yes" if summary["blessed"] else "no",
                 summary["reason"], path)


# -- `--latest` ----------------------------------------------------------------------------------
def _component_of(store, execution) -> str:
    """The component id of an execution (its "node" context is named `<pipeline>.<component id>`)."""
    try:
        node_type = store.get_context_type("node")
        for context in store.get_contexts_by_execution(execution.id):
            if context.type_id == node_type.id:
                return context.name.split(".", 1)[-1]
    except Exception:  # noqa: BLE001
        pass
    return store.get_execution_types_by_id([execution.type_id])[0].name.rsplit(".", 1)[-1]


def latest_status(metadata_path: str, report_dir: Optional[str] = None) -> str:
    """One line: the blessing decision of the latest run and its report, or why the run failed."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.exists(metadata_path):
        return f"No pipeline run found (no ML Metadata at {metadata_path})"
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    executions = sorted(store.get_executions(), key=lambda e: e.id)
    if not executions:
        return "No pipeline run found"
    last = executions[-1]
    failed = [e for e in executions if e.last_known_state == metadata_store_pb2.Execution.FAILED]
    reports = []
    try:
        reports = sorted(store.get_artifacts_by_type(HtmlReport.TYPE_NAME), key=lambda a: a.id)
    except Exception:  # noqa: BLE001  (type not registered yet: no report written)
        reports = []
    report_execution_id = None
    if reports:
        events = store.get_events_by_artifact_ids([reports[-1].id])
        report_execution_id = max((e.execution_id for e in events), default=None)
    if failed and (report_execution_id is None or failed[-1].id > report_execution_id):
        run_failed = failed[-1]
        name = _component_of(store, run_failed)
        message = f"Latest run FAILED at {name}: nothing was trained or pushed by it"
        if run_failed.id < last.id and last.last_known_state != metadata_store_pb2.Execution.FAILED:
            message = f"A run FAILED at {name}"
        prior = f"; previous report: {reports[-1].uri}/{REPORT_FILE}" if reports else ""
        return f"Model blessed: no ({message}; see the run log){prior}"
    if not reports:
        return "Model blessed: unknown (no run report yet)"
    summary = _read_json(os.path.join(reports[-1].uri, SUMMARY_FILE)) or {}
    path = os.path.join(reports[-1].uri, REPORT_FILE)
    if report_dir and os.path.exists(os.path.join(report_dir, LATEST_HTML)):
        path = os.path.join(report_dir, LATEST_HTML)
    blessed = "yes" if summary.get("blessed") else "no"
    pushed = f"; pushed to {summary['pushed']}" if summary.get("pushed") else "; not pushed"
    skew = summary.get("skew") or {}
    pushed += f"; training/serving SKEW: {skew.get('reason')}" if skew.get("skewed") else ""
    return f"Model blessed: {blessed} ({summary.get('reason', '')}{pushed}) — report: {path}"


def main(argv=None) -> int:
    """`python -m pipeline.report --latest`: prints `latest_status` of the configured metadata; returns 0."""
    from pipeline import configs

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latest", action="store_true", help="print the latest run's blessing decision")
    parser.add_argument("--metadata", default=configs.METADATA_PATH)
    parser.add_argument("--report_dir", default=configs.REPORTS_DIR)
    args = parser.parse_args(argv)
    line = latest_status(args.metadata, args.report_dir)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
