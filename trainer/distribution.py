"""Where training runs: the distribution strategy (from `TF_CONFIG` and the visible devices), the devices
it trained on, and which worker writes the model.

    strategy = choose_strategy(require_gpu=cfg.require_gpu)   # FIRST, before any other TF op
    ...
    model = train_model(cfg, ..., strategy=strategy)
    with export_dir_for_task(strategy, fn_args.serving_model_dir) as export_dir:
        export_serving_model(module, export_dir, ...)           # every worker saves; only the chief's stays

Strategies, in order:
* `TF_CONFIG` names more than one task (Kubeflow's TFJob and Vertex custom jobs set it):
  `MultiWorkerMirroredStrategy`. Every peer must answer within `TOWER_RECS_WORKER_CONNECT_TIMEOUT_S`
  (default 120 s), else the run fails naming the unreachable worker instead of hanging in the first
  all-reduce.
* more than one GPU (or logical CPU device configured by a test): `MirroredStrategy` over them.
* otherwise TF's default strategy (one device).

TensorFlow only accepts collective ops (multi-worker) before its runtime is initialised, so
`choose_strategy` must come before any other TensorFlow op of the process (`tf.config.list_physical_devices`
does not initialise it; `list_logical_devices` does).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Iterator, Optional

import tensorflow as tf
from absl import logging

CONNECT_TIMEOUT_ENV = "TOWER_RECS_WORKER_CONNECT_TIMEOUT_S"
DEFAULT_CONNECT_TIMEOUT_S = 120.0
DEVICES_FILE = "devices.json"
# Task types of TF_CONFIG that train (a TFJob's "ps"/"evaluator" tasks do not take part in all-reduce).
_TRAINING_TASKS = ("chief", "worker")


# tf.distribute's public names of its strategy classes.
_STRATEGY_NAMES = {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy",
                   "_DefaultDistributionStrategy": "OneDevice (default)"}


class GpuNotVisibleError(RuntimeError):
    """A GPU was requested for training and TensorFlow sees none."""


def tf_config(environ: Optional[dict] = None) -> dict[str, Any]:
    """The parsed `TF_CONFIG` ({} when unset); a value that is not a JSON object is a ValueError naming it."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not JSON ({e}): {text[:200]!r}") from None
    if not isinstance(value, dict) or not isinstance(value.get("cluster", {}), dict):
        raise ValueError(f"TF_CONFIG must be a JSON object with a 'cluster' object: {text[:200]!r}")
    return value


