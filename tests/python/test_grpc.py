"""Unmodified tritonclient[grpc] against a real `onnxd run` (SPEC §7, issue 16).

The fixture starts the daemon with a bearer token, `[http] max_body_bytes` above gRPC's usual
4 MiB and `[grpc] listen` on free 127.0.0.1 ports, a repository of the dtype fixtures and
models/digits, waits for gRPC readiness, and stops it with SIGTERM at the end. Requests with
typed `contents` (which tritonclient never sends: it always uses raw contents) are built with
tritonclient's own protobuf modules and stubs. Run by ./scripts/test:

    ONNXDTEST_BIN=... ONNXDTEST_FIXTURES=... pytest tests/python

`test_proto_matches_tritonclient` needs no daemon: it compiles proto/ with grpcio-tools and
checks every name, number and type against the definitions tritonclient was built with.
"""
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, deserialize_bf16_tensor, deserialize_bytes_tensor

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "grpc-test-token"
MAX_BODY = 8 << 20  # above tonic's and gRPC's default 4 MiB receive limit, so the test sees it raised
KSERVE = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "BF16": np.float32, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}
# The typed `contents` field of each datatype; FP16 and BF16 have none (raw only).
TYPED_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
               "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
               "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
               "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
GRPC_OPTIONS = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]


class Bearer(InferenceServerClientPlugin):
    """tritonclient's plugin hook: adds `authorization: Bearer <token>` to every call's metadata."""

    def __init__(self, token):
        self.value = f"Bearer {token}"

    def __call__(self, request):
        request.headers["authorization"] = self.value


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """The running daemon's gRPC address."""
    root = tmp_path_factory.mktemp("onnxd")
    repo = root / "models"
    fixtures = os.environ["ONNXDTEST_FIXTURES"]
    for dtype in KSERVE:
        (repo / dtype.lower() / "1").mkdir(parents=True)
        shutil.copy(os.path.join(fixtures, f"dtype_{dtype}.onnx"), repo / dtype.lower() / "1" / "model.onnx")
    digits = repo / "digits"
    (digits / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models/digits/model.onnx", digits / "1" / "model.onnx")
    for name in ("model.toml", "labels.txt"):
        shutil.copy(ROOT / "models/digits" / name, digits / name)
    (root / "token").write_text(TOKEN + "\n")
    address = f"127.0.0.1:{free_port()}"
    config = root / "onnxd.toml"
    config.write_text(f'node_id = "pygrpc"\nstate_dir = "state"\n[repository]\npath = "models"\nsettle_ms = 100\n'
                      f'[http]\nlisten = "127.0.0.1:{free_port()}"\ntoken_file = "token"\nmax_body_bytes = {MAX_BODY}\n'
                      f'[grpc]\nlisten = "{address}"\n[mqtt]\nurl = ""\n')
    log_path = root / "onnxd.log"
    log = open(log_path, "w")
    daemon = subprocess.Popen([os.environ["ONNXDTEST_BIN"], "run", "-c", str(config)], stderr=log)
    probe = grpcclient.InferenceServerClient(url=address)
    probe.register_plugin(Bearer(TOKEN))
    deadline = time.time() + 30
    while True:
        try:
            if probe.is_server_ready():
                break
        except InferenceServerException:
            pass
        assert daemon.poll() is None, log_path.read_text()
        assert time.time() < deadline, f"onnxd did not become ready on gRPC {address}:\n{log_path.read_text()}"
        time.sleep(0.1)
    probe.close()
    yield address
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0, log_path.read_text()


@pytest.fixture(scope="module")
def client(daemon):
    client = grpcclient.InferenceServerClient(url=daemon)
    client.register_plugin(Bearer(TOKEN))
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(daemon):
    """The raw generated stub, for requests tritonclient cannot build (typed contents)."""
    channel = grpc.insecure_channel(daemon, options=GRPC_OPTIONS)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def sample(dtype, offset=0):
    if dtype == "BYTES":
        # No NUL byte: ONNX Runtime string tensors are C strings, and onnxd refuses NUL for them.
        return np.array([[b"alpha", b"", b"gamma"], [b"d", b"\xc3\xa9t\xc3\xa9", bytes([1 + offset % 255])]], dtype=np.object_)
    if dtype == "BOOL":
        return np.array([[True, False, True], [False, False, offset % 2 == 0]])
    # Small integers: exact in every type, BF16 included; negatives wrap in unsigned types.
    return (np.arange(6).reshape(2, 3) * 3 - 7 + offset).astype(KSERVE[dtype])


def status_of(error):
    """`StatusCode.X` of an InferenceServerException or grpc.RpcError, as `X`."""
    code = error.status() if isinstance(error, InferenceServerException) else str(error.code())
    return str(code).removeprefix("StatusCode.")


def output_array(response, name):
    """An output of a ModelInferResponse, from raw or typed contents."""
    for index, output in enumerate(response.outputs):
        if output.name != name:
            continue
        shape = list(output.shape)
        if index < len(response.raw_output_contents):
            raw = response.raw_output_contents[index]
            if output.datatype == "BYTES":
                return deserialize_bytes_tensor(raw).reshape(shape)
            if output.datatype == "BF16":
                return deserialize_bf16_tensor(raw).reshape(shape)
            return np.frombuffer(raw, dtype=KSERVE[output.datatype]).reshape(shape)
        values = list(getattr(output.contents, TYPED_FIELD[output.datatype]))
        return np.array(values, dtype=KSERVE[output.datatype]).reshape(shape)
    return None


def assert_identity_outputs(dtype, x, y, z):
    if dtype == "BYTES":
        as_bytes = np.vectorize(lambda b: b if isinstance(b, bytes) else b.encode())
        x, y, z = as_bytes(x), as_bytes(y), as_bytes(z)
        assert (y == x).all() and (z == x.T).all(), (y, z)
    else:
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(z, x.T)


# ---- The contract itself (no daemon) -------------------------------------------------------


def descriptor_set_of_proto_dir():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "set.pb")
        args = ["protoc", f"-I{ROOT / 'proto'}", f"--descriptor_set_out={out}", "--include_imports",
                str(ROOT / "proto/grpc_service.proto"), str(ROOT / "proto/model_config.proto")]
        assert protoc.main(args) == 0, "proto/ does not compile"
        return descriptor_pb2.FileDescriptorSet.FromString(Path(out).read_bytes())


