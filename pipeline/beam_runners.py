"""Which Beam runner the pipeline's Beam components (ExampleGen, StatisticsGen, Transform, ...) run on:
one setting, `TOWER_RECS_BEAM_RUNNER`, and the options each runner needs, validated when the pipeline is built.

  direct    (default) the local DirectRunner, with `configs.py`'s default args (parallel on one machine),
            plus `--sdk_container_image` so TFX does not stage a copy of itself per component (see below)
  dataflow  Google Cloud Dataflow: TOWER_RECS_DATAFLOW_PROJECT, _REGION, _TEMP_LOCATION (gs://) required;
            _SERVICE_ACCOUNT, _MAX_NUM_WORKERS, _MACHINE_TYPE, _SDK_CONTAINER_IMAGE optional
  flink     a Flink cluster through Beam's portable runner: TOWER_RECS_FLINK_MASTER (host:port) required;
            _PARALLELISM optional
  spark     a Spark cluster through Beam's portable job server: TOWER_RECS_SPARK_JOB_ENDPOINT (host:port)
            required; _PARALLELISM optional

Workers of the three cluster runners run the pipeline image (`--sdk_container_image`, default
`TOWER_RECS_IMAGE`), where the project and its locked dependencies are installed. No credentials are
read or written here: Dataflow uses the environment's Google credentials (workload identity / ADC).
`TOWER_RECS_BEAM_EXTRA_ARGS` appends any other Beam option (shell-quoted).

    >>> beam_pipeline_args({"TOWER_RECS_BEAM_RUNNER": "flink", "TOWER_RECS_FLINK_MASTER": "flink:8081"},
    ...                    default_args=["--direct_num_workers=0"])[:2]
    ['--runner=PortableRunner', '--job_endpoint=flink:8081']
"""
from __future__ import annotations

import os
import shlex
from typing import Callable, Mapping, Optional, Sequence

from pipeline.overrides import PREFIX

RUNNERS = ("direct", "dataflow", "flink", "spark")
DEFAULT_IMAGE = "tower-recs-pipeline:latest"


class BeamRunnerError(ValueError):
    """A runner setting is unknown, or an option its runner needs is missing or malformed."""


def _get(environ: Mapping[str, str], name: str) -> Optional[str]:
    value = environ.get(PREFIX + name, "").strip()
    return value or None


def _require(environ: Mapping[str, str], runner: str, names: Sequence[str]) -> dict[str, str]:
    missing = [PREFIX + n for n in names if _get(environ, n) is None]
    if missing:
        raise BeamRunnerError(f"{PREFIX}BEAM_RUNNER={runner} needs {', '.join(missing)} "
                              f"(see pipeline/beam_runners.py)")
    return {n: _get(environ, n) for n in names}


def _optional(environ: Mapping[str, str], flags: Mapping[str, str]) -> list[str]:
    """`--flag=value` for each setting of `{setting: flag}` that is set."""
    return [f"--{flag}={_get(environ, name)}" for name, flag in flags.items() if _get(environ, name) is not None]


def _image(environ: Mapping[str, str], runner: str) -> str:
    return _get(environ, f"{runner.upper()}_SDK_CONTAINER_IMAGE") or _get(environ, "IMAGE") or DEFAULT_IMAGE


def _dataflow(environ: Mapping[str, str]) -> list[str]:
    need = _require(environ, "dataflow", ("DATAFLOW_PROJECT", "DATAFLOW_REGION", "DATAFLOW_TEMP_LOCATION"))
    temp = need["DATAFLOW_TEMP_LOCATION"]
    if not temp.startswith("gs://"):
        raise BeamRunnerError(f"{PREFIX}DATAFLOW_TEMP_LOCATION={temp}: Dataflow needs a gs:// location")
    return ["--runner=DataflowRunner", f"--project={need['DATAFLOW_PROJECT']}",
            f"--region={need['DATAFLOW_REGION']}", f"--temp_location={temp}",
            f"--sdk_container_image={_image(environ, 'dataflow')}",
            *_optional(environ, {"DATAFLOW_SERVICE_ACCOUNT": "service_account_email",
                                 "DATAFLOW_MAX_NUM_WORKERS": "max_num_workers",
                                 "DATAFLOW_MACHINE_TYPE": "machine_type"}),
            # Dataflow Runner v2 (portable): the workers run the SDK container image above.
            "--experiments=use_runner_v2"]


