"""TrainingServingSkew: TFDV skew between the training interactions and the requests the server logged.

Reads the interactions' train split (ExampleGen) and the server's request log (`serving.request_log`,
TFRecord files of PredictionLog under `request_log_dir`), computes TFDV statistics of both in one Beam job
with the pipeline's `beam_pipeline_args`, and compares them with the skew comparators of `SkewConfig`
(`serving.skew`). Outputs:

  statistics  ExampleStatistics, splits `train` and `serving` (request view: user_id, history,
              history_length); `Split-train` is what `python -m serving.skew --statistics` compares with
  anomalies   ExampleAnomalies, split `serving` (TFDV's SchemaDiff.pb), plus `skew.json` that the
              RunReport shows: status, measurements, anomalies, or why the check was skipped

No request log configured, no recent file, or too few requests: the check is skipped and says so in the
report. With `SkewConfig.action == "stop"` a skew fails this step; the pipeline then makes Transform and
the Trainer wait for it, so nothing is trained or pushed.
"""

import apache_beam as beam
from tfx import v1 as tfx

from pipeline.components.skew_config import SkewConfig


class TrainingServingSkewError(ValueError):
    """Raised when the logged requests are skewed and `SkewConfig.action` is "stop"."""


@tfx.dsl.components.component(use_beam=True)
def TrainingServingSkew(
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    statistics: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    anomalies: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    request_log_dir: tfx.dsl.components.Parameter[str] = "",
    config: tfx.dsl.components.Parameter[str] = "",
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Writes request-view statistics and skew anomalies; raises on skew when `config` says "stop"."""
    import os

    from absl import logging
    from tfx.dsl.io import fileio
    from tfx.types import artifact_utils

    from pipeline import example_reader
    from schema import contract
    from serving import skew

    cfg = SkewConfig.from_json(config)
    result = skew.check(statistics.uri, request_log_dir, cfg,
                        training_pattern=example_reader.split_pattern(examples, contract.TRAIN_SPLIT),
                        beam_pipeline=beam_pipeline)
    statistics.split_names = artifact_utils.encode_split_names(
        [s for s in (skew.TRAIN, skew.SERVING) if fileio.isdir(os.path.join(statistics.uri, f"Split-{s}"))])
    serving_anomalies = os.path.join(statistics.uri, f"Split-{skew.SERVING}", skew.ANOMALIES_FILE)
    if fileio.exists(serving_anomalies):
        fileio.makedirs(os.path.join(anomalies.uri, f"Split-{skew.SERVING}"))
        fileio.rename(serving_anomalies, os.path.join(anomalies.uri, f"Split-{skew.SERVING}", skew.ANOMALIES_FILE))
        anomalies.split_names = artifact_utils.encode_split_names([skew.SERVING])
    else:
        anomalies.split_names = artifact_utils.encode_split_names([])
    fileio.copy(os.path.join(statistics.uri, skew.RESULT_FILE), os.path.join(anomalies.uri, skew.RESULT_FILE))
    anomalies.set_string_custom_property("skew_status", result["status"])
    anomalies.set_int_custom_property("skewed", int(result["skewed"]))
    text = skew.describe(result)
    if result["skewed"] and cfg.action == "stop":
        raise TrainingServingSkewError(
            f"{text}\nThe logged requests are skewed from the training data and SkewConfig.action is 'stop' "
            f"(TOWER_RECS_SKEW_ACTION): nothing was trained or pushed.")
    (logging.warning if result["skewed"] else logging.info)("%s", text)
