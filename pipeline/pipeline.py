"""The TFX pipeline definition, shared by the local and Kubeflow runners.

    interactions ─ CsvExampleGen ─ StatisticsGen ─ ExampleValidator ─┐
    items ──────── CsvExampleGen ─ StatisticsGen ─ ExampleValidator ─┴ AnomalyGate
    interactions ─ Transform (id vocabularies, history) ───────────────┐
    items ─ CatalogEmbedder (BERT item-text vectors in Beam RunInference; previous run's reused) ─┐
    latest blessed model (LatestBlessedModelResolver) ─ base_model ─┐ (warm start, trainer/warm_start.py)
    items + Transform + embeddings ─ CatalogTrainer (two-tower) ─┐
    latest pushed + last N blessed models (Resolvers over MLMD) ─ RetrievalEvaluator
      (full-catalogue Recall/NDCG vs. MostPopular and those baselines, ModelBlessing) ─────────────────┐
    CatalogTrainer ─ ServingCheck (TF + TF Text only process; or stock InfraValidator) ─ InfraBlessing ┴ Pusher
    interactions + the server's request log ─ TrainingServingSkew (TFDV skew; action "stop": Transform and
      the Trainer wait for it, so a skew stops the run) ─┐
    statistics + evaluation + blessings + push + skew ─ RunReport (HTML, <OUTPUT_DIR>/reports/latest.html)

With spans (`interactions/span-<N>/`, pipeline/components/span_config.py): ExampleGen ingests the latest
(or a pinned) span; LatestSpanStatisticsResolver + SpanDriftValidator compare its statistics with the
previous span's (warn, or stop before Transform); SpanWindowResolver hands Transform the last W ingested
spans; the evaluator judges on the newest span's eval split (ExampleGen's output).

Pusher pushes only a model that both the evaluator and the serving check blessed.
"""
from __future__ import annotations

import os
from typing import Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from pipeline.components.anomaly_gate import AnomalyGate
from pipeline.components.catalog_embedder import CatalogEmbedder, CatalogEmbeddings
from pipeline.components.catalog_trainer import CatalogTrainer
from pipeline.components.gate_config import EvaluationConfig, ServingCheckConfig
from pipeline.components.retrieval_evaluator import RetrievalEvaluator
from pipeline.components.serving_check import ServingCheck
from pipeline.components.skew_check import TrainingServingSkew
from pipeline.components.skew_config import SkewConfig
from pipeline.components.span_config import DriftConfig, SpanConfig
from schema import contract
from trainer.model_config import ModelConfig


def _interaction_example_gen(interactions_path: str, spanned: bool = False,
                             pin: int = 0) -> tfx.components.CsvExampleGen:
    # The split is chronological per user and made by `data.prepare`, so ExampleGen
    # reads it as given instead of hashing rows into random splits.
    # Spans: TFX resolves `span-{SPAN}` to the highest span present, or to the pinned one (static range).
    prefix = f"{contract.SPAN_DIR}/" if spanned else ""
    pinned = tfx.proto.RangeConfig(static_range=tfx.proto.StaticRange(start_span_number=pin, end_span_number=pin))
    return tfx.components.CsvExampleGen(
        input_base=interactions_path,
        input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name=split, pattern=f"{prefix}{split}/*")
            for split in (contract.TRAIN_SPLIT, contract.EVAL_SPLIT)
        ]),
        range_config=pinned if spanned and pin else None,
    ).with_id("InteractionExampleGen")


def uses_spans(interactions_path: str, layout: str) -> bool:
    """Whether the interactions are spans: `layout` "spans" / "flat", or "auto": `span-*` folders exist."""
    if layout != "auto":
        return layout == "spans"
    from tfx.dsl.io import fileio

    return bool(fileio.glob(os.path.join(interactions_path, contract.SPAN_PREFIX + "*")))


def _span_window(interaction_gen, span_config: SpanConfig, baseline_resolution: str):
    """The Resolver of the last `span_config.window` ingested spans (Transform's input), or None for one span."""
    if span_config.window == 1:
        return None
    if baseline_resolution != "mlmd":
        raise ValueError(f"SpanConfig.window (TOWER_RECS_SPAN_WINDOW) = {span_config.window} needs the ML Metadata "
                         "resolver strategies of a local run; KFP v2 compiles only TFX's LatestArtifactStrategy "
                         "with one artifact, so a Kubeflow run trains on the newest span (window 1)")
    from pipeline.components.span_window import SpanWindowStrategy

    window = tfx.dsl.Resolver(
        strategy_class=SpanWindowStrategy, config={"num_spans": span_config.window, "end_span": span_config.pin},
        examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples,
                                 producer_component_id=interaction_gen.id, output_key="examples"),
    ).with_id("SpanWindowResolver")
    window.add_upstream_node(interaction_gen)  # resolve after this run's span is ingested
    return window


