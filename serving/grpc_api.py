"""TF Serving's gRPC services over a ModelManager: PredictionService and ModelService.

    server = grpc.server(futures.ThreadPoolExecutor(8))
    add_services(server, manager, request_timeout_s=30)

Predict / Classify / Regress / GetModelMetadata (tensorflow.serving.PredictionService) and GetModelStatus
(tensorflow.serving.ModelService), with TF Serving's status codes: an unknown model or version is NOT_FOUND,
an unknown version label or an empty ModelSpec name INVALID_ARGUMENT, an unknown Predict signature
FAILED_PRECONDITION (predict_util.cc). Outputs are written to the typed TensorProto fields.
"""
from __future__ import annotations

import logging
import time

import grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

from serving import examples_api
from serving.codec import TensorLimits, ndarray_to_proto, proto_to_ndarray
from serving.errors import ServingError, invalid
from serving.manager import ModelManager
from serving.request_log import RequestLogger

log = logging.getLogger("serving.grpc")


def version_choice(spec) -> tuple[int | None, str | None]:
    """(version, label) of a ModelSpec; neither when it asks for the latest."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


class _Service:
    def __init__(self, manager: ModelManager, request_timeout_s: float):
        self.manager = manager
        self.request_timeout_s = request_timeout_s

    def _deadline(self, context) -> float:
        remaining = context.time_remaining()
        timeout = self.request_timeout_s if remaining is None else min(remaining, self.request_timeout_s)
        return time.monotonic() + timeout

    @staticmethod
    def _abort(context, error: Exception):
        if isinstance(error, ServingError):
            context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN), error.message)
        log.exception("Request failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


class PredictionService(_Service, prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, limits: TensorLimits, request_timeout_s: float,
                 request_logger: RequestLogger | None = None):
        super().__init__(manager, request_timeout_s)
        self.limits = limits
        self.request_logger = request_logger

    def Predict(self, request, context):
        try:
            version, label = version_choice(request.model_spec)
            inputs = {k: proto_to_ndarray(v, k, self.limits) for k, v in request.inputs.items()}
            v, signature, outputs = self.manager.predict(
                request.model_spec.name, inputs, version, label, request.model_spec.signature_name,
                request.output_filter, self._deadline(context))
        except Exception as e:  # noqa: BLE001 - every failure becomes a status, the server keeps serving
            self._abort(context, e)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = v
        response.model_spec.signature_name = signature
        for name, array in outputs.items():
            ndarray_to_proto(array, response.outputs[name])
        if self.request_logger is not None:
            self.request_logger.log_grpc_predict(request, response)
        return response

    def _examples_call(self, request, context, run, response):
        try:
            version, label = version_choice(request.model_spec)
            servable = self.manager.acquire(request.model_spec.name, version, label)
            try:
                signature, result = run(servable, request, self._deadline(context))
            finally:
                servable.release()
        except Exception as e:  # noqa: BLE001
            self._abort(context, e)
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature
        response.result.CopyFrom(result)
        return response

    def Classify(self, request, context):
        return self._examples_call(request, context, examples_api.classify,
                                   classification_pb2.ClassificationResponse())

    def Regress(self, request, context):
        return self._examples_call(request, context, examples_api.regress, regression_pb2.RegressionResponse())

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not served by the local server; use "
                                                     "Classify or Regress")

    def GetModelMetadata(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            fields = list(request.metadata_field)
            if not fields:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            for field in fields:
                if field != "signature_def":
                    raise invalid(f"Metadata field {field} is not supported")
            version, label = version_choice(request.model_spec)
            v, signature_defs = self.manager.metadata(request.model_spec.name, version, label)
        except Exception as e:  # noqa: BLE001
            self._abort(context, e)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = v
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(_Service, model_service_pb2_grpc.ModelServiceServicer):
    def GetModelStatus(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            version, label = version_choice(request.model_spec)
            states = self.manager.status(request.model_spec.name, version, label)
        except Exception as e:  # noqa: BLE001
            self._abort(context, e)
        return status_response(states)

    def HandleReloadConfigRequest(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "The local server serves one model from flags; "
                                                     "HandleReloadConfigRequest is not supported")


def status_response(states) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusResponse from [(version, VersionState)] (shared with the REST status endpoint)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state in states:
        entry = response.model_version_status.add()
        entry.version = version
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
        entry.status.error_code = getattr(grpc.StatusCode, state.error_code, grpc.StatusCode.UNKNOWN).value[0]
        entry.status.error_message = state.error_message
    return response


def add_services(server: grpc.Server, manager: ModelManager, limits: TensorLimits = TensorLimits(),
                 request_timeout_s: float = 30.0, request_logger: RequestLogger | None = None) -> None:
    """PredictionService (Predict sampled into `request_logger`, if any) and ModelService on `server`."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, limits, request_timeout_s, request_logger), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager, request_timeout_s), server)
