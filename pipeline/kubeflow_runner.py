"""Compiles the pipeline of `pipeline/pipeline.py` for Kubeflow Pipelines v2 / Vertex AI Pipelines.

    python -m pipeline.kubeflow_runner --output outputs/kubeflow/tower-recs.json \\
        --image REGISTRY/tower-recs-pipeline:TAG --bucket gs://BUCKET \\
        -- --runner=DataflowRunner --project=PROJECT --region=REGION --temp_location=gs://BUCKET/tmp

It builds the SAME `create_pipeline(...)` as `pipeline/local_runner.py` (settings of
`pipeline/configs.py`, overridden by flags) and compiles it with TFX's `KubeflowV2DagRunner`
into two files:

* `--output` (`.json`): a `PipelineJob` (pipeline spec + runtime config with the pipeline root),
  the format of Vertex AI Pipelines (`aiplatform.PipelineJob(template_path=...)`).
* `--kfp_package` (`.yaml`, by default next to `--output`): the bare KFP v2 `PipelineSpec` with
  `defaultPipelineRoot` set, the package format of open-source Kubeflow Pipelines
  (`kfp.Client().create_run_from_pipeline_package(...)`, which only takes `.yaml`/`.zip`/`.tar.gz`).

Both use KFP pipeline spec schema 2.1 (`--pipeline_spec_version`), which both backends read.

Every step runs in the pipeline image (`--image`, built from the repo's `Dockerfile`), where the
project lives in `/pipeline` (`--container_project_dir`): schema files and the MiniLM encoder
modules are referenced by their path in the image, data and model paths are bucket URIs that are
used as given (never made absolute). ML Metadata is managed by KFP / Vertex, not SQLite.

Defaults come from the environment, so `make kubeflow` needs no code edits:

    TOWER_RECS_IMAGE                     --image
    TOWER_RECS_BUCKET                    --bucket (base of the three paths below)
    TOWER_RECS_KFP_PIPELINE_ROOT         --pipeline_root      ({bucket}/pipeline_root/{pipeline_name})
    TOWER_RECS_KFP_DATA                  --data_root          ({bucket}/data)
    TOWER_RECS_KFP_SERVING_MODEL_DIR     --serving_model_dir  ({bucket}/serving_model)
    TOWER_RECS_KFP_BEAM_PIPELINE_ARGS    --beam_pipeline_args (else configs.BEAM_PIPELINE_ARGS)
    TOWER_RECS_TRAINER_GPUS, TOWER_RECS_TRAINER_ACCELERATOR
                                         the Trainer's GPU request (COMPONENT_RESOURCES: CPU/memory)
    TOWER_RECS_PIPELINE_NAME, TOWER_RECS_MODEL_NAME, TOWER_RECS_TRAIN_STEPS, TOWER_RECS_EVAL_STEPS,
    TOWER_RECS_MODEL_<FIELD>, TOWER_RECS_EVAL_<FIELD>, TOWER_RECS_SERVING_CHECK_<FIELD>,
    TOWER_RECS_SPAN_<FIELD>, TOWER_RECS_DRIFT_<FIELD>
                                         (read by pipeline/configs.py; see pipeline/overrides.py)

Spanned data (`--spans`, data root with interactions/span-<N>/): every run of the compiled spec reads the
latest span and compares it with the previous run's span (SpanDriftValidator); a window of spans
(TOWER_RECS_SPAN_WINDOW > 1) needs custom resolver strategies KFP v2 cannot compile and is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
from typing import Any, Optional, Sequence

from pipeline import configs, overrides
from schema import contract

DEFAULT_IMAGE = "tower-recs-pipeline:latest"
DEFAULT_BUCKET = "gs://tower-recs"
# Where the Dockerfile puts the project (WORKDIR, PYTHONPATH) and builds the encoder modules.
CONTAINER_PROJECT_DIR = "/pipeline"
ENCODER_DIR = "models/minilm"
# Schemes tf.io.gfile reads in the pipeline image (gs:// built in; s3:// needs tensorflow-io).
_URI_SCHEMES = ("gs://", "s3://", "hdfs://")
_KFP_PACKAGE_SUFFIXES = (".yaml", ".yml")
SPEC_VERSIONS = ("2.0", "2.1")
DEFAULT_SPEC_VERSION = "2.1"


@dataclasses.dataclass
class KubeflowSettings:
    """Everything that differs between a cluster run and `configs.py`'s local defaults.

    `None` means: take the value of `pipeline/configs.py` (itself env-overridable), or the
    `--bucket`-derived default for the three bucket paths.
    """

    image: str = DEFAULT_IMAGE
    bucket: str = DEFAULT_BUCKET
    pipeline_name: Optional[str] = None
    model_name: Optional[str] = None
    pipeline_root: Optional[str] = None
    data_root: Optional[str] = None
    serving_model_dir: Optional[str] = None
    container_project_dir: str = CONTAINER_PROJECT_DIR
    preprocess_handle: Optional[str] = None
    encoder_handle: Optional[str] = None
    beam_pipeline_args: Optional[list[str]] = None
    epochs: Optional[int] = None
    train_steps: Optional[int] = None
    eval_steps: Optional[int] = None
    enable_cache: bool = True
    allow_local_paths: bool = False
    # True: the data root holds interactions/span-<N>/ (SpanConfig.layout "spans"). The compiler does not
    # look into the bucket, so "auto" means the unspanned layout here.
    spans: bool = False

    @classmethod
    def from_env(cls) -> "KubeflowSettings":
        """The settings of the TOWER_RECS_IMAGE / _BUCKET / _KFP_* variables (see the module docstring)."""
        beam = overrides.env("KFP_BEAM_PIPELINE_ARGS")
        return cls(
            image=overrides.env("IMAGE", DEFAULT_IMAGE),
            bucket=overrides.env("BUCKET", DEFAULT_BUCKET),
            pipeline_root=overrides.env("KFP_PIPELINE_ROOT"),
            data_root=overrides.env("KFP_DATA"),
            serving_model_dir=overrides.env("KFP_SERVING_MODEL_DIR"),
            beam_pipeline_args=shlex.split(beam) if beam is not None else None,
        )


def _join(base: str, *parts: str) -> str:
    """Joins URI/path parts with '/', never making anything absolute or local."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def _in_container(settings: KubeflowSettings, local_path: str) -> str:
    """Maps a path inside this checkout to the same file in the pipeline image."""
    if "://" in local_path:
        return local_path
    rel = os.path.relpath(local_path, configs.PROJECT_DIR)
    if rel.startswith(".."):
        raise ValueError(f"{local_path} is outside the project, so it is not in the pipeline image")
    return _join(settings.container_project_dir, *rel.split(os.sep))