def _span_drift(examples, statistics, schema, drift_config: DriftConfig):
    """(Resolver of the previous run's SpanStatistics, SpanDriftValidator of this span's statistics)."""
    from pipeline.components.span_drift import SpanDriftValidator, SpanStatistics

    previous = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        span_statistics=tfx.dsl.Channel(type=SpanStatistics),
    ).with_id("LatestSpanStatisticsResolver")
    drift = SpanDriftValidator(examples=examples, statistics=statistics, schema=schema,
                               previous=previous.outputs["span_statistics"], config=drift_config.to_json())
    return previous, drift


def _item_example_gen(items_path: str) -> tfx.components.CsvExampleGen:
    return tfx.components.CsvExampleGen(
        input_base=items_path,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name=contract.ITEMS_SPLIT, pattern="*")]),
        # One input split would otherwise be hashed into train/eval: the catalogue stays whole.
        output_config=tfx.proto.Output(split_config=tfx.proto.SplitConfig(
            splits=[tfx.proto.SplitConfig.Split(name=contract.ITEMS_SPLIT, hash_buckets=1)])),
    ).with_id("ItemExampleGen")


def _validated(examples, schema_path: str, name: str):
    """StatisticsGen + ImportSchemaGen + ExampleValidator for one ExampleGen output."""
    statistics_gen = tfx.components.StatisticsGen(examples=examples).with_id(f"{name}StatisticsGen")
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path).with_id(f"{name}SchemaGen")
    validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    ).with_id(f"{name}ExampleValidator")
    return statistics_gen, schema_gen, validator


def _stock_infra_validator(model, examples, backend: str, tf_serving_tag: str):
    """TFX's InfraValidator with the stock tensorflow/serving image (needs Docker or Kubernetes)."""
    if not tf_serving_tag:
        raise ValueError(f"infra_validator={backend!r} needs the tensorflow/serving image tag (tf_serving_tag)")
    if backend == "docker":
        platform = {"local_docker": tfx.proto.LocalDockerConfig()}
    elif backend == "kubernetes":
        platform = {"kubernetes": tfx.proto.KubernetesConfig()}
    else:
        raise ValueError(f"infra_validator must be '', 'docker' or 'kubernetes', got {backend!r}")
    return tfx.components.InfraValidator(
        model=model,
        examples=examples,
        serving_spec=tfx.proto.ServingSpec(
            tensorflow_serving=tfx.proto.TensorFlowServing(tags=[tf_serving_tag]), **platform),
        # serve_tf_examples takes serialized tf.Examples: the raw interactions carry user_id, history.
        request_spec=tfx.proto.RequestSpec(
            tensorflow_serving=tfx.proto.TensorFlowServingRequestSpec(signature_names=[contract.SERVE_TF_EXAMPLES]),
            split_name=contract.EVAL_SPLIT, num_examples=10),
        validation_spec=tfx.proto.ValidationSpec(max_loading_time_seconds=120, num_tries=3),
    )


def _latest_blessed_model_resolver() -> tfx.dsl.Resolver:
    """TFX's stock LatestBlessedModelStrategy (KFP v2 compiles it): the Trainer's warm-start base model,
    and on KFP also the evaluator's baseline."""
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("LatestBlessedModelResolver")


