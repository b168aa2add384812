"""The real pipeline at growing data sizes: per-component seconds, rows/s and peak RSS from ML Metadata.

    python -m benchmarks.scaling --sizes 150k,1.5M --out benchmarks/results       # make bench-scale

For each size, `data.sample` writes synthetic data (catalogue growing with it), then the pipeline runs
exactly as `make run` runs it (`tfx pipeline create|update` + `tfx run create --engine local`, settings
from the environment) in these runs (by default the first five):
  first     a fresh pipeline root (no cache), the pipeline's default Beam settings (one in-process worker);
  rerun     the same pipeline after 1% new interactions on 1% new items (`--skip-rerun` to skip);
  daily-first, daily-rerun
            the retrain a team runs every day: the same data as spans (span 1 = the data above, span 2 = the
            1% new interactions on 1% new items), a fresh root ingesting span 1, then span 2 on top of it with
            the pipeline's span settings (window 1: Transform and the Trainer read the new span, the Trainer
            warm-starts from the blessed model; unchanged item texts come from the embedding cache);
  allcores  a fresh root with one Beam worker process per core (`configs.EVERY_CORE_BEAM_PIPELINE_ARGS`),
            against first (only at the sizes given by `--worker-sizes`).
  one-worker, interaction-cores
            a fresh root with the interaction-sized Beam jobs on one in-process worker / on every core whatever
            the data's size (`TOWER_RECS_EVERY_CORE_MIN_INTERACTIONS_MB`), against first (only when named in `--runs`);
  interaction-threads
            the same jobs on one thread per core in the pipeline's process (multi_threading), whatever the size;
  bf16-embedding
            a fresh root with the catalogue embedded in bfloat16 (`ModelConfig.catalogue_embedding_precision`),
            against first (only when named in `--runs`);
  two-epochs-bf16
            the same with 2 training epochs instead of 6 (only when named in `--runs`): what a team at this
            scale could set, compared on the blessed model's metrics in the run's RetrievalEvaluator output.
The comparisons of 1 worker vs every core that keep one worker the default: scaling_150k_workers.md, scaling_1.5M_options.md.
Per component, the wall time is its execution's create -> last update in ML Metadata; the peak RSS is
the largest sum of the RSS of the whole process tree of `tfx run create` sampled every 0.5 s while that
component ran, and its RSS at start is what it inherited from the components before it (one process runs
them all); each run's RSS samples go to `<run root>/run-<time>-rss.csv`. Finished (size, run) pairs are kept
in the JSON and skipped when run again, so the sizes can be run in parts. Writes scaling.{json,md,png}.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

from benchmarks.machine import cpu_description

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK_DIR = os.path.join(PROJECT_DIR, "outputs", "scaling")

# name -> (users, items, interactions): 20 users and 25 interactions per catalogue item at 150k.
SIZES = {
    "150k": (3_000, 6_000, 150_000),
    "1.5M": (30_000, 60_000, 1_500_000),
    "5M": (60_000, 300_000, 5_000_000),
}
# first/rerun run `make run`'s settings (None: the environment's, i.e. the pipeline's default Beam placement).
EVERY_CORE_ARGS = "--direct_running_mode=multi_processing --direct_num_workers=0"
RUNS = ("first", "rerun", "daily-first", "daily-rerun", "allcores", "one-worker", "interaction-cores",
        "interaction-threads", "bf16-embedding", "two-epochs-bf16")
DEFAULT_RUNS = RUNS[:5]
BF16_SETTINGS = {"TOWER_RECS_MODEL_CATALOGUE_EMBEDDING_PRECISION": "bfloat16"}
TWO_EPOCHS_BF16_SETTINGS = dict(BF16_SETTINGS, TOWER_RECS_MODEL_EPOCHS="2")
# The rule that gives the interaction-sized Beam jobs every core above a data size (pipeline/configs.py), forced
# off (the single in-process worker everywhere, the default before it) and forced on.
ONE_WORKER_SETTINGS = {"TOWER_RECS_EVERY_CORE_MIN_INTERACTIONS_MB": "inf"}
INTERACTION_CORES_SETTINGS = {"TOWER_RECS_EVERY_CORE_MIN_INTERACTIONS_MB": "0",
                              "TOWER_RECS_EVERY_CORE_MAX_INTERACTIONS_MB": "inf"}
# The same jobs on one thread per core in the pipeline's process (no worker processes to start or to hold memory).
INTERACTION_THREADS_SETTINGS = {**INTERACTION_CORES_SETTINGS,
                                "TOWER_RECS_LARGE_INTERACTIONS_BEAM_PIPELINE_ARGS":
                                    "--direct_running_mode=multi_threading --direct_num_workers=0"}
# Runs that change only where Beam runs: compared with `first` per Beam component.
BEAM_VARIANTS = ("allcores", "one-worker", "interaction-cores", "interaction-threads")
# The runs on a fresh root over a size's whole data: what the growth and whole-run targets compare.
FIRST_RUNS = ("first", "daily-first")
# Components whose work is Beam (compared 1 vs N workers); the CatalogEmbedder's is RunInference.
BEAM_COMPONENTS = ("InteractionExampleGen", "ItemExampleGen", "InteractionStatisticsGen", "ItemStatisticsGen",
                   "TrainingServingSkew", "AnomalyGate", "CatalogEmbedder", "Transform")


# -- data ------------------------------------------------------------------------------------------
def data_dir(size: str, rerun: bool = False) -> str:
    return os.path.join(WORK_DIR, "data", size + ("-rerun" if rerun else ""))


def make_data(size: str) -> None:
    """`python -m data.sample` at `size` (skipped when already written)."""
    users, items, interactions = SIZES[size]
    if os.path.exists(os.path.join(data_dir(size), "items", "items.csv")):
        return
    subprocess.run([sys.executable, "-m", "data.sample", "--out", data_dir(size), "--users", str(users),
                    "--items", str(items), "--interactions", str(interactions)], check=True, cwd=PROJECT_DIR)


def _one_percent_more(size: str):
    """(old interactions without history, old items, new interactions, new items): 1% new items, and 1%
    new interactions of existing users on them, later than every old interaction."""
    import pandas as pd

    from data import prepare
    from data.sample import generate

    users, items, interactions = SIZES[size]
    base = data_dir(size)
    frames = [pd.read_csv(os.path.join(base, rel), dtype={"user_id": str, "item_id": str})
              for rel in (prepare.TRAIN_FILE, prepare.EVAL_FILE)]
    old_interactions = pd.concat(frames, ignore_index=True).drop(columns=["history"], errors="ignore")
    old_items = pd.read_csv(os.path.join(base, prepare.ITEMS_FILE), dtype=str, keep_default_na=False)
    new_interactions, new_items = generate(n_users=max(1, users // 100), n_items=max(2, items // 100),
                                           n_interactions=max(users // 100, interactions // 100), seed=1,
                                           cold_fraction=0.0)
    # New item ids; the users ("u0001", ...) are existing ones.
    new_items["item_id"] = "n" + new_items["item_id"]
    new_interactions["item_id"] = "n" + new_interactions["item_id"]
    new_interactions["timestamp"] += old_interactions["timestamp"].max() + 1 - new_interactions["timestamp"].min()
    return old_interactions, old_items, new_interactions, new_items


def make_rerun_data(size: str) -> None:
    """The size's data plus 1% new items and 1% new interactions, as one unspanned history."""
    if os.path.exists(os.path.join(data_dir(size, rerun=True), "items", "items.csv")):
        return
    import pandas as pd

    from data import prepare

    old_interactions, old_items, new_interactions, new_items = _one_percent_more(size)
    prepare.write_contract(pd.concat([old_interactions, new_interactions], ignore_index=True),
                           pd.concat([old_items, new_items], ignore_index=True), data_dir(size, rerun=True))


