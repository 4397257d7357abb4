"""The agent's gRPC server as KServe/Triton clients see it: tritonclient, unchanged.

Run by agent/tests/protocol_tritonclient.rs, which starts `policyserve-agent serve` and sets
POLICYSERVE_GRPC (host:port), POLICYSERVE_MODEL (the served file, model name "policy") and
POLICYSERVE_DESCRIPTORS (the server's compiled protocol, a FileDescriptorSet).
"""

import os
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

URL = os.environ["POLICYSERVE_GRPC"]
MODEL_FILE = os.environ["POLICYSERVE_MODEL"]
MODEL = "policy"


@pytest.fixture(scope="module")
def client():
    return triton.InferenceServerClient(url=URL)


@pytest.fixture(scope="module")
def reference():
    session = ort.InferenceSession(MODEL_FILE, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"obs": x})[0]


def observations(rows, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)


def triton_descriptors():
    """tritonclient's compiled protocol, by message full name."""
    out = {}

    def walk(message, prefix):
        name = f"{prefix}.{message.name}"
        out[name] = message
        for nested in message.nested_types:
            walk(nested, name)

    for message in service_pb2.DESCRIPTOR.message_types_by_name.values():
        walk(message, "inference")
    return out


def test_every_message_field_number_and_type_matches_tritonclient():
    ours = descriptor_pb2.FileDescriptorSet()
    with open(os.environ["POLICYSERVE_DESCRIPTORS"], "rb") as f:
        ours.ParseFromString(f.read())
    (proto,) = [f for f in ours.file if f.package == "inference"]
    theirs = triton_descriptors()
    checked = 0

    def compare(message, prefix):
        nonlocal checked
        name = f"{prefix}.{message.name}"
        assert name in theirs, f"tritonclient has no message {name}"
        reference = theirs[name]
        for field in message.field:
            assert field.name in reference.fields_by_name, f"{name}.{field.name} missing in tritonclient"
            other = reference.fields_by_name[field.name]
            assert field.number == other.number, f"{name}.{field.name} number"
            assert field.type == other.type, f"{name}.{field.name} type"
            repeated = field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            assert repeated == other.is_repeated, f"{name}.{field.name} repeated"
            if field.type_name:
                assert field.type_name.lstrip(".") == other.message_type.full_name if other.message_type else other.enum_type.full_name
            if field.HasField("oneof_index"):
                assert other.containing_oneof is not None and other.containing_oneof.name == message.oneof_decl[field.oneof_index].name
            checked += 1
        for nested in message.nested_type:
            if not nested.options.map_entry:
                compare(nested, name)

    for message in proto.message_type:
        compare(message, "inference")
    assert checked > 40

    (service,) = proto.service
    reference = service_pb2.DESCRIPTOR.services_by_name[service.name]
    for method in service.method:
        other = reference.methods_by_name[method.name]
        assert method.input_type.lstrip(".") == other.input_type.full_name
        assert method.output_type.lstrip(".") == other.output_type.full_name


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("no-such-model")
    metadata = client.get_model_metadata(MODEL, as_json=True)
    assert metadata["inputs"] == [{"name": "obs", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert metadata["outputs"][0]["name"] == "action"
    assert client.get_server_metadata(as_json=True)["name"] == "policyserve"


def test_raw_infer_equals_onnxruntime(client, reference):
    x = observations(5)
    inputs = [triton.InferInput("obs", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    result = client.infer(MODEL, inputs, outputs=[triton.InferRequestedOutput("action")])
    np.testing.assert_allclose(result.as_numpy("action"), reference(x), rtol=1e-5, atol=1e-5)


def test_typed_contents_infer_equals_onnxruntime(reference):
    x = observations(3, seed=1)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(URL))
    tensor = service_pb2.ModelInferRequest().InferInputTensor(name="obs", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.flatten().tolist())
    response = stub.ModelInfer(service_pb2.ModelInferRequest(model_name=MODEL, id="typed", inputs=[tensor]))
    assert response.id == "typed"
    out = np.array(response.outputs[0].contents.fp32_contents, dtype=np.float32).reshape(response.outputs[0].shape)
    np.testing.assert_allclose(out, reference(x), rtol=1e-5, atol=1e-5)


def test_fp64_observations_are_accepted_and_converted(client, reference):
    x = observations(2, seed=2)
    inputs = [triton.InferInput("obs", list(x.shape), "FP64")]
    inputs[0].set_data_from_numpy(x.astype(np.float64))
    result = client.infer(MODEL, inputs)
    np.testing.assert_allclose(result.as_numpy("action"), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape, datatype, model, code",
    [
        ([1, 63], "FP32", MODEL, "StatusCode.INVALID_ARGUMENT"),
        ([1, 64], "BYTES", MODEL, "StatusCode.INVALID_ARGUMENT"),
        ([1, 64], "FP32", "no-such-model", "StatusCode.NOT_FOUND"),
    ],
)
def test_malformed_requests_fail_cleanly_and_serving_continues(client, reference, shape, datatype, model, code):
    data = np.zeros(shape, dtype=np.object_ if datatype == "BYTES" else np.float32)
    if datatype == "BYTES":
        data[:] = b"x"
    inputs = [triton.InferInput("obs", shape, datatype)]
    inputs[0].set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as failure:
        client.infer(model, inputs)
    assert failure.value.status() == code
    assert failure.value.message()
    test_raw_infer_equals_onnxruntime(client, reference)


def test_many_concurrent_clients_get_correct_answers(reference):
    def work(seed):
        client = triton.InferenceServerClient(url=URL)
        for i in range(25):
            x = observations(1, seed=seed * 100 + i)
            inputs = [triton.InferInput("obs", [1, 64], "FP32")]
            inputs[0].set_data_from_numpy(x)
            got = client.infer(MODEL, inputs).as_numpy("action")
            np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-5)
        return 25

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert sum(pool.map(work, range(16))) == 400