def training_tasks(config: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(task type, index, "host:port") of every chief/worker task of a parsed TF_CONFIG, chief first."""
    cluster = config.get("cluster", {})
    return [(kind, i, address) for kind in _TRAINING_TASKS for i, address in enumerate(cluster.get(kind, []))]


def is_multi_worker(config: dict[str, Any]) -> bool:
    return len(training_tasks(config)) > 1


def is_chief(config: dict[str, Any]) -> bool:
    """True for the task that writes the model: the "chief" task, else worker 0 (TF's convention)."""
    task = config.get("task", {})
    if not is_multi_worker(config):
        return True
    has_chief = bool(config.get("cluster", {}).get("chief"))
    kind, index = task.get("type"), int(task.get("index", 0))
    return kind == "chief" or (not has_chief and kind == "worker" and index == 0)


def wait_for_peers(config: dict[str, Any], timeout_s: float, waited_s: Optional[float] = None) -> None:
    """Blocks until every other training task accepts a TCP connection; TimeoutError names the ones that did not.

    Args:
      config: the parsed TF_CONFIG.
      timeout_s: how long to retry (0: check once).
      waited_s: the time to name in the error when the caller waited elsewhere.
    """
    task = config.get("task", {})
    me = (task.get("type"), int(task.get("index", 0)))
    pending = {(kind, i): address for kind, i, address in training_tasks(config) if (kind, i) != me}
    deadline = time.monotonic() + timeout_s
    while pending:
        for key, address in list(pending.items()):
            host, _, port = address.rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=2):
                    del pending[key]
            except (OSError, ValueError):
                pass
        if pending and time.monotonic() > deadline:
            names = ", ".join(f"{kind} {i} at {address}" for (kind, i), address in sorted(pending.items()))
            raise TimeoutError(
                f"TF_CONFIG names workers that did not answer within {waited_s or timeout_s:.0f} s: {names}. Check that "
                f"every task of the job is running and reachable (or raise {CONNECT_TIMEOUT_ENV}).")
        if pending:
            time.sleep(0.5)


def _multi_worker_strategy(config: dict[str, Any], timeout_s: float) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy whose start fails after `timeout_s` when a peer never registers.

    The strategy configures TF's coordination service with no registration timeout (it would wait
    forever for a missing worker); configured first with one, the strategy keeps it.
    """
    # Internal TF APIs: the public strategy constructor has no timeout argument.
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.distribute.cluster_resolver import TFConfigClusterResolver
    from tensorflow.python.eager import context
    from tensorflow.tsl.protobuf import coordination_config_pb2

    cluster_spec = TFConfigClusterResolver().cluster_spec()
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in _TRAINING_TASKS if job in cluster_spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs, cluster_register_timeout_in_ms=int(timeout_s * 1000))
    if is_chief(config):
        # The chief hosts the coordination service, whose start blocks (in C++, without a timeout) until
        # every worker registered: it first waits for the other workers' servers, which they start first.
        wait_for_peers(config, timeout_s)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except Exception as e:  # noqa: BLE001 - any start failure: name the peers that do not answer
        wait_for_peers(config, 0, waited_s=timeout_s)
        raise RuntimeError(f"MultiWorkerMirroredStrategy did not start within {timeout_s:.0f} s "
                           f"({CONNECT_TIMEOUT_ENV}): {e}") from e


def check_gpu(require_gpu: bool) -> list[str]:
    """The physical GPUs TensorFlow sees; GpuNotVisibleError when `require_gpu` and there are none."""
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    if require_gpu and not gpus:
        raise GpuNotVisibleError(
            "A GPU was requested for training (ModelConfig.require_gpu, set by TOWER_RECS_TRAINER_GPUS) but "
            f"TensorFlow {tf.__version__} sees none (built with CUDA: {tf.test.is_built_with_cuda()}): is the "
            "pod on a GPU node, and is the image the GPU one (`docker build --target gpu`)? To train on "
            "CPU anyway set TOWER_RECS_MODEL_REQUIRE_GPU=0.")
    return gpus


def choose_strategy(require_gpu: bool = False, environ: Optional[dict] = None,
                    connect_timeout_s: Optional[float] = None) -> tf.distribute.Strategy:
    """The strategy for this process (see the module docstring); logs it with the worker count.

    Args:
      require_gpu: fail (GpuNotVisibleError) instead of training on CPU when no GPU is visible.
      environ: where to read TF_CONFIG and the timeout (default `os.environ`).
      connect_timeout_s: how long to wait for the other workers (default: the env setting, else 120 s).
    """
    environ = os.environ if environ is None else environ
    config = tf_config(environ)
    gpus = check_gpu(require_gpu)
    if is_multi_worker(config):
        if connect_timeout_s is None:
            connect_timeout_s = float(environ.get(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S))
        strategy = _multi_worker_strategy(config, connect_timeout_s)
    elif len(gpus) > 1 or len(tf.config.list_logical_devices("CPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    info = describe(strategy, environ)
    logging.info("Training with %s: %d worker(s), %d replica(s), devices %s", info["strategy"], info["workers"],
                 info["replicas"], info["devices"])
    return strategy


def num_workers(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(kind, [])) for kind in _TRAINING_TASKS))


def _replica_devices(strategy: tf.distribute.Strategy) -> list[str]:
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: TF places ops itself, on the first GPU if there is one
        gpus = tf.config.list_logical_devices("GPU")
        return [(gpus or tf.config.list_logical_devices("CPU"))[0].name]


def describe(strategy: tf.distribute.Strategy, environ: Optional[dict] = None) -> dict[str, Any]:
    """What training ran on, for the log and the run report: strategy, workers, replicas, devices."""
    config = tf_config(environ)
    task = config.get("task", {})
    return {
        "strategy": _STRATEGY_NAMES.get(type(strategy).__name__, type(strategy).__name__),
        "workers": num_workers(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "task": f"{task.get('type', 'worker')}:{task.get('index', 0)}" if config else "local",
        "devices": _replica_devices(strategy),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "built_with_cuda": tf.test.is_built_with_cuda(),
    }


def use_xla(jit_compile: bool, xla_on_gpu: bool) -> bool:
    """XLA for the train step: `jit_compile` forces it; `xla_on_gpu` turns it on where a GPU is visible.

    On CPU XLA made a step ~8x slower (benchmarks/results/training_throughput.md), so it stays off there.
    """
    return jit_compile or (xla_on_gpu and bool(tf.config.list_physical_devices("GPU")))


def write_devices(strategy: tf.distribute.Strategy, output_dir: str, **extra: Any) -> str:
    """Writes `describe(strategy)` (plus `extra`) as `<output_dir>/devices.json`; returns the path."""
    path = os.path.join(output_dir, DEVICES_FILE)
    tf.io.gfile.makedirs(output_dir)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump({**describe(strategy), **extra}, f, indent=1)
    return path


@contextlib.contextmanager
def export_dir_for_task(strategy: tf.distribute.Strategy, export_dir: str) -> Iterator[str]:
    """The directory this task saves the model to: `export_dir` on the chief, a scratch dir elsewhere.

    Saving a multi-worker model may run collective ops, so every worker must save; the non-chief
    copies go to a temporary directory that is removed afterwards (also when saving fails).
    """
    if is_chief(tf_config()) or num_workers(strategy) == 1:
        yield export_dir
        return
    scratch = tempfile.mkdtemp(prefix="tower_recs_worker_export_")
    try:
        yield os.path.join(scratch, "model")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def distribute_batches(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """`dataset` of global batches split across replicas: each replica gets its own slice of every batch.

    Every input pipeline (one per worker) takes a contiguous part of each global batch, so N workers
    together see exactly the batches of a single-process run (the same rows, in the same steps).
    Needs full batches (the training stream's are); the input is read on every worker.
    Returns `dataset` unchanged for a one-replica strategy.
    """
    if strategy.num_replicas_in_sync == 1:
        return dataset

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        pipelines, pipeline_id = context.num_input_pipelines, context.input_pipeline_id
        replicas_here = context.num_replicas_in_sync // pipelines

        def pipeline_part(batch):
            def cut(t):
                size = tf.shape(t)[0] // pipelines
                part = t[pipeline_id * size:(pipeline_id + 1) * size]
                return tf.reshape(part, tf.concat([[replicas_here, size // replicas_here], tf.shape(t)[1:]], 0))
            return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(cut, batch))

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return dataset.flat_map(pipeline_part).with_options(options)

    return strategy.distribute_datasets_from_function(dataset_fn)