def _check_uri(flag: str, value: str, allow_local: bool) -> None:
    if value.startswith("minio://"):
        raise ValueError(
            f"{flag}={value}: TFX executors read and write artifacts with tf.io.gfile, which has no "
            "minio:// scheme. For MinIO use s3://BUCKET/... with S3_ENDPOINT set in the step "
            "containers (see deploy/README.md).")
    if value.startswith("s3://"):
        print(f"warning: {flag}={value}: s3:// needs TensorFlow I/O's S3 filesystem (tensorflow-io) and "
              "S3_ENDPOINT/AWS_* settings in every step container; see deploy/README.md", file=sys.stderr)
    if "://" not in value and not allow_local:
        raise ValueError(
            f"{flag}={value} is a local path: every step runs in its own pod, so use a bucket URI "
            f"({', '.join(_URI_SCHEMES)}) or pass --allow_local_paths for a volume mounted in every step.")


def resolve(settings: KubeflowSettings) -> dict[str, Any]:
    """The kwargs of `create_pipeline(...)` for a cluster run: `configs.pipeline_kwargs()` with bucket
    URIs and paths inside the image (no metadata config: KFP manages it)."""
    kwargs = configs.pipeline_kwargs()
    name = settings.pipeline_name or configs.PIPELINE_NAME
    model_name = settings.model_name or configs.MODEL_NAME
    pipeline_root = settings.pipeline_root or _join(settings.bucket, "pipeline_root", name)
    data_root = settings.data_root or _join(settings.bucket, "data")
    serving_model_dir = settings.serving_model_dir or _join(settings.bucket, "serving_model")
    for flag, value in (("--pipeline_root", pipeline_root), ("--data_root", data_root),
                        ("--serving_model_dir", serving_model_dir)):
        _check_uri(flag, value, settings.allow_local_paths)
    if kwargs["request_log_dir"]:  # read by TrainingServingSkew in its own pod, like the data
        _check_uri("TOWER_RECS_REQUEST_LOG_DIR", kwargs["request_log_dir"], settings.allow_local_paths)

    encoder_dir = _join(settings.container_project_dir, ENCODER_DIR)

    def handle(flag_value: Optional[str], configured: str, name: str) -> str:
        # A flag wins; a URI from configs (TOWER_RECS_MODEL_*_HANDLE) is kept; a local path becomes the
        # module the Dockerfile builds in the image.
        if flag_value:
            return flag_value
        return configured if "://" in configured else _join(encoder_dir, name)

    model_config = kwargs["model_config"]
    model_config = dataclasses.replace(
        model_config,
        preprocess_handle=handle(settings.preprocess_handle, model_config.preprocess_handle, "preprocess"),
        encoder_handle=handle(settings.encoder_handle, model_config.encoder_handle, "encoder"),
        epochs=model_config.epochs if settings.epochs is None else settings.epochs,
    )
    kwargs.update(
        pipeline_name=name,
        pipeline_root=pipeline_root,
        interactions_path=_join(data_root, contract.INTERACTIONS_DIR),
        items_path=_join(data_root, contract.ITEMS_DIR),
        interactions_schema_path=_in_container(settings, kwargs["interactions_schema_path"]),
        items_schema_path=_in_container(settings, kwargs["items_schema_path"]),
        # Pusher writes <serving_model_dir>/<model_name>/<version>/, the layout TF Serving watches.
        serving_model_dir=_join(serving_model_dir, model_name),
        model_config=model_config,
        train_steps=kwargs["train_steps"] if settings.train_steps is None else settings.train_steps,
        eval_steps=kwargs["eval_steps"] if settings.eval_steps is None else settings.eval_steps,
        metadata_connection_config=None,
        beam_pipeline_args=list(kwargs["beam_pipeline_args"] if settings.beam_pipeline_args is None
                                else settings.beam_pipeline_args),
        # Pods: the args above for every Beam component (the local size rule reads the local data, not the bucket).
        interaction_beam_pipeline_args=None,
        enable_cache=settings.enable_cache,
        report_dir=_join(pipeline_root, "reports"),
        # KFP v2 compiles only TFX's stock resolver strategies (pipeline/pipeline.py).
        baseline_resolution="kfp",
        span_config=_span_config(kwargs["span_config"], settings.spans),
    )
    return kwargs


