"""Request failures as TF Serving reports them: a gRPC status code name and a message naming the problem.

    raise ServingError("INVALID_ARGUMENT", "Input 'k' has dtype string, expected int32")

The gRPC front end aborts with ``grpc.StatusCode[code]``; the REST front end maps the code to an HTTP status
the way tensorflow_serving/model_servers/http_server.cc ``ToHTTPStatusCode`` does (``HTTP_STATUS``).
"""
from __future__ import annotations

import re

# tf.errors / google.rpc code numbers (the same numbering as grpc.StatusCode) -> names.
CODE_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}

# tensorflow_serving/model_servers/http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """A failed request: ``code`` is a gRPC status code name (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def __repr__(self) -> str:
        return f"ServingError({self.code}: {self.message})"


def invalid(message: str) -> ServingError:
    """The common case: INVALID_ARGUMENT (HTTP 400)."""
    return ServingError("INVALID_ARGUMENT", message)


def clean_tf_message(message: str) -> str:
    """A TF runtime error without graph-execution noise ('Detected at node', '[[{{node ...}}]]', '[Op:...]')."""
    keep = []
    for line in message.splitlines():
        s = line.strip()
        if not s or s.startswith(("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")):
            continue
        keep.append(re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", s))
    return " ".join(keep) or message.strip()