def walk_messages(messages, prefix):
    for message in messages:
        name = f"{prefix}.{message.name}"
        yield name, message
        yield from walk_messages(message.nested_type, name)


def walk_enums(file):
    for enum in file.enum_type:
        yield f".{file.package}.{enum.name}", enum
    for name, message in walk_messages(file.message_type, f".{file.package}"):
        for enum in message.enum_type:
            yield f"{name}.{enum.name}", enum


def tritonclient_files():
    files = {}
    for module in (model_config_pb2, service_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files[proto.name] = proto
    return files


def fields_of(message):
    oneofs = [o.name for o in message.oneof_decl]
    return {f.name: (f.number, f.type, f.label, f.type_name, oneofs[f.oneof_index] if f.HasField("oneof_index") else None)
            for f in message.field}


def test_proto_matches_tritonclient():
    ours = {f.name: f for f in descriptor_set_of_proto_dir().file}
    theirs = tritonclient_files()
    assert set(ours) == {"grpc_service.proto", "model_config.proto"}
    for file_name, their_file in theirs.items():
        our_file = ours[file_name]
        assert our_file.package == their_file.package == "inference"
        their_messages = dict(walk_messages(their_file.message_type, ".inference"))
        our_messages = dict(walk_messages(our_file.message_type, ".inference"))
        if file_name == "grpc_service.proto":
            # Every message of the service, complete: onnxd decodes whatever a client sends.
            assert set(our_messages) == set(their_messages), set(their_messages) ^ set(our_messages)
        for name, message in our_messages.items():
            assert name in their_messages, f"{name} is not in Triton's {file_name}"
            our_fields, their_fields = fields_of(message), fields_of(their_messages[name])
            if file_name == "grpc_service.proto":
                assert our_fields == their_fields, name
            for field, (number, ftype, label, type_name, oneof) in our_fields.items():
                assert field in their_fields, f"{name}.{field} is not Triton's"
                t_number, t_type, t_label, t_type_name, t_oneof = their_fields[field]
                assert (number, ftype, label, type_name) == (t_number, t_type, t_label, t_type_name), f"{name}.{field}"
                # A oneof member may be a plain field here (same wire format), never the reverse.
                assert oneof is None or oneof == t_oneof, f"{name}.{field}"
        their_enums = dict(walk_enums(their_file))
        for name, enum in walk_enums(our_file):
            theirs_values = {v.name: v.number for v in their_enums[name].value}
            assert {v.name: v.number for v in enum.value}.items() <= theirs_values.items(), name
        if file_name == "grpc_service.proto":
            def methods(file):
                return {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                        for m in file.service[0].method}
            assert our_file.service[0].name == their_file.service[0].name == "GRPCInferenceService"
            assert methods(our_file) == methods(their_file)


# ---- Health, metadata, configuration -------------------------------------------------------


def test_server_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "onnxd" and meta.version
    assert {"model_repository", "model_configuration", "statistics"} <= set(meta.extensions)
    model = client.get_model_metadata("fp32")
    assert (model.name, list(model.versions)) == ("fp32", ["1"])
    assert model.platform in ("onnxruntime_onnx", "tract_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("x", "FP32", [-1, 3])]
    assert [t.name for t in model.outputs] == ["y", "z"]
    assert client.get_model_metadata("bytes", as_json=True)["inputs"][0]["datatype"] == "BYTES"
    assert client.is_model_ready("fp32")
    assert client.is_model_ready("fp32", "1")
    assert not client.is_model_ready("fp32", "7")
    assert not client.is_model_ready("nope")


def test_health_needs_no_token(daemon):
    anonymous = grpcclient.InferenceServerClient(url=daemon)
    assert anonymous.is_server_live() and anonymous.is_server_ready()
    anonymous.close()


def test_model_config(client):
    config = client.get_model_config("fp32").config
    assert config.name == "fp32" and config.backend
    assert config.platform == client.get_model_metadata("fp32").platform
    # Output z is [3, N]: dim 0 is not symbolic everywhere, so the model is not batchable.
    assert config.max_batch_size == 0
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("x", model_config_pb2.TYPE_FP32, [-1, 3])]
    assert [(o.name, o.data_type) for o in config.output] == [("y", model_config_pb2.TYPE_FP32), ("z", model_config_pb2.TYPE_FP32)]
    assert config.instance_group and config.instance_group[0].count >= 1
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert client.get_model_config("bytes").config.input[0].data_type == model_config_pb2.TYPE_STRING
    assert client.get_model_config("bf16").config.input[0].data_type == model_config_pb2.TYPE_BF16
    digits = client.get_model_config("digits", as_json=True)["config"]
    assert digits["max_batch_size"] > 0
    image = digits["input"][0]  # int64 dims are strings in protobuf's JSON
    assert (image["name"], image["data_type"], image["dims"]) == ("image", "TYPE_FP32", ["1", "8", "8"])


# ---- Inference -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(KSERVE))
def test_infer_raw_every_dtype(client, dtype):
    x = sample(dtype)
    inp = grpcclient.InferInput("x", list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    outputs = [grpcclient.InferRequestedOutput("y"), grpcclient.InferRequestedOutput("z")]
    result = client.infer(dtype.lower(), [inp], outputs=outputs, request_id=f"raw-{dtype}")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (dtype.lower(), "1", f"raw-{dtype}")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("y", dtype, [2, 3]), ("z", dtype, [3, 2])]
    assert_identity_outputs(dtype, x, result.as_numpy("y"), result.as_numpy("z"))


def typed_request(model, dtype, x, request_id):
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    tensor = request.inputs.add(name="x", datatype=dtype, shape=list(x.shape))
    field = TYPED_FIELD.get(dtype, "fp32_contents")
    values = [bytes(v) for v in x.flatten()] if dtype == "BYTES" else x.flatten().tolist()
    getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize("dtype", [d for d in KSERVE if d in TYPED_FIELD])
def test_infer_typed_contents_every_dtype(stub, dtype):
    x = sample(dtype)
    response = stub.ModelInfer(typed_request(dtype.lower(), dtype, x, f"typed-{dtype}"), metadata=AUTH)
    assert response.id == f"typed-{dtype}"
    assert_identity_outputs(dtype, x, output_array(response, "y"), output_array(response, "z"))


@pytest.mark.parametrize("dtype", ["FP16", "BF16"])
def test_half_floats_are_raw_only(stub, dtype):
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(typed_request(dtype.lower(), dtype, sample("FP32"), "typed-half"), metadata=AUTH)
    assert status_of(error.value) == "INVALID_ARGUMENT", error.value
    assert dtype in error.value.details() and "raw" in error.value.details(), error.value.details()


def test_requested_output_subset(client):
    x = sample("INT64")
    inp = grpcclient.InferInput("x", [2, 3], "INT64")
    inp.set_data_from_numpy(x)
    result = client.infer("int64", [inp], outputs=[grpcclient.InferRequestedOutput("z")])
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["z"] and len(response.raw_output_contents) == 1
    assert result.as_numpy("y") is None
    np.testing.assert_array_equal(result.as_numpy("z"), x.T)


def digits_input():
    request = json.loads((ROOT / "models/digits/sample-request.json").read_text())["inputs"][0]
    return np.array(request["data"], dtype=np.float32).reshape(request["shape"])


def test_digits_and_statistics(client):
    def successes():
        stats = client.get_inference_statistics("digits").model_stats
        assert [(s.name, s.version) for s in stats] == [("digits", "1")]
        return stats[0].inference_stats.success.count

    before = successes()
    inp = grpcclient.InferInput("image", [1, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(digits_input())
    probabilities = client.infer("digits", [inp]).as_numpy("probabilities")
    assert probabilities.shape == (1, 10) and probabilities.argmax() == 2, probabilities
    assert successes() == before + 1
    stats = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    assert int(stats["last_inference"]) > 0 and int(stats["inference_stats"]["compute_infer"]["count"]) >= 1
    every = {s.name for s in client.get_inference_statistics().model_stats}
    assert every >= {d.lower() for d in KSERVE} | {"digits"}, every


# ---- Repository ----------------------------------------------------------------------------


def test_repository_index_load_unload(client):
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert set(index) >= {d.lower() for d in KSERVE} | {"digits"}
    assert index["fp32"].state == "READY"
    client.unload_model("uint8")
    assert not client.is_model_ready("uint8")
    # Triton lists an unloaded model as UNAVAILABLE; onnxd may also drop it from the index.
    assert {m.name: m.state for m in client.get_model_repository_index().models}.get("uint8") != "READY"
    client.load_model("uint8")
    assert client.is_model_ready("uint8")
    with pytest.raises(InferenceServerException, match="failed to load 'nope'"):
        client.load_model("nope")


# ---- Streaming -----------------------------------------------------------------------------


def test_stream_100_in_flight_one_bad(daemon):
    client = grpcclient.InferenceServerClient(url=daemon)
    client.register_plugin(Bearer(TOKEN))
    replies = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    bad = 57
    for i in range(100):
        x = sample("FP32", offset=i)
        if i == bad:
            x = np.zeros((1, 4), np.float32)
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.async_stream_infer("fp32", [inp], request_id=str(i))
    results, errors = {}, []
    for _ in range(100):
        result, error = replies.get(timeout=30)
        if error is not None:
            errors.append(error)
        else:
            results[result.get_response().id] = result
    assert len(errors) == 1, [str(e) for e in errors]
    assert "input 'x' has shape [1, 4] but the model expects [N, 3]" in errors[0].message(), errors[0]
    assert set(results) == {str(i) for i in range(100)} - {str(bad)}
    for request_id, result in results.items():
        x = sample("FP32", offset=int(request_id))
        assert_identity_outputs("FP32", x, result.as_numpy("y"), result.as_numpy("z"))
    # The stream outlived the error.
    inp = grpcclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(sample("FP32", offset=1000))
    client.async_stream_infer("fp32", [inp], request_id="after")
    result, error = replies.get(timeout=30)
    assert error is None, error
    assert result.get_response().id == "after"
    client.stop_stream()
    client.close()


# ---- Errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "nope"])
def test_wrong_token_is_unauthenticated(daemon, token):
    client = grpcclient.InferenceServerClient(url=daemon)
    if token:
        client.register_plugin(Bearer(token))
    inp = grpcclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(sample("FP32"))
    for call in (lambda: client.get_model_metadata("fp32"), lambda: client.infer("fp32", [inp]),
                 lambda: client.get_model_repository_index()):
        with pytest.raises(InferenceServerException) as error:
            call()
        assert status_of(error.value) == "UNAUTHENTICATED", error.value
        assert "bearer token" in error.value.message(), error.value
    replies = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    try:
        client.async_stream_infer("fp32", [inp], request_id="s")
    except InferenceServerException as error:
        assert "no longer in valid state" in error.message()  # refused before the request went out
    result, error = replies.get(timeout=30)
    assert result is None and status_of(error) == "UNAUTHENTICATED", (result, error)
    client.stop_stream()
    client.close()


def test_unknown_model_is_not_found(client):
    inp = grpcclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(sample("FP32"))
    for call in (lambda: client.infer("nope", [inp]), lambda: client.get_model_metadata("nope"),
                 lambda: client.get_model_config("nope"), lambda: client.infer("fp32", [inp], model_version="7")):
        with pytest.raises(InferenceServerException) as error:
            call()
        assert status_of(error.value) == "NOT_FOUND", error.value
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [inp])


def test_bad_requests_are_invalid_argument(client, stub):
    inp = grpcclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException, match=r"input 'x' has shape \[1, 4\] but the model expects \[N, 3\]") as error:
        client.infer("fp32", [inp])
    assert status_of(error.value) == "INVALID_ARGUMENT"
    # Raw contents that do not fit the shape.
    request = service_pb2.ModelInferRequest(model_name="fp32")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    request.raw_input_contents.append(b"\0" * 20)
    with pytest.raises(grpc.RpcError) as rpc_error:
        stub.ModelInfer(request, metadata=AUTH)
    assert status_of(rpc_error.value) == "INVALID_ARGUMENT", rpc_error.value
    assert "24" in rpc_error.value.details() and "20" in rpc_error.value.details(), rpc_error.value.details()
    # The same output asked for twice (Triton: INVALID_ARGUMENT; it was an engine error).
    inp = grpcclient.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
    twice = [grpcclient.InferRequestedOutput("y"), grpcclient.InferRequestedOutput("y")]
    with pytest.raises(InferenceServerException, match="output 'y' is requested twice") as error:
        client.infer("fp32", [inp], outputs=twice)
    assert status_of(error.value) == "INVALID_ARGUMENT"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_are_accepted(client, algorithm):
    x = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("fp32", [inp], compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("y"), x)


def test_message_size_limit_is_max_body_bytes(client):
    # 6 MiB passes (the 4 MiB gRPC default was raised to max_body_bytes = 8 MiB) ...
    rows = (6 << 20) // 12
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("fp32", [inp], outputs=[grpcclient.InferRequestedOutput("y")])
    np.testing.assert_array_equal(result.as_numpy("y"), x)
    # The limit is on what clients send: a reply past it (both outputs, ~12 MiB) is answered, as
    # by Triton (send limit INT32_MAX) and by onnxd's HTTP.
    result = client.infer("fp32", [inp])
    np.testing.assert_array_equal(result.as_numpy("y"), x)
    assert result.as_numpy("y").nbytes + result.as_numpy("z").nbytes > MAX_BODY
    # ... 10 MiB is refused like gRPC does (Triton: RESOURCE_EXHAUSTED), and the server lives on.
    rows = (10 << 20) // 12
    inp = grpcclient.InferInput("x", [rows, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((rows, 3), np.float32))
    with pytest.raises(InferenceServerException) as error:
        client.infer("fp32", [inp])
    assert status_of(error.value) == "RESOURCE_EXHAUSTED", error.value
    assert str(MAX_BODY) in error.value.message(), error.value
    assert client.is_server_live()


@pytest.mark.parametrize("call", ["get_system_shared_memory_status", "get_cuda_shared_memory_status",
                                  "get_trace_settings", "get_log_settings"])
def test_unsupported_rpcs_are_unimplemented(client, call):
    with pytest.raises(InferenceServerException) as error:
        getattr(client, call)()
    assert status_of(error.value) == "UNIMPLEMENTED", error.value
    assert error.value.message(), "UNIMPLEMENTED without a message"