def _span_config(span_config, spans: bool):
    """`span_config` with a layout the compiler can know without reading the bucket."""
    if spans:
        return dataclasses.replace(span_config, layout="spans")
    return span_config if span_config.layout != "auto" else dataclasses.replace(span_config, layout="flat")


def build(settings: Optional[KubeflowSettings] = None):
    """The cluster pipeline: `create_pipeline(**resolve(settings))`."""
    from pipeline.pipeline import create_pipeline

    pipeline = create_pipeline(**resolve(settings or KubeflowSettings.from_env()))
    apply_resources(pipeline, configs.TRAINER_GPUS, configs.TRAINER_ACCELERATOR)
    return pipeline


# Kubernetes requests per component (vCPU, GB of memory); a component not named gets DEFAULT_RESOURCES.
# Beam components run the DirectRunner in their pod unless TOWER_RECS_BEAM_RUNNER sends them to a cluster.
DEFAULT_RESOURCES = (1.0, 4.0)
COMPONENT_RESOURCES = {
    "InteractionExampleGen": (2.0, 8.0),
    "InteractionStatisticsGen": (2.0, 8.0),
    "Transform": (4.0, 16.0),
    "CatalogTrainer": (4.0, 16.0),
    "RetrievalEvaluator": (4.0, 16.0),
}
TRAINER_ID = "CatalogTrainer"