def daily_dir(size: str) -> str:
    return os.path.join(WORK_DIR, "data", size + "-daily")


def make_daily_data(size: str) -> None:
    """The same data as spans: span 1 = the size's data (its train/eval files as they are), span 2 = the 1%
    new interactions (history over the whole timeline, split per user by time); items = old + new."""
    if os.path.exists(os.path.join(daily_dir(size), "items", "items.csv")):
        return
    import pandas as pd

    from data import prepare

    old_interactions, old_items, new_interactions, new_items = _one_percent_more(size)
    for split, rel in (("train", prepare.TRAIN_FILE), ("eval", prepare.EVAL_FILE)):
        os.makedirs(os.path.dirname(os.path.join(daily_dir(size), prepare.span_file(1, split))), exist_ok=True)
        shutil.copy(os.path.join(data_dir(size), rel), os.path.join(daily_dir(size), prepare.span_file(1, split)))
    timeline = prepare.add_history(pd.concat([old_interactions, new_interactions], ignore_index=True))
    train, test = prepare.chronological_split(timeline[timeline["item_id"].str.startswith("n")])
    for split, rows in (("train", train), ("eval", test)):
        prepare._to_csv(rows[prepare.INTERACTION_COLUMNS], os.path.join(daily_dir(size), prepare.span_file(2, split)))
    prepare._to_csv(pd.concat([old_items, new_items], ignore_index=True)[prepare.ITEM_COLUMNS],
                    os.path.join(daily_dir(size), prepare.ITEMS_FILE))


