//! Shared helpers of the integration tests: where the fixtures, the ONNX Runtime library and
//! the ONNX node tests are. A missing dependency fails the test with the way to get it —
//! never a silent skip.

#![allow(dead_code)] // each test binary uses its own subset

pub mod notify;
pub mod process;

use std::path::{Path, PathBuf};

fn required(var: &str) -> PathBuf {
    let value = std::env::var_os(var)
        .unwrap_or_else(|| panic!("{var} is not set: run the tests through ./scripts/test"));
    let path = PathBuf::from(value);
    assert!(
        path.exists(),
        "{var}={} does not exist: run ./scripts/test (it installs it)",
        path.display()
    );
    path
}

/// The string `key` of each object in the JSON array `list` (names of outputs, models, …).
pub fn strings<'a>(list: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    let items = list.as_array().unwrap_or_else(|| panic!("not an array: {list}"));
    items.iter().map(|item| item[key].as_str().unwrap()).collect()
}

/// Waits until `check` holds or panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut check: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + timeout;
    while !check() {
        assert!(std::time::Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Directory of the generated fixtures.
pub fn fixtures() -> PathBuf {
    required("ONNXDTEST_FIXTURES")
}

/// A fixture file.
pub fn fixture(name: &str) -> PathBuf {
    let path = fixtures().join(name);
    assert!(
        path.exists(),
        "fixture {} missing: run ./scripts/test",
        path.display()
    );
    path
}

/// The Python of the test venv (Pillow, NumPy, onnx), which generates references.
pub fn python() -> PathBuf {
    required("ONNXDTEST_PYTHON")
}

/// The ONNX Runtime library the tests use.
pub fn ort_library() -> PathBuf {
    required("ORT_DYLIB_PATH")
}

/// Copies the example digits model as shipped (model, sidecar, labels) into the model
/// directory `dir`.
pub fn copy_example_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for file in ["model.onnx", "model.toml", "labels.txt"] {
        std::fs::copy(models().join("digits").join(file), dir.join(file)).unwrap();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// ONNX Runtime 1.17.3 (from the npm `onnxruntime-node` package), for the C API 17 build.
pub fn ort_library_1_17() -> PathBuf {
    required("ONNXDTEST_ORT_1_17")
}

/// The ONNX backend node tests of the onnx wheel.
pub fn node_tests() -> PathBuf {
    required("ONNXDTEST_NODE_TESTS")
}

/// The example models folder.
pub fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A tiny ONNX model whose output is its input plus `value`: `y = x + value`, x FP32
/// `[N, 1]`. With `padding` bytes of unused weights it can be made any size. Built in Rust
/// (protobuf) so tests can write hundreds of versions quickly.
pub fn value_model(value: f32, padding: usize) -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb::{
        tensor_shape_proto::{dimension, Dimension},
        type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
        TypeProto, ValueInfoProto,
    };
    let tensor_type = |name: &str| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            value: Some(dimension::Value::DimParam("N".into())),
                            ..Default::default()
                        },
                        Dimension {
                            value: Some(dimension::Value::DimValue(1)),
                            ..Default::default()
                        },
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut initializer = vec![TensorProto {
        name: "c".into(),
        dims: vec![1],
        data_type: 1,
        float_data: vec![value],
        ..Default::default()
    }];
    if padding > 0 {
        initializer.push(TensorProto {
            name: "pad".into(),
            dims: vec![padding as i64],
            data_type: 2,
            raw_data: vec![7; padding],
            ..Default::default()
        });
    }
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "onnxd-tests".into(),
        graph: Some(GraphProto {
            name: "value".into(),
            node: vec![NodeProto {
                op_type: "Add".into(),
                input: vec!["x".into(), "c".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            initializer,
            input: vec![tensor_type("x")],
            output: vec![tensor_type("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// A model whose signature depends on `cols`: `y = ReduceSum(x, axis 1) + value`, x FP32
/// `[N, cols]`, y FP32 `[N]`. Versions of it with different `cols` decode the same raw body
/// into different shapes.
pub fn sum_model(cols: i64, value: f32) -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb::{tensor_shape_proto::dimension, NodeProto, TensorProto};
    let mut model = tract_onnx::pb::ModelProto::decode(&value_model(value, 0)[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let x_shape = graph.input[0].r#type.as_mut().unwrap();
    if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) = x_shape.value.as_mut() {
        t.shape.as_mut().unwrap().dim[1].value = Some(dimension::Value::DimValue(cols));
    }
    if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
        graph.output[0].r#type.as_mut().unwrap().value.as_mut()
    {
        t.shape.as_mut().unwrap().dim.truncate(1);
    }
    graph.initializer.push(TensorProto {
        name: "axes".into(),
        dims: vec![1],
        data_type: 7,
        int64_data: vec![1],
        ..Default::default()
    });
    graph.node = vec![
        NodeProto {
            op_type: "ReduceSum".into(),
            input: vec!["x".into(), "axes".into()],
            output: vec!["s".into()],
            attribute: vec![tract_onnx::pb::AttributeProto {
                name: "keepdims".into(),
                r#type: 2,
                i: 0,
                ..Default::default()
            }],
            ..Default::default()
        },
        NodeProto {
            op_type: "Add".into(),
            input: vec!["s".into(), "c".into()],
            output: vec!["y".into()],
            ..Default::default()
        },
    ];
    model.encode_to_vec()
}

/// `y = x + value + ReduceSum(MatMul(x, W))` with W FP32 `[1, weight_bytes / 4]` of varied
/// values, x FP32 `[N, 1]`: `value` at x = 0, like [`value_model`], but through weights every
/// inference reads. Unlike an unused initializer (ONNX Runtime strips it), a weight multiplied
/// by zero or a uniform one (tract folds those), they stay in memory as long as the model is
/// loaded, in ONNX Runtime and in tract.
pub fn weighted_model(value: f32, weight_bytes: usize) -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb::{NodeProto, TensorProto};
    let mut model = tract_onnx::pb::ModelProto::decode(&value_model(value, 0)[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let k = weight_bytes / 4;
    graph.initializer.extend([
        TensorProto {
            name: "w".into(),
            dims: vec![1, k as i64],
            data_type: 1,
            raw_data: (0..k)
                .flat_map(|j| ((j % 251) as f32 * 1e-3).to_le_bytes())
                .collect(),
            ..Default::default()
        },
        TensorProto {
            name: "axes".into(),
            dims: vec![1],
            data_type: 7,
            int64_data: vec![1],
            ..Default::default()
        },
    ]);
    let node = |op: &str, input: [&str; 2], output: &str| NodeProto {
        op_type: op.into(),
        input: input.map(String::from).into(),
        output: vec![output.into()],
        ..Default::default()
    };
    graph.node = vec![
        node("MatMul", ["x", "w"], "h"),
        node("ReduceSum", ["h", "axes"], "s"),
        node("Add", ["x", "c"], "t"),
        node("Add", ["t", "s"], "y"),
    ];
    model.encode_to_vec()
}

/// `y = x + value` with x FP32 `[N, K]`, both dimensions symbolic: requests of different
/// widths cannot share a batch, requests of one width can.
pub fn widths_model(value: f32) -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb::tensor_shape_proto::dimension;
    let mut model = tract_onnx::pb::ModelProto::decode(&value_model(value, 0)[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    for value in graph.input.iter_mut().chain(graph.output.iter_mut()) {
        if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
            value.r#type.as_mut().unwrap().value.as_mut()
        {
            t.shape.as_mut().unwrap().dim[1].value = Some(dimension::Value::DimParam("K".into()));
        }
    }
    model.encode_to_vec()
}

/// A model using an op no engine has.
pub fn unsupported_model() -> Vec<u8> {
    use prost::Message;
    let mut model = tract_onnx::pb::ModelProto::decode(&value_model(1.0, 0)[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    graph.node[0].op_type = "NoSuchOp".into();
    graph.node[0].domain = "com.example".into();
    model.opset_import.push(tract_onnx::pb::OperatorSetIdProto {
        domain: "com.example".into(),
        version: 1,
    });
    model.encode_to_vec()
}

/// Lints a metrics exposition with `promtool check metrics` (Debian's prometheus package,
/// installed by scripts/setup); any problem fails the test.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/setup");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let lint = promtool.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
}

/// Runs `tests/fixtures/<script>` (which needs the Python packages named in `needs`) into a
/// new temporary directory and returns it with the `cases.json` manifest the script wrote.
pub fn python_fixtures(script: &str, needs: &str) -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(script);
    let output = std::process::Command::new(python())
        .arg(&script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} failed (run ./scripts/setup for {needs}):\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest = std::fs::read(dir.path().join("cases.json")).unwrap();
    (dir, serde_json::from_slice(&manifest).unwrap())
}
