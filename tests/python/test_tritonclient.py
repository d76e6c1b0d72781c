"""Unmodified tritonclient[http] against a real `onnxd run` (SPEC §7).

The fixture starts the daemon on a free 127.0.0.1 port with a repository of generated
fixtures, waits for readiness, and stops it with SIGTERM at the end. Run by ./scripts/test:

    ONNXDTEST_BIN=... ONNXDTEST_FIXTURES=... pytest tests/python
"""
import os
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT8": np.int8, "INT64": np.int64,
          "UINT8": np.uint8, "BOOL": np.bool_, "BYTES": np.object_}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnxd")
    repo = root / "models"
    fixtures = os.environ["ONNXDTEST_FIXTURES"]
    for dtype in DTYPES:
        (repo / dtype.lower() / "1").mkdir(parents=True)
        shutil.copy(os.path.join(fixtures, f"dtype_{dtype}.onnx"), repo / dtype.lower() / "1" / "model.onnx")
    # The example digits model with a batching sidecar: its configuration must say so.
    (repo / "batched" / "1").mkdir(parents=True)
    shutil.copy(os.path.join(os.path.dirname(__file__), "../../models/digits/model.onnx"),
                repo / "batched" / "1" / "model.onnx")
    (repo / "batched" / "model.toml").write_text(
        "max_batch_size = 16\ninstances = 2\n[batching]\nmax_queue_delay_us = 500\npreferred = [4, 8]\n"
        "max_queue_size = 100\ndefault_timeout_us = 250000\n")
    port = free_port()
    config = root / "onnxd.toml"
    config.write_text(f'node_id = "py"\nstate_dir = "state"\n[repository]\npath = "models"\nsettle_ms = 100\n'
                      f'[http]\nlisten = "127.0.0.1:{port}"\n[grpc]\nlisten = ""\n[mqtt]\nurl = ""\n')
    log = open(root / "onnxd.log", "w")
    daemon = subprocess.Popen([os.environ["ONNXDTEST_BIN"], "run", "-c", str(config)], stderr=log)
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    deadline = time.time() + 30
    while True:
        try:
            if client.is_server_ready():
                break
        except Exception:
            pass
        assert daemon.poll() is None, open(root / "onnxd.log").read()
        assert time.time() < deadline, "onnxd did not become ready"
        time.sleep(0.1)
    yield client
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0


def sample(dtype):
    if dtype == "BYTES":
        return np.array([[b"alpha", b"", b"gamma"], [b"d", b"\xc3\xa9t\xc3\xa9", b"f"]], dtype=np.object_)
    if dtype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    return (np.arange(6).reshape(2, 3) * 3 - 7).astype(DTYPES[dtype])


def test_server_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "onnxd"
    assert "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("fp32")
    assert model["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 3]}
    assert client.is_model_ready("fp32")
    assert not client.is_model_ready("fp32", "7")
    config = client.get_model_config("fp32")
    # Output z is [3, N]: dim 0 is not symbolic everywhere, so the model is not batchable.
    assert config["max_batch_size"] == 0
    assert config["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3]}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("binary", [True, False])
def test_infer_every_dtype(client, dtype, binary):
    x = sample(dtype)
    if dtype == "FP16" and not binary:
        x = x.astype(np.float16)
    inp = httpclient.InferInput("x", list(x.shape), dtype)
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("y", binary_data=binary), httpclient.InferRequestedOutput("z", binary_data=binary)]
    result = client.infer(dtype.lower(), [inp], outputs=outputs, request_id="r-1")
    y, z = result.as_numpy("y"), result.as_numpy("z")
    if dtype == "BYTES":
        expected = np.vectorize(lambda b: b if isinstance(b, bytes) else b.encode())(x)
        y = np.vectorize(lambda b: b if isinstance(b, bytes) else b.encode())(y)
        z = np.vectorize(lambda b: b if isinstance(b, bytes) else b.encode())(z)
        assert (y == expected).all() and (z == expected.T).all()
    else:
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(z, x.T)
    assert result.get_response()["id"] == "r-1"


def test_requested_output_subset(client):
    x = sample("INT64")
    inp = httpclient.InferInput("x", [2, 3], "INT64")
    inp.set_data_from_numpy(x)
    result = client.infer("int64", [inp], outputs=[httpclient.InferRequestedOutput("z")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["z"]
    assert result.as_numpy("y") is None
    np.testing.assert_array_equal(result.as_numpy("z"), x.T)


def test_repository_index_load_unload(client):
    names = {m["name"]: m for m in client.get_model_repository_index()}
    assert names["fp32"]["state"] == "READY"
    client.unload_model("uint8")
    assert not client.is_model_ready("uint8")
    client.load_model("uint8")
    assert client.is_model_ready("uint8")


def test_errors_carry_the_server_message(client):
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException, match=r"input 'x' has shape \[1, 4\] but the model expects \[N, 3\]"):
        client.infer("fp32", [inp])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [inp])
    with pytest.raises(InferenceServerException, match="failed to load 'nope'"):
        client.load_model("nope")


def test_model_config_shows_the_sidecar(client):
    config = client.get_model_config("batched")
    assert config["max_batch_size"] == 16
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [4, 8]
    assert batching["max_queue_delay_microseconds"] == 500
    assert batching["default_queue_policy"] == {"max_queue_size": 100, "default_timeout_microseconds": 250000}
    assert config["input"][0]["dims"] == [1, 8, 8]  # without the batch dimension
    # A model that cannot batch (its output's first dimension is fixed) reports 0.
    assert client.get_model_config("fp32")["max_batch_size"] == 0
