"""Client for the recommender served by TF Serving (or ``serving.server``), over gRPC or REST.

    from serving.client import RecommenderClient
    c = RecommenderClient("localhost:8500")                 # gRPC
    c = RecommenderClient(rest_url="http://localhost:8501")  # REST
    c.recommend("user_1", k=10, history=["item_3"], exclude=["item_5"])  # -> [(item_id, score), ...]

CLI (console script ``recommend``):

    recommend --user U --k 10 [--history i1 i2] [--exclude i1 i2] [--rest] [--rest_url http://localhost:8501]
              [--target localhost:8500] [--model_name tower_recs] [--items data/items.csv]

prints one line per result: rank, item id, score and (with ``--items``) the title.

Requests use the batched contract of ``serving_default`` (trainer/serving_model.py): ``k`` per row ([B]) and
history/exclude rows that start with a "" column, so TF Serving's server-side batching can merge them with
other requests without changing answers (see serving/config/batching_parameters.txt). Entries padded
past a row's k ("" ids) are dropped from the results.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import urllib.error
import urllib.request
from typing import Sequence

PAD = ""
SIGNATURE = "serving_default"


class RecommendError(RuntimeError):
    """A failed request: ``code`` is the gRPC status name (or HTTP status for REST), ``message`` the server's."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _pad(rows: Sequence[Sequence[str]]) -> list[list[str]]:
    """Rows left-padded with PAD to one width, every row starting with PAD: TF Serving pads a request's
    rows with its first element when it merges requests of different widths, and PAD is what the model
    ignores."""
    width = max((len(r) for r in rows), default=0) + 1
    return [[PAD] * (width - len(r)) + list(r) for r in rows]


