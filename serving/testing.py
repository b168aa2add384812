"""Test and benchmark helpers: ``python -m serving.server`` as a subprocess on free localhost ports.

    with ServerProcess(base_path, log_path="server.log", extra_args=["--enable_batching", "false"]) as srv:
        stub = PredictionServiceStub(grpc.insecure_channel(srv.grpc_target)); srv.rest_url
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def predict_request(model_name: str, user_id: str, history: list[str] | tuple[str, ...], k: int):
    """One batched `serving_default` PredictRequest (batch 1, PAD-led history, no exclusions), as clients send it."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from schema import contract

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs[contract.USER_ID].CopyFrom(tf.make_tensor_proto([user_id]))
    request.inputs[contract.HISTORY].CopyFrom(tf.make_tensor_proto([[contract.PAD, *history]]))
    request.inputs[contract.INPUT_EXCLUDE].CopyFrom(tf.make_tensor_proto([[contract.PAD]]))
    request.inputs[contract.INPUT_K].CopyFrom(tf.make_tensor_proto([k], dtype=tf.int32))
    return request


class ServerProcess:
    """The local server in a subprocess; ``start()`` returns once a version is AVAILABLE over REST.

    ``port``/``rest_port`` (default: free ones) let a restarted server come back where clients expect it.
    """

    def __init__(self, model_base_path: str, model_name: str = "tower_recs", log_path: str | None = None,
                 extra_args: list[str] | None = None, ready_timeout_s: float = 120.0, port: int = 0,
                 rest_port: int = 0):
        self.model_base_path = model_base_path
        self.model_name = model_name
        self.port, self.rest_port = port or free_port(), rest_port or free_port()
        self.log_path = log_path
        self.extra_args = list(extra_args or [])
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log_text(self) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def start(self) -> "ServerProcess":
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="1", PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "serving.server", "--model_base_path", self.model_base_path,
               "--model_name", self.model_name, "--port", str(self.port), "--rest_api_port", str(self.rest_port),
               "--host", "127.0.0.1", *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_DIR)
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"{self.rest_url}/v1/models/{self.model_name}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if any(v["state"] == "AVAILABLE" for v in json.loads(r.read())["model_version_status"]):
                        return self
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not ready after {self.ready_timeout_s}s:\n{self.log_text()[-3000:]}")

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (graceful drain) and wait for the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