def apply_resources(pipeline, trainer_gpus: int = 0, accelerator: str = "NVIDIA_TESLA_T4") -> None:
    """Sets each component's KFP v2 resource spec: CPU/memory requests (= limits), and `trainer_gpus`
    accelerators of type `accelerator` for the Trainer (Vertex: e.g. NVIDIA_TESLA_T4; open-source KFP:
    nvidia.com/gpu)."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    resource_spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    if trainer_gpus < 0:
        raise ValueError(f"TOWER_RECS_TRAINER_GPUS={trainer_gpus}: expected 0 or more GPUs")
    for node in pipeline.components:
        if not hasattr(node, "with_platform_config"):
            continue
        cpu, memory = COMPONENT_RESOURCES.get(node.id, DEFAULT_RESOURCES)
        spec = resource_spec(cpu_request=cpu, cpu_limit=cpu, memory_request=memory, memory_limit=memory)
        if node.id == TRAINER_ID and trainer_gpus:
            spec.accelerator.type = accelerator
            spec.accelerator.count = trainer_gpus
        node.with_platform_config(spec)


def _add_missing_resources(job: dict[str, Any], pipeline) -> None:
    """Copies each component's resource spec into its executor where TFX's compiler left it out (TFX 1.16
    drops it for file-based ExampleGens)."""
    from google.protobuf import json_format

    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    for node in pipeline.components:
        container = executors.get(f"{node.id}_executor", {}).get("container")
        spec = getattr(node, "platform_config", None)
        if container is not None and spec is not None and not container.get("resources"):
            container["resources"] = json_format.MessageToDict(spec)


# KFP v2 schema title of a custom artifact type (tfx/orchestration/kubeflow/v2/compiler_utils.py).
_KFP_TYPE_NAME_RE = re.compile(r"^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$")


def check_artifact_types(pipeline) -> None:
    """Fails early, naming the node, when a custom artifact type cannot be compiled for KFP v2."""
    from tfx.orchestration.kubeflow.v2 import compiler_utils

    standard = getattr(compiler_utils, "_SUPPORTED_STANDARD_ARTIFACT_TYPES", ())
    bad = sorted({f"{node.id}.outputs[{key!r}]: TYPE_NAME {channel.type.TYPE_NAME!r}"
                  for node in pipeline.components for key, channel in node.outputs.items()
                  if channel.type not in standard and not _KFP_TYPE_NAME_RE.fullmatch(channel.type.TYPE_NAME)})
    if bad:
        raise ValueError("KFP v2 needs custom artifact type names of the form '<namespace>.<TypeName>' "
                         "(e.g. 'tower_recs.HtmlReport'); rename: " + "; ".join(bad))


def compile_pipeline(pipeline, image: str, output: str, kfp_package: Optional[str] = None,
                     pipeline_spec_version: str = DEFAULT_SPEC_VERSION) -> dict[str, Any]:
    """Writes the PipelineJob JSON to `output` (and the KFP package YAML); returns the job dict.

    Spec schema 2.1 (`constant` parameter values, `parameterType`) is what the open-source KFP 2.x
    backend reads; Vertex AI Pipelines reads both 2.0 and 2.1.
    """
    import yaml
    from tfx import v1 as tfx

    check_artifact_types(pipeline)
    if pipeline_spec_version not in SPEC_VERSIONS:
        raise ValueError(f"pipeline_spec_version must be one of {SPEC_VERSIONS}: {pipeline_spec_version}")
    output_dir, output_filename = os.path.split(os.path.abspath(output))
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=pipeline_spec_version == "2.1"),
        output_dir=output_dir,
        output_filename=output_filename,
    )
    job = runner.run(pipeline, write_out=False)
    _add_missing_resources(job, pipeline)
    # What `run(write_out=True)` does, with the resources completed.
    from tfx import version
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    os.makedirs(output_dir, exist_ok=True)
    kubeflow_v2_dag_runner._write_pipeline_spec_to_file(
        job, f"This is converted from TFX pipeline from tfx-{version.__version__}.",
        os.path.join(output_dir, output_filename))
    if kfp_package:
        if not kfp_package.endswith(_KFP_PACKAGE_SUFFIXES):
            raise ValueError(f"--kfp_package must end with .yaml or .yml (kfp.Client requires it): {kfp_package}")
        spec = dict(job["pipelineSpec"])
        # Open-source KFP otherwise writes artifacts under its own default root (minio://...).
        spec["defaultPipelineRoot"] = pipeline.pipeline_info.pipeline_root
        os.makedirs(os.path.dirname(os.path.abspath(kfp_package)), exist_ok=True)
        with open(kfp_package, "w") as f:
            f.write(f"# PIPELINE DEFINITION\n# Name: {spec['pipelineInfo']['name']}\n"
                    "# Compiled by pipeline/kubeflow_runner.py (KubeflowV2DagRunner) for kfp.Client.\n")
            yaml.safe_dump(spec, f, sort_keys=True)
    return job


def _default_kfp_package(output: str) -> str:
    root, _ = os.path.splitext(output)
    return root + ".yaml"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a default only where there is a concrete one (None: derived, see the help text)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def make_parser() -> argparse.ArgumentParser:
    """The command line of `python -m pipeline.kubeflow_runner`; flag defaults come from the environment."""
    env = KubeflowSettings.from_env()
    p = argparse.ArgumentParser(
        prog="python -m pipeline.kubeflow_runner",
        description=("Compile the tower-recs TFX pipeline (pipeline/pipeline.py, the one the local runner runs)\n"
                     "for Kubeflow Pipelines v2 and Vertex AI Pipelines. Beam pipeline args may follow a bare '--'."),
        epilog=("example:\n  python -m pipeline.kubeflow_runner --output outputs/kubeflow/tower-recs.json \\\n"
                "      --image REGISTRY/tower-recs-pipeline:TAG --bucket gs://BUCKET \\\n"
                "      -- --runner=DataflowRunner --project=PROJECT --region=REGION --temp_location=gs://BUCKET/tmp\n"
                "writes the PipelineJob JSON (Vertex) and the pipeline package YAML (kfp.Client); "
                "see deploy/README.md"),
        formatter_class=_HelpFormatter,
    )
    out = p.add_argument_group("output")
    out.add_argument("--output", default=os.path.join("outputs", "kubeflow", "tower-recs.json"),
                     help="PipelineJob JSON to write (Vertex AI Pipelines: aiplatform.PipelineJob(template_path=...)).")
    out.add_argument("--kfp_package", default=None,
                     help="KFP v2 pipeline package YAML for kfp.Client (default: --output with .yaml); "
                          "pass '' to skip it.")
    where = p.add_argument_group("image and storage")
    where.add_argument("--image", default=env.image,
                       help="pipeline image every step runs in, built from ./Dockerfile [env TOWER_RECS_IMAGE]")
    where.add_argument("--bucket", default=env.bucket,
                       help="base URI of the three paths below when they are not given [env TOWER_RECS_BUCKET]")
    where.add_argument("--pipeline_root", default=env.pipeline_root,
                       help="artifact root: gs://..., or s3://... for S3/MinIO "
                            "(default {bucket}/pipeline_root/{pipeline_name}) [env TOWER_RECS_KFP_PIPELINE_ROOT]")
    where.add_argument("--data_root", default=env.data_root,
                       help="prepared data with interactions/ and items/ (data.prepare layout) "
                            "(default {bucket}/data) [env TOWER_RECS_KFP_DATA]")
    where.add_argument("--serving_model_dir", default=env.serving_model_dir,
                       help="Pusher base; the model goes to <dir>/<model_name>/<version>/ "
                            "(default {bucket}/serving_model) [env TOWER_RECS_KFP_SERVING_MODEL_DIR]")
    where.add_argument("--container_project_dir", default=CONTAINER_PROJECT_DIR,
                       help="where the Dockerfile puts the project (schemas, encoder modules)")
    where.add_argument("--allow_local_paths", action="store_true",
                       help="accept non-URI paths (only for a volume mounted in every step)")
    names = p.add_argument_group("pipeline")
    names.add_argument("--pipeline_name", default=None,
                       help="default: configs.PIPELINE_NAME [env TOWER_RECS_PIPELINE_NAME]")
    names.add_argument("--model_name", default=None,
                       help="TF Serving model name: default configs.MODEL_NAME [env TOWER_RECS_MODEL_NAME]")
    names.add_argument("--disable_cache", action="store_true", help="compile with step caching off")
    names.add_argument("--spans", action="store_true",
                       help="the data root holds interactions/span-<N>/: each run reads the latest span and checks "
                            "drift against the previous run's span (TOWER_RECS_SPAN_* / TOWER_RECS_DRIFT_* settings; "
                            "or TOWER_RECS_SPAN_LAYOUT=spans)")
    names.add_argument("--pipeline_spec_version", choices=SPEC_VERSIONS, default=DEFAULT_SPEC_VERSION,
                       help="KFP pipeline spec schema (2.1 for the open-source KFP 2.x backend and Vertex)")
    beam = p.add_argument_group("beam (StatisticsGen, Transform, ExampleGen, ExampleValidator)")
    beam.add_argument("--beam_pipeline_args", default=None, metavar="'ARGS'",
                      help="one quoted string, use the = form: --beam_pipeline_args='--runner=DataflowRunner "
                           "--project=P --region=R --temp_location=gs://B/tmp' (default: "
                           "env TOWER_RECS_KFP_BEAM_PIPELINE_ARGS, else configs.BEAM_PIPELINE_ARGS). "
                           "Args after a bare '--' are appended to this flag's args, or replace the default")
    trainer = p.add_argument_group("trainer")
    trainer.add_argument("--epochs", type=int, default=None,
                         help="ModelConfig.epochs: default configs.MODEL_CONFIG.epochs [env TOWER_RECS_MODEL_EPOCHS]")
    trainer.add_argument("--train_steps", type=int, default=None,
                         help="TrainArgs.num_steps, 0 = epochs over the data: default configs.TRAIN_STEPS "
                              "[env TOWER_RECS_TRAIN_STEPS]")
    trainer.add_argument("--eval_steps", type=int, default=None,
                         help="EvalArgs.num_steps: default configs.EVAL_STEPS [env TOWER_RECS_EVAL_STEPS]")
    trainer.add_argument("--preprocess_handle", default=None,
                         help="TF Hub preprocessing module (default {container_project_dir}/models/minilm/preprocess, "
                              "or a URI in TOWER_RECS_MODEL_PREPROCESS_HANDLE)")
    trainer.add_argument("--encoder_handle", default=None,
                         help="TF Hub encoder module (default {container_project_dir}/models/minilm/encoder, "
                              "or a URI in TOWER_RECS_MODEL_ENCODER_HANDLE)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, KubeflowSettings]:
    """(parsed flags, settings) of a command line; arguments after a bare '--' are Beam pipeline args."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra_beam: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra_beam = argv[:cut], argv[cut + 1:]
    args = make_parser().parse_args(argv)
    env = KubeflowSettings.from_env()
    if args.beam_pipeline_args is not None:
        beam = shlex.split(args.beam_pipeline_args) + extra_beam
    elif extra_beam:
        beam = extra_beam  # args after '--' replace the env/configs default
    else:
        beam = env.beam_pipeline_args
    settings = KubeflowSettings(
        image=args.image,
        bucket=args.bucket,
        pipeline_name=args.pipeline_name,
        model_name=args.model_name,
        pipeline_root=args.pipeline_root,
        data_root=args.data_root,
        serving_model_dir=args.serving_model_dir,
        container_project_dir=args.container_project_dir,
        preprocess_handle=args.preprocess_handle,
        encoder_handle=args.encoder_handle,
        beam_pipeline_args=beam,
        epochs=args.epochs,
        train_steps=args.train_steps,
        eval_steps=args.eval_steps,
        enable_cache=not args.disable_cache,
        allow_local_paths=args.allow_local_paths,
        spans=args.spans,
    )
    return args, settings


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Compiles the pipeline and prints a JSON summary; returns 0, or 2 for paths the steps cannot use."""
    args, settings = parse_args(argv)
    try:
        kwargs = resolve(settings)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from pipeline.pipeline import create_pipeline

    pipeline = create_pipeline(**kwargs)
    apply_resources(pipeline, configs.TRAINER_GPUS, configs.TRAINER_ACCELERATOR)
    kfp_package = _default_kfp_package(args.output) if args.kfp_package is None else args.kfp_package
    compile_pipeline(pipeline, settings.image, args.output, kfp_package or None, args.pipeline_spec_version)
    summary = {
        "pipeline_job": args.output,
        "kfp_package": kfp_package or None,
        "image": settings.image,
        "pipeline_root": kwargs["pipeline_root"],
        "data": [kwargs["interactions_path"], kwargs["items_path"]],
        "serving_model_dir": kwargs["serving_model_dir"],
        "beam_pipeline_args": kwargs["beam_pipeline_args"],
        "components": [c.id for c in pipeline.components],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
