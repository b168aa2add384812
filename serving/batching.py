"""Server-side batching with TF Serving's rules: concurrent requests merged along dim 0 into one signature call.

    options = BatchingOptions.from_file("serving/config/batching_parameters.txt")   # what production uses
    batcher = Batcher(run=servable.execute, options=options)
    outputs = batcher.submit(signature, arrays, output_names, deadline)

The rules are TF Serving's (tensorflow_serving/batching/batching_session.cc, batching_util.{h,cc}):
  * every input of a request needs a batch dimension, all of the same size (a rank-0 input is rejected with
    "Batching Run() input tensors must have at least one dimension"); a request bigger than
    ``max_batch_size`` is rejected;
  * requests merge when they call the same signature with the same inputs and fetch the same outputs;
  * other dims must match, unless ``pad_variable_length_inputs``: then each request's tensor is padded on
    the right with *its own first element* (so the retrieval model's clients start history/exclude rows
    with ""; see serving/client.py);
  * a batch runs when it is full, or ``batch_timeout_micros`` after its first request (0: at once when a
    batch thread is free); at most ``num_batch_threads`` batches run at a time, and at most
    ``max_enqueued_batches`` wait (beyond that: UNAVAILABLE, as TF Serving's SharedBatchScheduler).

No batch threads: the request thread that finds a free slot runs batches (its own and others') until its
request is answered, then passes the slot to the oldest waiting request (or frees it). A waiting request
gives up with DEADLINE_EXCEEDED at its deadline unless its batch is already running.

One deliberate difference: when a merged call fails, TF Serving fails every request in the batch; here
each request is re-run alone, so one malformed request cannot fail its neighbours (logged as a warning,
because in production it would).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from serving.errors import ServingError, invalid

log = logging.getLogger("serving.batching")

# The file production (serving/Dockerfile, deploy/k8s) passes as --batching_parameters_file.
DEFAULT_PARAMETERS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config",
                                       "batching_parameters.txt")


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's BatchingParameters; field defaults are TF Serving's own (shared_batch_scheduler.h).

        BatchingOptions.from_text("max_batch_size { value: 64 } batch_timeout_micros { value: 0 }")
    """
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    @classmethod
    def from_text(cls, text: str) -> "BatchingOptions":
        """Parses the text format of tensorflow.serving.BatchingParameters (unknown fields are an error)."""
        from google.protobuf import text_format

        proto = text_format.Parse(text, batching_parameters_class()())
        values: dict[str, Any] = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
            if proto.HasField(name):
                values[name] = int(getattr(proto, name).value)
        if proto.allowed_batch_sizes:
            values["allowed_batch_sizes"] = tuple(int(s) for s in proto.allowed_batch_sizes)
        values["pad_variable_length_inputs"] = bool(proto.pad_variable_length_inputs)
        options = cls(**values)
        options.validate()
        return options

    @classmethod
    def from_file(cls, path: str = DEFAULT_PARAMETERS_FILE) -> "BatchingOptions":
        with open(path, encoding="utf-8") as f:
            return cls.from_text(f.read())

    def validate(self) -> None:
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise ValueError(f"max_batch_size, num_batch_threads and max_enqueued_batches must be >= 1: {self}")
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError(f"allowed_batch_sizes must increase and end with max_batch_size "
                             f"({self.max_batch_size}): {sizes}")