def _baseline_resolvers(mode: str, window: int, latest_blessed: Optional[tfx.dsl.Resolver] = None) -> dict:
    """{RetrievalEvaluator input key: Resolver} of the models a candidate is compared with (`latest_blessed`:
    the pipeline's LatestBlessedModelResolver, reused in "kfp" mode; None makes one)."""
    from pipeline.components import baseline_resolvers as strategies

    model = tfx.types.standard_artifacts.Model
    if mode == "kfp":
        # KFP v2 compiles only TFX's stock strategies: the latest blessed model is the one baseline.
        return {"blessed_models": latest_blessed or _latest_blessed_model_resolver()}
    if mode != "mlmd":
        raise ValueError(f"baseline_resolution must be 'mlmd' or 'kfp', got {mode!r}")
    return {
        "pushed_model": tfx.dsl.Resolver(
            strategy_class=strategies.LatestPushedModelStrategy, model=tfx.dsl.Channel(type=model),
            pushed_model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.PushedModel),
        ).with_id("LatestPushedModelResolver"),
        "blessed_models": tfx.dsl.Resolver(
            strategy_class=strategies.RecentBlessedModelsStrategy, config={"window": window},
            model=tfx.dsl.Channel(type=model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("RecentBlessedModelsResolver"),
    }


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    interactions_path: str,
    items_path: str,
    interactions_schema_path: str,
    items_schema_path: str,
    serving_model_dir: str,
    preprocessing_fn: str,
    run_fn: str,
    model_config: ModelConfig,
    train_steps: int = 0,
    eval_steps: int = 0,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[list[str]] = None,
    interaction_beam_pipeline_args: Optional[list[str]] = None,
    enable_cache: bool = True,
    evaluation_config: Optional[EvaluationConfig] = None,
    serving_check_config: Optional[ServingCheckConfig] = None,
    infra_validator: str = "",
    tf_serving_tag: str = "",
    report_dir: str = "",
    baseline_resolution: str = "mlmd",
    request_log_dir: str = "",
    skew_config: Optional[SkewConfig] = None,
    span_config: Optional[SpanConfig] = None,
    drift_config: Optional[DriftConfig] = None,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline; the runners pass `**pipeline.configs.pipeline_kwargs()` (overridden).

    Args:
      pipeline_name, pipeline_root: TFX's; artifacts go under `pipeline_root`.
      interactions_path, items_path: folders of the contract layout (`schema/contract.py`).
      interactions_schema_path, items_schema_path: the curated schemas (`schema/*/schema.pbtxt`).
      serving_model_dir: `<base>/<model_name>`; Pusher writes `<version>/` below it (TF Serving's layout).
      preprocessing_fn, run_fn: dotted paths of the Transform and Trainer entry points.
      model_config: every hyperparameter; passed to `run_fn` as `custom_config["model"]`.
      train_steps, eval_steps: the Trainer's TrainArgs / EvalArgs (0: `model_config.epochs`).
      metadata_connection_config: ML Metadata (None on Kubeflow, which manages it).
      beam_pipeline_args, enable_cache: TFX's.
      interaction_beam_pipeline_args: Beam args added (last, so they win) to the Beam components that read every
        interaction: InteractionExampleGen, InteractionStatisticsGen, TrainingServingSkew, AnomalyGate, Transform
        (`configs.INTERACTION_BEAM_PIPELINE_ARGS`: a worker per core for large inputs).
      evaluation_config, serving_check_config: the gates (default: the dataclasses' defaults).
      infra_validator: "docker" / "kubernetes" run TFX's stock InfraValidator with
        tensorflow/serving:`tf_serving_tag` instead of ServingCheck.
      report_dir: where the RunReport copies `latest.html` ("" for nowhere).
      baseline_resolution: "mlmd" (default): the evaluator's baselines are the latest pushed model and
        the last `evaluation_config.baseline_window` blessed models (custom resolver strategies over
        ML Metadata); "kfp": TFX's LatestBlessedModelStrategy only, the one KFP v2 can compile.
      request_log_dir: the serving request log (PredictionLog TFRecords) TrainingServingSkew compares with
        the training data; "" skips the comparison (the report says so).
      skew_config: its thresholds and action (default: `SkewConfig()`, warn).
      span_config: spanned interactions (`span-<N>/`): which span ExampleGen ingests (the latest or a
        pinned one) and how many of the last ingested spans Transform and the Trainer see (a Resolver);
        the evaluator judges on the newest span's eval split. Default: `SpanConfig()` (layout "auto").
      drift_config: with spans, the SpanDriftValidator's comparator thresholds between this span and the
        previous one, and whether drift stops the run (default: warn in the RunReport).

    Returns:
      The `tfx.dsl.Pipeline`: ExampleGens, validation, AnomalyGate, Transform, CatalogEmbedder, CatalogTrainer,
      RetrievalEvaluator, ServingCheck (or InfraValidator), Pusher and RunReport.
    """
    from pipeline.report import RunReport

    evaluation_config = evaluation_config or EvaluationConfig()
    serving_check_config = serving_check_config or ServingCheckConfig()
    # Unknown metric names or out-of-range gate settings fail here, at build time (gate_config.py).
    evaluation_config.validate()
    serving_check_config.validate()
    span_config = span_config or SpanConfig()
    spanned = uses_spans(interactions_path, span_config.layout)
    interaction_gen = _interaction_example_gen(interactions_path, spanned, span_config.pin)
    item_gen = _item_example_gen(items_path)
    i_stats, i_schema, i_validator = _validated(interaction_gen.outputs["examples"], interactions_schema_path,
                                                "Interaction")
    # Spans: drift against the previous span, and the window of spans Transform and the Trainer see.
    span_nodes = list(_span_drift(interaction_gen.outputs["examples"], i_stats.outputs["statistics"],
                                  i_schema.outputs["schema"], drift_config or DriftConfig())) if spanned else []
    window = _span_window(interaction_gen, span_config, baseline_resolution) if spanned else None
    training_examples = window.outputs["examples"] if window else interaction_gen.outputs["examples"]
    c_stats, c_schema, c_validator = _validated(item_gen.outputs["examples"], items_schema_path, "Item")
    gate = AnomalyGate(interaction_anomalies=i_validator.outputs["anomalies"],
                       item_anomalies=c_validator.outputs["anomalies"],
                       interactions=interaction_gen.outputs["examples"],
                       items=item_gen.outputs["examples"])

    transform = tfx.components.Transform(
        examples=training_examples,
        schema=i_schema.outputs["schema"],
        preprocessing_fn=preprocessing_fn,
        # Its pre/post-transform statistics would be two more TFDV passes over every row that nothing reads:
        # InteractionStatisticsGen already profiles the data, and the trainer reads only the transformed examples.
        disable_statistics=True,
    )
    transform.add_upstream_node(gate)
    if span_nodes:
        transform.add_upstream_node(span_nodes[-1])  # drift that stops the run stops it before Transform

    skew_config = skew_config or SkewConfig()
    skew_check = TrainingServingSkew(examples=interaction_gen.outputs["examples"], request_log_dir=request_log_dir,
                                     config=skew_config.to_json())
    if skew_config.action == "stop":
        transform.add_upstream_node(skew_check)

    # Item-text embeddings, reusing the previous run's for texts (and encoder) seen before.
    embeddings_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        embeddings=tfx.dsl.Channel(type=CatalogEmbeddings),
    ).with_id("LatestCatalogEmbeddingsResolver")
    embedder = CatalogEmbedder(items=item_gen.outputs["examples"], previous=embeddings_resolver.outputs["embeddings"],
                               preprocess_handle=model_config.preprocess_handle,
                               encoder_handle=model_config.encoder_handle, output_key=model_config.encoder_output_key,
                               precision=model_config.catalogue_embedding_precision)
    embedder.add_upstream_node(gate)

    # Warm start: the Trainer starts from the latest blessed model (ModelConfig.warm_start turns it off).
    latest_blessed = _latest_blessed_model_resolver()
    trainer = CatalogTrainer(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=i_schema.outputs["schema"],
        items=item_gen.outputs["examples"],
        embeddings=embedder.outputs["embeddings"],
        base_model=latest_blessed.outputs["model"],
        run_fn=run_fn,
        # num_steps=0 means "ModelConfig.epochs over the data" (see trainer/train.py).
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=eval_steps),
        custom_config={"model": model_config.to_dict()},
    )
    trainer.add_upstream_node(gate)
    if skew_config.action == "stop":
        trainer.add_upstream_node(skew_check)

    baseline_resolvers = _baseline_resolvers(baseline_resolution, evaluation_config.baseline_window, latest_blessed)
    evaluator = RetrievalEvaluator(
        model=trainer.outputs["model"],
        examples=interaction_gen.outputs["examples"],
        items=item_gen.outputs["examples"],
        config=evaluation_config,
        **{key: resolver.outputs["model"] for key, resolver in baseline_resolvers.items()},
    )
    if infra_validator:
        serving_check = _stock_infra_validator(trainer.outputs["model"], interaction_gen.outputs["examples"],
                                               infra_validator, tf_serving_tag)
    else:
        serving_check = ServingCheck(model=trainer.outputs["model"], items=item_gen.outputs["examples"],
                                     config=serving_check_config)

    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=serving_check.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)),
    )
    report = RunReport(
        evaluation=evaluator.outputs["evaluation"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=serving_check.outputs["blessing"],
        interaction_statistics=i_stats.outputs["statistics"],
        item_statistics=c_stats.outputs["statistics"],
        pushed_model=pusher.outputs["pushed_model"],
        report_dir=report_dir,
        pipeline_name=pipeline_name,
        skew_anomalies=skew_check.outputs["anomalies"],
        **({"span_drift": span_nodes[-1].outputs["anomalies"]} if span_nodes else {}),
    )
    if window:
        span_nodes.append(window)

    for component in (interaction_gen, i_stats, skew_check, gate, transform):
        component.with_beam_pipeline_args(interaction_beam_pipeline_args or [])

    components = [interaction_gen, item_gen, i_stats, i_schema, i_validator, c_stats, c_schema, c_validator,
                  gate, skew_check, transform, embeddings_resolver, embedder, latest_blessed, trainer,
                  *(r for r in baseline_resolvers.values() if r is not latest_blessed),
                  evaluator, serving_check, pusher, report, *span_nodes]
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args,
    )