class RecommenderClient:
    """Top-k recommendations from the served model, over gRPC (``target``) or REST (``rest_url``)."""

    def __init__(self, target: str = "localhost:8500", model_name: str = "tower_recs", timeout_s: float = 5.0,
                 rest_url: str | None = None, signature_name: str = SIGNATURE, version: int | None = None):
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.rest_url = rest_url.rstrip("/") if rest_url else None
        self.signature_name = signature_name
        self.version = version
        self._channel = None
        self._stub = None

    # ------------------------------------------------------------------ public API
    def recommend(self, user_id: str, k: int = 10, history: Sequence[str] = (),
                  exclude: Sequence[str] = ()) -> list[tuple[str, float]]:
        """Up to k (item_id, score) pairs, best first; fewer when exclusions leave fewer items."""
        return self.recommend_batch([user_id], k, [history], [exclude])[0]

    def recommend_batch(self, user_ids: Sequence[str], k: int = 10, histories: Sequence[Sequence[str]] | None = None,
                        excludes: Sequence[Sequence[str]] | None = None) -> list[list[tuple[str, float]]]:
        """One request for several users (histories/excludes of any widths); a list of results per user."""
        user_ids = [str(u) for u in user_ids]
        b = len(user_ids)
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        histories = _pad(histories if histories is not None else [()] * b)
        excludes = _pad(excludes if excludes is not None else [()] * b)
        if len(histories) != b or len(excludes) != b:
            raise ValueError(f"got {b} user ids, {len(histories)} histories and {len(excludes)} exclude lists")
        if self.rest_url:
            ids, scores = self._rest(user_ids, histories, excludes, int(k))
        else:
            ids, scores = self._grpc(user_ids, histories, excludes, int(k))
        return [[(i, float(s)) for i, s in zip(ri, rs) if i != PAD] for ri, rs in zip(ids, scores)]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ gRPC
    def _grpc(self, user_ids, histories, excludes, k):
        import grpc
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        if self._stub is None:
            self._channel = grpc.insecure_channel(self.target)
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

        def strings(t, rows, shape):  # fill the request's own TensorProto: no intermediate message + copy
            t.dtype = types_pb2.DT_STRING
            for d in shape:
                t.tensor_shape.dim.add().size = d
            flat = rows if len(shape) == 1 else [x for r in rows for x in r]
            t.string_val.extend([x.encode("utf-8") for x in flat])

        b = len(user_ids)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = self.model_name
        req.model_spec.signature_name = self.signature_name
        if self.version is not None:
            req.model_spec.version.value = int(self.version)
        inputs = req.inputs
        strings(inputs["user_id"], user_ids, [b])
        strings(inputs["history"], histories, [b, len(histories[0]) if b else 0])
        strings(inputs["exclude"], excludes, [b, len(excludes[0]) if b else 0])
        kt = inputs["k"]                      # one k per row: every input has the batch dimension
        kt.dtype = types_pb2.DT_INT32
        kt.tensor_shape.dim.add().size = b
        kt.int_val.extend([k] * b)
        try:
            resp = self._stub.Predict(req, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise RecommendError(e.code().name, e.details()) from None
        return _decode_strings(resp.outputs["item_ids"]), _decode_floats(resp.outputs["scores"])

    # ------------------------------------------------------------------ REST
    def _rest(self, user_ids, histories, excludes, k):
        url = f"{self.rest_url}/v1/models/{self.model_name}"
        if self.version is not None:
            url += f"/versions/{int(self.version)}"
        body = {"signature_name": self.signature_name,
                "inputs": {"user_id": user_ids, "history": histories, "exclude": excludes, "k": [k] * len(user_ids)}}
        req = urllib.request.Request(url + ":predict", data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                out = json.loads(r.read())["outputs"]
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error", "")
            except ValueError:
                msg = str(e)
            raise RecommendError(f"HTTP {e.code}", msg) from None
        except urllib.error.URLError as e:
            raise RecommendError("UNAVAILABLE", f"{url}: {e.reason}") from None
        return out["item_ids"], out["scores"]


def _shape(t) -> list[int]:
    return [d.size for d in t.tensor_shape.dim]


def _decode_strings(t) -> list[list[str]]:
    b, k = _shape(t)
    vals = [v.decode("utf-8", "replace") for v in t.string_val]
    return [vals[i * k:(i + 1) * k] for i in range(b)]


def _decode_floats(t) -> list[list[float]]:
    """float_val (what TF Serving writes) or tensor_content."""
    b, k = _shape(t)
    if t.tensor_content:
        import numpy as np
        values = np.frombuffer(t.tensor_content, dtype=np.float32).tolist()
    else:
        values = list(t.float_val)
    return [values[i * k:(i + 1) * k] for i in range(b)]


def load_titles(path: str) -> dict[str, str]:
    """`{item_id: title}` of the item catalogue CSV at `path` (a file or a directory of them)."""
    from data.item_csv import read_titles

    return read_titles(path)


def _light_protos() -> None:
    """Make ``tensorflow.core.*_pb2`` importable without running ``tensorflow/__init__`` (~10 s of CPU).

    The serving API protos only need TF's generated protobuf modules. For the CLI process only, and only when
    TensorFlow is not imported yet, register a bare ``tensorflow`` package whose path is the real one.
    """
    if "tensorflow" in sys.modules:
        return
    import importlib.util
    import types
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return
    pkg = types.ModuleType("tensorflow")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["tensorflow"] = pkg


def main(argv=None) -> int:
    _light_protos()
    p = argparse.ArgumentParser(prog="recommend", description="Ask the served recommender for top-k items.")
    p.add_argument("--user", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--history", nargs="*", default=[])
    p.add_argument("--exclude", nargs="*", default=[])
    p.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    p.add_argument("--rest_url", default="http://localhost:8501")
    p.add_argument("--target", default="localhost:8500", help="gRPC host:port")
    p.add_argument("--model_name", default="tower_recs")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--timeout_s", type=float, default=5.0)
    p.add_argument("--items", help="items CSV (item_id,title,...) to print titles")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)

    client = RecommenderClient(a.target, a.model_name, a.timeout_s, rest_url=a.rest_url if a.rest else None,
                               version=a.version)
    try:
        recs = client.recommend(a.user, a.k, a.history, a.exclude)
    except RecommendError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    titles = load_titles(a.items) if a.items else {}
    if a.json:
        print(json.dumps([{"rank": r, "item_id": i, "score": s, "title": titles.get(i, "")}
                          for r, (i, s) in enumerate(recs, 1)]))
        return 0
    print(f"{'rank':>4}  {'item_id':<16} {'score':>10}  title")
    for r, (i, s) in enumerate(recs, 1):
        print(f"{r:>4}  {i:<16} {s:>10.4f}  {titles.get(i, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