# -- one pipeline run --------------------------------------------------------------------------------
class TreeRss:
    """Samples the summed RSS of a process and all its descendants every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.samples: list[tuple[float, int]] = []
        self._pid, self._interval, self._stop = pid, interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self._pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [root] + root.children(recursive=True):
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.samples.append((time.time(), total))
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = float("inf")) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)

    def at(self, when: float) -> int:
        """The last sample at or before `when` (what a component inherited when it started)."""
        return max(((t, rss) for t, rss in self.samples if t <= when), default=(0.0, 0))[1]

    def write_csv(self, path: str, started: float) -> None:
        with open(path, "w") as f:
            f.write("seconds,rss_mb\n")
            f.writelines(f"{t - started:.1f},{rss / 2 ** 20:.0f}\n" for t, rss in self.samples)


def component_times(metadata_db: str, started: float, until: float = 4e9) -> dict[str, tuple[float, float]]:
    """{node id: (start, end) epoch seconds} of the executions ML Metadata recorded in [started, until)."""
    con = sqlite3.connect(metadata_db)
    rows = con.execute(
        "SELECT c.name, e.create_time_since_epoch, e.last_update_time_since_epoch FROM Execution e "
        "JOIN Association a ON a.execution_id = e.id JOIN Context c ON c.id = a.context_id "
        "JOIN Type t ON t.id = c.type_id WHERE t.name = 'node' AND e.create_time_since_epoch >= ? "
        "AND e.create_time_since_epoch < ?", (int(started * 1000), int(until * 1000))).fetchall()
    con.close()
    out = {}
    for name, start, end in rows:
        node = name.rsplit(".", 1)[-1]  # "<pipeline name>.<node id>"; pipeline names may hold dots (scaling-1.5M)
        out[node] = (start / 1000.0, end / 1000.0)
    return out


def run_pipeline(name: str, data: str, beam_args: Optional[str] = None, fresh: bool = True,
                 settings: Optional[dict] = None) -> dict:
    """`make run`'s two tfx commands on `data` (+ `settings`: TOWER_RECS_* variables); returns per-component
    seconds and peak RSS."""
    output = os.path.join(WORK_DIR, "runs", name)
    if fresh and os.path.exists(output):
        shutil.rmtree(output)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=PROJECT_DIR, LOCAL_HOME=os.path.join(output, "tfx_cli"),
               TOWER_RECS_DATA=data, TOWER_RECS_OUTPUT_DIR=output, TOWER_RECS_PIPELINE_NAME=f"scaling-{name}")
    if beam_args:
        env["TOWER_RECS_BEAM_PIPELINE_ARGS"] = beam_args
    env.update(settings or {})
    tfx = os.path.join(os.path.dirname(sys.executable), "tfx")
    runner = os.path.join(PROJECT_DIR, "pipeline", "local_runner.py")
    verb = "update" if os.path.exists(os.path.join(output, "tfx_cli", f"scaling-{name}")) else "create"
    subprocess.run([tfx, "pipeline", verb, "--engine", "local", "--pipeline_path", runner], env=env,
                   cwd=PROJECT_DIR, check=True, capture_output=True)
    log_path = os.path.join(output, f"run-{int(time.time())}.log")
    started = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([tfx, "run", "create", "--engine", "local", "--pipeline_name", f"scaling-{name}"],
                                env=env, cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT)
        rss = TreeRss(proc.pid)
        code = proc.wait()
        rss.stop()
    rss.write_csv(log_path.replace(".log", "-rss.csv"), started)
    wall = time.time() - started
    if code != 0:
        raise RuntimeError(f"pipeline run {name} failed ({code}); see {log_path}")
    times = component_times(os.path.join(output, "metadata", f"scaling-{name}", "metadata.db"), started)
    # RSS at start: what the component inherited from earlier ones (they all share the `tfx run` process).
    components = {node: {"seconds": round(end - start, 2), "peak_rss_mb": round(rss.peak(start, end) / 2 ** 20),
                         "start_rss_mb": round(rss.at(start) / 2 ** 20)}
                  for node, (start, end) in sorted(times.items(), key=lambda kv: kv[1][0])}
    return {"wall_seconds": round(wall, 1), "peak_rss_mb": round(rss.peak() / 2 ** 20), "components": components,
            "load_average": list(os.getloadavg()), "beam_pipeline_args": beam_args or "default",
            "beam_placement": beam_placement(data, beam_args, env),
            "settings": settings or {}, "evaluation": evaluation_result(output)}


def beam_placement(data: str, beam_args: Optional[str], env: dict) -> str:
    """Where the run's Beam jobs ran, by the pipeline's rule (pipeline/configs.py) on this data and env."""
    if beam_args:
        return f"every component: {beam_args}"
    from pipeline import beam_runners, configs
    from pipeline.components.span_config import SpanConfig

    low = float(env.get("TOWER_RECS_EVERY_CORE_MIN_INTERACTIONS_MB", configs.EVERY_CORE_MIN_INTERACTIONS_MB))
    high = float(env.get("TOWER_RECS_EVERY_CORE_MAX_INTERACTIONS_MB", configs.EVERY_CORE_MAX_INTERACTIONS_MB))
    ingested = configs.ingested_interactions(os.path.join(data, "interactions"),
                                             SpanConfig(pin=int(env.get("TOWER_RECS_SPAN_PIN", "0"))))
    size = beam_runners.megabytes_under(ingested)
    if low <= size <= high:
        args = env.get("TOWER_RECS_LARGE_INTERACTIONS_BEAM_PIPELINE_ARGS", configs.LARGE_INTERACTIONS_BEAM_PIPELINE_ARGS)
        return f"interaction-sized jobs with {args} ({low:g} <= {size:.0f} <= {high:g} MB), the rest one worker"
    return f"one in-process worker ({size:.0f} MB outside {low:g}-{high:g} MB)"


def evaluation_result(output: str) -> Optional[dict]:
    """The latest RetrievalEvaluator result under a run's output folder: blessed, and the candidate's recall@50 and
    ndcg@10 over all items (None when the run has none)."""
    files = sorted(glob.glob(os.path.join(output, "pipeline_root", "*", "RetrievalEvaluator", "evaluation", "*",
                                          "metrics.json")), key=os.path.getmtime)
    if not files:
        return None
    with open(files[-1]) as f:
        metrics = json.load(f)
    overall = metrics["candidate"]["overall"]
    return {"blessed": metrics["blessed"], "recall@50": round(overall["recall@50"], 4),
            "ndcg@10": round(overall["ndcg@10"], 4)}


def partial_run(name: str, started: float, note: str, until: float = 4e9) -> dict:
    """A run stopped before its end (e.g. at a deadline): the components ML Metadata saw finish, no RSS."""
    db = os.path.join(WORK_DIR, "runs", name, "metadata", f"scaling-{name}", "metadata.db")
    con = sqlite3.connect(db)
    done = {row[0].rsplit(".", 1)[-1] for row in con.execute(
        "SELECT c.name FROM Execution e JOIN Association a ON a.execution_id = e.id JOIN Context c "
        "ON c.id = a.context_id JOIN Type t ON t.id = c.type_id WHERE t.name = 'node' AND e.last_known_state = 3")}
    con.close()
    times = component_times(db, started, until)
    return {"complete": False, "note": note, "wall_seconds": None, "peak_rss_mb": None,
            "components": {node: {"seconds": round(end - start, 2), "peak_rss_mb": None}
                           for node, (start, end) in sorted(times.items(), key=lambda kv: kv[1][0]) if node in done},
            "load_average": list(os.getloadavg()), "beam_pipeline_args": "?"}


def count_rows(data: str) -> dict:
    def lines(path):
        with open(path, "rb") as f:
            return max(0, sum(1 for _ in f) - 1)

    inter = sum(lines(os.path.join(data, "interactions", split, "interactions.csv")) for split in ("train", "eval"))
    return {"interactions": inter, "items": lines(os.path.join(data, "items", "items.csv"))}


# -- results -----------------------------------------------------------------------------------------
def _rows(node: str, rows: dict) -> int:
    """The rows a component reads: catalogue rows for the item components, interactions otherwise."""
    return rows["items"] if node.startswith("Item") or node == "CatalogEmbedder" else rows["interactions"]


def _per_million(run: dict, rows: dict) -> dict:
    return {node: round(c["seconds"] / (_rows(node, rows) / 1e6), 2) for node, c in run["components"].items()}


def targets(results: dict) -> list[dict]:
    """The issue's targets, measured or 'not measured'."""
    out = []
    for first in FIRST_RUNS:   # the growth of each kind of fresh run, smallest to largest size it ran at
        sizes = [s for s in SIZES if results["sizes"].get(s, {}).get("runs", {}).get(first, {}).get("complete", True)
                 and first in results["sizes"].get(s, {}).get("runs", {})]
        if len(sizes) < 2:
            continue
        small, large = (results["sizes"][s] for s in (sizes[0], sizes[-1]))
        ratios = {}
        for node, sec in _per_million(large["runs"][first], large["rows"]).items():
            base = _per_million(small["runs"][first], small["rows"]).get(node)
            if base:
                ratios[node] = round(sec / base, 2)
        worst = max(ratios.values()) if ratios else None
        out.append({"target": f"s per M rows at {sizes[-1]} <= 1.5x at {sizes[0]} (every component; {first})",
                    "measured": ratios, "met": worst is not None and worst <= 1.5 and sizes[-1] == "5M",
                    "note": "" if sizes[-1] == "5M" else f"5M not run; measured up to {sizes[-1]}"})
    for first in FIRST_RUNS:
        run = results["sizes"].get("1.5M", {}).get("runs", {}).get(first)
        if run and run.get("wall_seconds"):
            out.append({"target": f"1.5M / 60k: whole run <= 12 min ({first})",
                        "measured": f"{run['wall_seconds'] / 60:.1f} min", "met": run["wall_seconds"] <= 720})
    for first in FIRST_RUNS:
        run = results["sizes"].get("5M", {}).get("runs", {}).get(first)
        if run and run.get("peak_rss_mb"):
            out.append({"target": f"5M / 300k: peak RSS <= 8 GB ({first})",
                        "measured": f"{run['peak_rss_mb'] / 1024:.2f} GB", "met": run["peak_rss_mb"] <= 8192})
    for size, entry in results["sizes"].items():
        runs = entry["runs"]
        for first, rerun, how in (("first", "rerun", "whole history"), ("daily-first", "daily-rerun", "spans")):
            if first in runs and rerun in runs:
                ratio = runs[rerun]["wall_seconds"] / runs[first]["wall_seconds"]
                out.append({"target": f"{size}: rerun (+1% interactions, +1% items; {how}) <= 40% of first run",
                            "measured": f"{ratio:.0%}", "met": ratio <= 0.4})
    return out


