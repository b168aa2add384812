"""The Trainer as a Vertex AI custom job: the worker-pool spec of a multi-worker (and GPU) training job.

TFX's Vertex Trainer extension (`tfx.extensions.google_cloud_ai_platform.Trainer`) runs the same
`run_fn` in every replica of the job's worker pools; Vertex sets `TF_CONFIG` (a "chief" and
"worker" tasks), so `trainer/distribution.py` picks MultiWorkerMirroredStrategy and only the chief
writes the serving model. The image is the pipeline image (`docker build --target gpu` for GPUs).

    custom_config = {**trainer_custom_config(project="P", region="europe-west4",
                                             image="REGISTRY/tower-recs-pipeline:TAG-gpu", workers=2, gpus=1),
                     "model": ModelConfig(require_gpu=True).to_dict()}
    trainer = tfx.extensions.google_cloud_ai_platform.Trainer(..., custom_config=custom_config)
"""
from __future__ import annotations

from typing import Any

DEFAULT_MACHINE_TYPE = "n1-standard-8"
DEFAULT_ACCELERATOR = "NVIDIA_TESLA_T4"


def worker_pool_specs(image: str, workers: int = 1, machine_type: str = DEFAULT_MACHINE_TYPE, gpus: int = 0,
                      accelerator: str = DEFAULT_ACCELERATOR) -> list[dict[str, Any]]:
    """Vertex `CustomJobSpec.worker_pool_specs`: one chief, then `workers - 1` workers, all alike.

    Args:
      image: the pipeline image (its command is set by TFX's Vertex Trainer executor).
      workers: training processes in all (chief included).
      machine_type: Compute Engine machine type of each replica.
      gpus: accelerators per replica (0: CPU only).
      accelerator: Vertex accelerator type, e.g. NVIDIA_TESLA_T4, NVIDIA_L4, NVIDIA_TESLA_A100.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: a training job needs at least 1 (the chief)")
    if gpus < 0:
        raise ValueError(f"gpus={gpus}: expected 0 or more accelerators per replica")
    machine: dict[str, Any] = {"machine_type": machine_type}
    if gpus:
        machine.update(accelerator_type=accelerator, accelerator_count=gpus)
    pool = {"machine_spec": machine, "container_spec": {"image_uri": image}}
    specs = [{**pool, "replica_count": 1}]
    if workers > 1:
        specs.append({**pool, "replica_count": workers - 1})
    return specs


def trainer_custom_config(project: str, region: str, image: str, workers: int = 1,
                          machine_type: str = DEFAULT_MACHINE_TYPE, gpus: int = 0,
                          accelerator: str = DEFAULT_ACCELERATOR) -> dict[str, Any]:
    """The `custom_config` entries of TFX's Vertex Trainer extension for this job (merge in "model")."""
    from tfx.extensions.google_cloud_ai_platform import constants
    from tfx.extensions.google_cloud_ai_platform.trainer import executor

    if not project or not region:
        raise ValueError("A Vertex training job needs a project and a region")
    return {
        constants.ENABLE_VERTEX_KEY: True,
        constants.VERTEX_REGION_KEY: region,
        executor.TRAINING_ARGS_KEY: {
            "project": project,
            "job_spec": {"worker_pool_specs": worker_pool_specs(image, workers, machine_type, gpus, accelerator)},
        },
    }