def _endpoint(environ: Mapping[str, str], runner: str, name: str) -> str:
    value = _require(environ, runner, (name,))[name]
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise BeamRunnerError(f"{PREFIX}{name}={value}: expected host:port of the {runner} job server")
    return value


def _portable(runner: str, endpoint_setting: str) -> Callable[[Mapping[str, str]], list[str]]:
    def args(environ: Mapping[str, str]) -> list[str]:
        return ["--runner=PortableRunner", f"--job_endpoint={_endpoint(environ, runner, endpoint_setting)}",
                "--environment_type=DOCKER", f"--environment_config={_image(environ, runner)}",
                *_optional(environ, {f"{runner.upper()}_PARALLELISM": "parallelism"})]
    return args


_CLUSTER_ARGS = {"dataflow": _dataflow, "flink": _portable("flink", "FLINK_MASTER"),
                 "spark": _portable("spark", "SPARK_JOB_ENDPOINT")}


def runner_name(environ: Optional[Mapping[str, str]] = None) -> str:
    """The `TOWER_RECS_BEAM_RUNNER` setting (default "direct"); an unknown one is a BeamRunnerError."""
    environ = os.environ if environ is None else environ
    runner = (_get(environ, "BEAM_RUNNER") or "direct").lower()
    if runner not in RUNNERS:
        raise BeamRunnerError(f"{PREFIX}BEAM_RUNNER={runner!r} is not a runner: expected one of {', '.join(RUNNERS)}")
    return runner


def megabytes_under(path: str) -> float:
    """Size in MB (10^6 bytes) of the files under `path` (a local folder or a bucket URI; 0 if it is missing).

        >>> megabytes_under("/no/such/folder")
        0.0
    """
    import tensorflow as tf  # gfile: local paths and gs:// alike

    if not tf.io.gfile.exists(path):
        return 0.0
    size = sum(tf.io.gfile.stat(os.path.join(folder, name)).length
               for folder, _, names in tf.io.gfile.walk(path) for name in names)
    return size / 1e6


def beam_pipeline_args(environ: Optional[Mapping[str, str]] = None,
                       default_args: Sequence[str] = ()) -> list[str]:
    """The Beam pipeline args of the configured runner.

    Args:
      environ: where to read the settings (default `os.environ`).
      default_args: the direct runner's args (`configs.py`); kept for "direct", replaced otherwise.

    Raises:
      BeamRunnerError: unknown runner, or a required option missing/malformed (the message names it).
    """
    environ = os.environ if environ is None else environ
    runner = runner_name(environ)
    args = list(default_args) if runner == "direct" else _CLUSTER_ARGS[runner](environ)
    args += shlex.split(environ.get(PREFIX + "BEAM_EXTRA_ARGS", ""))
    return _no_tfx_staging(args, environ) if runner == "direct" else args


# TFX stages its own source for remote Beam workers unless the args name where the dependencies come from
# (tfx/utils/dependency_utils.py): for every Beam component run it copies the installed tfx package into a
# new temp dir and builds an sdist there, ~42 MB never deleted (1,642 of them filled this machine's disk).
# DirectRunner workers run in this environment and never read it, so the direct runner names the pipeline
# image as the workers' environment, which the DirectRunner ignores and which stops the staging.
_DEPENDENCY_FLAGS = ("--extra_package", "--extra_packages", "--setup_file", "--requirements_file",
                     "--worker_harness_container_image", "--sdk_container_image")


def _no_tfx_staging(args: list[str], environ: Mapping[str, str]) -> list[str]:
    """Direct-runner args plus `--sdk_container_image`, unless they name another runner or a dependency flag."""
    names = [a.split("=", 1)[0] for a in args]
    other_runner = any(a.startswith("--runner=") and "direct" not in a.lower() for a in args)
    if other_runner or set(names) & set(_DEPENDENCY_FLAGS):
        return args
    return args + [f"--sdk_container_image={_image(environ, 'direct')}"]