def batching_parameters_class():
    """tensorflow.serving.BatchingParameters (session_bundle_config.proto), which the pip package lacks.

    Built from a descriptor with TF Serving's field names, so the same text file parses here and there.
    """
    global _BATCHING_PARAMETERS
    if _BATCHING_PARAMETERS is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

        field = descriptor_pb2.FieldDescriptorProto
        pool = descriptor_pool.DescriptorPool()
        pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
        fd = descriptor_pb2.FileDescriptorProto(name="tower_recs_batching_parameters.proto",
                                                package="tensorflow.serving", syntax="proto3",
                                                dependency=["google/protobuf/wrappers.proto"])
        msg = fd.message_type.add(name="BatchingParameters")
        for number, name in [(1, "max_batch_size"), (2, "batch_timeout_micros"), (3, "max_enqueued_batches"),
                             (4, "num_batch_threads")]:
            msg.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=".google.protobuf.Int64Value")
        msg.field.add(name="thread_pool_name", number=5, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                      type_name=".google.protobuf.StringValue")
        msg.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
        msg.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL,
                      label=field.LABEL_OPTIONAL)
        pool.Add(fd)
        _BATCHING_PARAMETERS = message_factory.MessageFactory(pool).GetPrototype(
            pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
    return _BATCHING_PARAMETERS


_BATCHING_PARAMETERS = None


def batch_size(arrays: Mapping[str, np.ndarray]) -> int:
    """The common dim-0 size of a request's inputs (TF Serving's ComputeTensorBatchSize, batching_util.h)."""
    if not arrays:
        raise invalid("Batching Run() must have at least one input tensor")
    sizes = set()
    for array in arrays.values():
        if array.ndim == 0:
            raise invalid("Batching Run() input tensors must have at least one dimension")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


class _Task:
    __slots__ = ("key", "signature", "arrays", "outputs", "rows", "deadline", "enqueued", "event", "leader",
                 "taken", "done", "result", "error")

    def __init__(self, key, signature, arrays, outputs, rows, deadline):
        self.key, self.signature, self.arrays, self.outputs = key, signature, arrays, outputs
        self.rows, self.deadline = rows, deadline
        self.enqueued = time.monotonic()
        self.event = threading.Event()
        self.leader = self.taken = self.done = False
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class Batcher:
    """Merges concurrent requests of one servable (see the module docstring).

    ``run(signature, arrays, output_names) -> {name: array}`` executes one (merged) call.
    ``active`` is the number of batch slots in use (0 when idle); ``calls``/``rows`` count executed calls.
    """

    def __init__(self, run: Callable[[Any, Mapping[str, np.ndarray], Sequence[str]], dict], options: BatchingOptions):
        self._run = run
        self.options = options
        self._cond = threading.Condition()
        self._queue: list[_Task] = []
        self.active = 0
        self.calls = 0
        self.rows = 0
        self.merged_calls = 0

    # ------------------------------------------------------------------ request side
    def submit(self, signature, arrays: Mapping[str, np.ndarray], outputs: Sequence[str],
               deadline: float | None = None) -> dict[str, np.ndarray]:
        """Runs the request in a batch; ``deadline`` is a time.monotonic() value (None: no deadline)."""
        rows = batch_size(arrays)
        if rows > self.options.max_batch_size:
            raise invalid(f"Task size {rows} is larger than maximum input batch size "
                          f"{self.options.max_batch_size}")
        key = (signature.name, tuple(sorted(arrays)), tuple(sorted(outputs)))
        task = _Task(key, signature, arrays, list(outputs), rows, deadline)
        with self._cond:
            queued_rows = sum(t.rows for t in self._queue)
            if math.ceil((queued_rows + rows) / self.options.max_batch_size) > self.options.max_enqueued_batches:
                raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this task was submitted "
                                                  "is full")
            self._queue.append(task)
            self._cond.notify_all()
            if self.active < self.options.num_batch_threads:
                self.active += 1
                task.leader = True
        if not task.leader:
            self._follow(task)
        if task.leader:
            self._lead(task)
        if task.error is not None:
            raise task.error
        return task.result

    def _follow(self, task: _Task) -> None:
        """Waits until the task is answered or promoted to leader; DEADLINE_EXCEEDED if still queued at deadline."""
        while True:
            timeout = None if task.deadline is None else max(0.0, task.deadline - time.monotonic())
            if task.event.wait(timeout):
                return
            with self._cond:
                if task.done or task.leader:
                    return
                if not task.taken:
                    self._queue.remove(task)
                    task.error = ServingError("DEADLINE_EXCEEDED", "Request timed out waiting in the batch queue")
                    return
            task.event.wait()            # its batch is running: the answer comes when the call returns
            return

    # ------------------------------------------------------------------ batch slot side
    def _lead(self, task: _Task) -> None:
        while True:
            with self._cond:
                if task.done:
                    successor = next((t for t in self._queue if not t.leader), None)
                    if successor is not None:    # the slot passes on; it is not freed and retaken
                        successor.leader = True
                        successor.event.set()
                    else:
                        self.active -= 1
                    return
                batch = self._take() if self._queue else None
            if batch is None:
                task.event.wait()       # our request is in a batch another slot is running
            elif batch:
                self._execute(batch)

    def _take(self) -> list[_Task]:
        """Removes the next batch from the queue (called with the lock held; may wait for batch_timeout)."""
        timeout_s = self.options.batch_timeout_micros / 1e6
        while True:
            if not self._queue:          # emptied by deadlines while we waited
                return []
            first = self._queue[0]
            batch, rows = [], 0
            for t in self._queue:
                if t.key == first.key and rows + t.rows <= self.options.max_batch_size:
                    batch.append(t)
                    rows += t.rows
            wait = timeout_s - (time.monotonic() - first.enqueued)
            if rows >= self.options.max_batch_size or wait <= 0:
                break
            self._cond.wait(wait)
        now = time.monotonic()
        for t in batch:
            self._queue.remove(t)
            t.taken = True
        expired = [t for t in batch if t.deadline is not None and t.deadline < now]
        for t in expired:
            t.error = ServingError("DEADLINE_EXCEEDED", "Request timed out waiting in the batch queue")
            self._finish(t)
        return [t for t in batch if t not in expired]

    def _execute(self, batch: list[_Task]) -> None:
        calls = merged_calls = 0
        try:
            merged = self._merge(batch) if len(batch) > 1 else None
            if merged is not None:
                try:
                    self._split(batch, self._run(batch[0].signature, merged, batch[0].outputs))
                    calls = merged_calls = 1
                    return
                except ServingError as e:
                    log.warning("A merged batch of %d requests failed (%s: %s); TF Serving would fail all of "
                                "them, re-running each alone", len(batch), e.code, e.message)
            for t in batch:
                try:
                    calls += 1
                    t.result = self._run(t.signature, t.arrays, t.outputs)
                except ServingError as e:
                    t.error = e
        except BaseException as e:  # noqa: BLE001 - every task must be answered
            for t in batch:
                if t.result is None and t.error is None:
                    t.error = e if isinstance(e, ServingError) else ServingError("INTERNAL", f"{type(e).__name__}: {e}")
        finally:
            with self._cond:
                self.calls += calls
                self.merged_calls += merged_calls
                self.rows += sum(t.rows for t in batch)
                for t in batch:
                    self._finish(t)

    @staticmethod
    def _finish(task: _Task) -> None:
        task.done = True
        task.event.set()

    # ------------------------------------------------------------------ tensors
    def _merge(self, batch: list[_Task]) -> dict[str, np.ndarray] | None:
        """Concatenated inputs (padded as TF Serving pads), or None when TF Serving could not merge them."""
        merged = {}
        pad_rows = self._padding_rows(sum(t.rows for t in batch))
        for name in batch[0].arrays:
            parts = [t.arrays[name] for t in batch]
            if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
                if not self.options.pad_variable_length_inputs or any(p.ndim != parts[0].ndim for p in parts):
                    log.warning("Requests with different '%s' shapes arrived together; TF Serving fails such a "
                                "batch unless pad_variable_length_inputs is set", name)
                    return None
                parts = self._pad(name, parts)
                if parts is None:
                    return None
            if pad_rows:
                parts.append(np.repeat(parts[-1][:1], pad_rows, axis=0))
            merged[name] = np.concatenate(parts, axis=0)
        return merged

    def _padding_rows(self, rows: int) -> int:
        """Rows added to reach the smallest allowed batch size (RoundToLowestAllowedBatchSize)."""
        for size in self.options.allowed_batch_sizes:
            if size >= rows:
                return size - rows
        return 0

    @staticmethod
    def _pad(name: str, parts: list[np.ndarray]) -> list[np.ndarray] | None:
        """TF Serving's AddPadding: each tensor padded at the end of every dim with its own first element."""
        target = [max(p.shape[d] for p in parts) for d in range(parts[0].ndim)]
        padded = []
        for p in parts:
            widths = [(0, 0)] + [(0, target[d] - p.shape[d]) for d in range(1, p.ndim)]
            if not any(w for _, w in widths):
                padded.append(p)
                continue
            if p.size == 0:
                log.warning("Input '%s' of one request is empty; TF Serving fails its whole batch with \"Got empty "
                            "tensor in batch of non-empty tensors.\"", name)
                return None
            value = p.flat[0]
            if value not in (b"", 0):
                log.warning("Input '%s' padded with its first element %r to merge requests of different widths, "
                            "as TF Serving does; start rows with a pad value to keep answers unchanged",
                            name, value)
            padded.append(np.pad(p, widths, mode="constant", constant_values=value))
        return padded

    def _split(self, batch: list[_Task], out: Mapping[str, np.ndarray]) -> None:
        total = sum(t.rows for t in batch)
        for value in out.values():
            if value.ndim == 0:
                raise ServingError("FAILED_PRECONDITION", "Batched output tensor has 0 dimensions")
            if value.shape[0] != total + self._padding_rows(total):
                raise ServingError("FAILED_PRECONDITION", "Batched output tensor's 0th dimension does not equal "
                                                          "the sum of the 0th dimension sizes of the input tensors")
        start = 0
        for t in batch:
            t.result = {n: v[start:start + t.rows] for n, v in out.items()}
            start += t.rows