def _settings_text(settings: dict) -> str:
    return " ".join(f"{name}={value}" for name, value in settings.items())


def _beam_text(run: dict) -> str:
    """Where a run's Beam jobs ran, for the comparisons: its recorded choice, else the default of its time."""
    return run.get("beam_placement") or "one in-process worker (the default then)"


def write_markdown(results: dict, path: str) -> None:
    lines = ["# Pipeline scaling (`make bench-scale`)", "",
             f"Machine: {results['machine']}. Load average per run in scaling.json.", ""]
    nodes = []
    for size in results["sizes"].values():
        for run in size["runs"].values():
            nodes += [n for n in run["components"] if n not in nodes]
    for size, entry in results["sizes"].items():
        rows = entry["rows"]
        lines += [f"## {size}: {rows['interactions']:,} interactions, {rows['items']:,} items", ""]
        runs = entry["runs"]
        # Rates from the size's fresh run over the whole data: `first`, else `daily-first` (as the targets do).
        kind = next((k for k in FIRST_RUNS if k in runs), "first")
        header = ("| component | " + " | ".join(f"{r} s" for r in runs)
                  + f" | {kind}: rows/s | {kind}: s per M rows | {kind}: peak RSS MB | {kind}: RSS at start MB |")  # rows: items for Item*/CatalogEmbedder
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for node in nodes:
            if not any(node in r["components"] for r in runs.values()):
                continue
            cells = [f"{r['components'][node]['seconds']:.1f}" if node in r["components"] else "cached/–"
                     for r in runs.values()]
            first = runs.get(kind, {}).get("components", {}).get(node)
            extra = ["–", "–", "–", "–"]
            if first and first["seconds"] > 0:
                extra = [f"{_rows(node, rows) / first['seconds']:,.0f}",
                         f"{first['seconds'] / (_rows(node, rows) / 1e6):.1f}", f"{first['peak_rss_mb'] or '–'}",
                         f"{first.get('start_rss_mb') or '–'}"]
            lines.append(f"| {node} | " + " | ".join(cells) + " | " + " | ".join(extra) + " |")
        lines.append("| **whole run** | " + " | ".join(
            f"**{r['wall_seconds']:.0f}**" if r.get("complete", True) else "incomplete" for r in runs.values())
            + f" | | | {runs.get(kind, {}).get('peak_rss_mb') or '–'} | |")
        for variant in (v for v in BEAM_VARIANTS if "first" in runs and v in runs):
            how = (f"TOWER_RECS_BEAM_PIPELINE_ARGS=\"{runs[variant]['beam_pipeline_args']}\""
                   if variant == "allcores" else _settings_text(runs[variant]["settings"]))
            lines += ["", f"{variant} (`{how}`) vs first, rows/s per Beam component (first's Beam args: "
                      f"{_beam_text(runs['first'])}):", "",
                      f"| component | first rows/s | {variant} rows/s | {variant} speedup |", "|---|---|---|---|"]
            for node in BEAM_COMPONENTS:
                base, other = (runs[r]["components"].get(node, {}).get("seconds") for r in ("first", variant))
                if base and other:
                    lines.append(f"| {node} | {_rows(node, rows) / base:,.0f} | {_rows(node, rows) / other:,.0f} | "
                                 f"{base / other:.2f}x |")
            base, other = (runs[r]["wall_seconds"] for r in ("first", variant))
            if base and other:    # a stopped run has no whole-run time
                lines.append(f"| **whole run** (s) | {base:,.0f} | {other:,.0f} | {base / other:.2f}x |")
        if "first" in runs and "bf16-embedding" in runs:
            full, reduced = (runs[r]["components"].get("CatalogEmbedder", {}).get("seconds")
                             for r in ("first", "bf16-embedding"))
            lines += ["", f"Catalogue embedded in bfloat16 (`{_settings_text(BF16_SETTINGS)}`) "
                      f"vs float32: CatalogEmbedder {full:.0f} s -> {reduced:.0f} s ({full / reduced:.2f}x), whole run "
                      f"{runs['first']['wall_seconds']:.0f} s -> {runs['bf16-embedding']['wall_seconds']:.0f} s."]
        if "first" in runs and "two-epochs-bf16" in runs:
            run = runs["two-epochs-bf16"]
            lines += ["", f"With 2 epochs as well (`{_settings_text(TWO_EPOCHS_BF16_SETTINGS)}`):"
                      f" CatalogTrainer {runs['first']['components']['CatalogTrainer']['seconds']:.0f} s -> "
                      f"{run['components']['CatalogTrainer']['seconds']:.0f} s, whole run "
                      f"{runs['first']['wall_seconds']:.0f} s -> {run['wall_seconds']:.0f} s."]
        evaluated = {n: r["evaluation"] for n, r in runs.items() if r.get("evaluation")}
        if evaluated:
            lines += ["", "The model each run evaluated (RetrievalEvaluator, all items): " + "; ".join(
                f"{n} recall@50 {e['recall@50']:.4f}, NDCG@10 {e['ndcg@10']:.4f}"
                + ("" if e["blessed"] else " (not blessed)") for n, e in evaluated.items())]
        lines += ["", "Load average (1 min) at the end of each run: "
                  + ", ".join(f"{n} {r['load_average'][0]:.2f}" for n, r in runs.items()), ""]
        lines += [f"{n}: {r['note']}" for n, r in runs.items() if r.get("note")] + [""]
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in results["targets"]:
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"| {t['target']} | {t['measured']}{note} | {'yes' if t['met'] else 'no'} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The kind of fresh run measured at the most sizes (first or daily-first); one kind per plot.
    kind = max(FIRST_RUNS, key=lambda k: sum(k in e["runs"] for e in results["sizes"].values()))
    sizes = [s for s in results["sizes"] if kind in results["sizes"][s]["runs"]]
    if not sizes:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [results["sizes"][s]["rows"]["interactions"] for s in sizes]
    nodes = sorted({n for s in sizes for n in results["sizes"][s]["runs"][kind]["components"]})
    for node in nodes:
        ys = [results["sizes"][s]["runs"][kind]["components"].get(node, {}).get("seconds") for s in sizes]
        if all(y for y in ys):
            ax.plot(xs, ys, marker="o", label=node)
    walls = [results["sizes"][s]["runs"][kind].get("wall_seconds") for s in sizes]
    if all(walls):
        ax.plot(xs, walls, "k--", marker="s", label="whole run")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactions")
    ax.set_ylabel(f"seconds ({kind} run)")
    ax.set_title("Pipeline time vs data size (log-log; slope 1 = linear)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="150k,1.5M,5M", help=f"comma-separated of {list(SIZES)}")
    parser.add_argument("--worker-sizes", default="", help="sizes that also run with a Beam worker per core")
    parser.add_argument("--skip-rerun", action="store_true", help="no rerun with 1%% new data")
    parser.add_argument("--out", default=os.path.join(PROJECT_DIR, "benchmarks", "results"))
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                        help=f"comma-separated of {list(RUNS)} (default: {list(DEFAULT_RUNS)})")
    parser.add_argument("--force", action="store_true", help="rerun (size, run) pairs already in the JSON")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; known: {list(SIZES)}")
    json_path = os.path.join(args.out, "scaling.json")
    results = {"sizes": {}}
    if os.path.exists(json_path):
        with open(json_path) as f:
            results = json.load(f)
    results["machine"] = f"{os.cpu_count()} cores, {cpu_description()}"
    for size in sizes:
        make_data(size)
        entry = results["sizes"].setdefault(size, {"rows": count_rows(data_dir(size)), "runs": {}})
        plan = [("first", lambda: run_pipeline(size, data_dir(size)))]
        if not args.skip_rerun:
            def rerun(size=size):
                make_rerun_data(size)
                return run_pipeline(size, data_dir(size, rerun=True), fresh=False)
            plan.append(("rerun", rerun))

        def daily_first(size=size):       # span 1: the whole history, fresh root
            make_daily_data(size)
            return run_pipeline(f"{size}-daily", daily_dir(size), settings={"TOWER_RECS_SPAN_PIN": "1"})

        def daily_rerun(size=size):       # span 2, the latest, on top of daily-first's root
            return run_pipeline(f"{size}-daily", daily_dir(size), fresh=False, settings={"TOWER_RECS_SPAN_PIN": "0"})
        plan += [("daily-first", daily_first), ("daily-rerun", daily_rerun)]
        if size in args.worker_sizes.split(","):
            plan.append(("allcores", lambda: run_pipeline(f"{size}-allcores", data_dir(size), EVERY_CORE_ARGS)))
        plan.append(("one-worker", lambda: run_pipeline(f"{size}-one-worker", data_dir(size),
                                                        settings=ONE_WORKER_SETTINGS)))
        plan.append(("interaction-cores", lambda: run_pipeline(f"{size}-interaction-cores", data_dir(size),
                                                               settings=INTERACTION_CORES_SETTINGS)))
        plan.append(("interaction-threads", lambda: run_pipeline(f"{size}-interaction-threads", data_dir(size),
                                                                 settings=INTERACTION_THREADS_SETTINGS)))
        plan.append(("bf16-embedding", lambda: run_pipeline(f"{size}-bf16", data_dir(size), settings=BF16_SETTINGS)))
        plan.append(("two-epochs-bf16", lambda: run_pipeline(f"{size}-e2-bf16", data_dir(size),
                                                             settings=TWO_EPOCHS_BF16_SETTINGS)))
        for run_name, run in plan:
            if run_name not in args.runs.split(","):
                continue
            if run_name in entry["runs"] and not args.force:
                print(f"{size} {run_name}: done already (kept)")
                continue
            if run_name.endswith("rerun") and run_name.replace("rerun", "first") not in entry["runs"]:
                continue
            print(f"{size} {run_name}: running ...", flush=True)
            entry["runs"][run_name] = run()
            print(f"{size} {run_name}: {entry['runs'][run_name]['wall_seconds']:.0f} s, "
                  f"peak RSS {entry['runs'][run_name]['peak_rss_mb']} MB", flush=True)
            results["targets"] = targets(results)
            os.makedirs(args.out, exist_ok=True)
            with open(json_path, "w") as f:
                json.dump(results, f, indent=2)
            write_markdown(results, os.path.join(args.out, "scaling.md"))
            write_plot(results, os.path.join(args.out, "scaling.png"))
    print(open(os.path.join(args.out, "scaling.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
