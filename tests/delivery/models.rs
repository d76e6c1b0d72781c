//! Variants of the example digits model for shadow rollouts, built in Rust from its file: a
//! side branch of `depth` dense layers (tanh) whose sum is multiplied by zero and added to
//! the logits — the outputs stay exactly the digits model's while the engine time grows with
//! `depth` — and a variant whose last layer's columns are rotated, so its top-1 class differs.

use prost::Message;
use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto, TensorProto};

/// Width of the side branch's square (rows × columns of each layer's input).
const ROWS: i64 = 16;
const WIDTH: i64 = 512;

fn tensor(name: &str, dims: &[i64], values: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values,
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn digits() -> ModelProto {
    let bytes = std::fs::read(crate::common::models().join("digits/model.onnx")).unwrap();
    ModelProto::decode(&bytes[..]).unwrap()
}

/// The digits model with a side branch of `depth` layers: same outputs, more engine time.
pub fn work(depth: usize) -> Vec<u8> {
    let mut model = digits();
    let graph = model.graph.as_mut().unwrap();
    let gemm = graph
        .node
        .iter_mut()
        .find(|n| n.output == ["logits"])
        .expect("digits has a 'logits' Gemm");
    gemm.output = vec!["logits0".into()];
    let scale = 1.0 / (WIDTH as f32).sqrt();
    let weights: Vec<f32> = (0..WIDTH * WIDTH)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * scale)
        .collect();
    graph.initializer.extend([
        tensor("side_w", &[WIDTH, WIDTH], weights),
        tensor("side_zero", &[1], vec![0.0]),
        TensorProto {
            name: "side_shape".into(),
            dims: vec![2],
            data_type: 7,
            int64_data: vec![ROWS, WIDTH],
            ..Default::default()
        },
    ]);
    let mut sum = node("ReduceSum", &["flat"], "side_in");
    sum.attribute.push(AttributeProto {
        name: "keepdims".into(),
        r#type: 2,
        i: 1,
        ..Default::default()
    });
    let mut nodes = vec![sum, node("Expand", &["side_in", "side_shape"], "side_h0")];
    for i in 0..depth {
        nodes.push(node(
            "MatMul",
            &[&format!("side_h{i}"), "side_w"],
            &format!("side_m{i}"),
        ));
        nodes.push(node(
            "Tanh",
            &[&format!("side_m{i}")],
            &format!("side_h{}", i + 1),
        ));
    }
    let mut total = node("ReduceSum", &[&format!("side_h{depth}")], "side_sum");
    total.attribute = nodes[0].attribute.clone();
    nodes.extend([
        total,
        node("Mul", &["side_sum", "side_zero"], "side_nothing"),
        node("Add", &["logits0", "side_nothing"], "logits"),
    ]);
    let softmax = graph.node.iter().position(|n| n.op_type == "Softmax").unwrap();
    for (i, extra) in nodes.into_iter().enumerate() {
        graph.node.insert(softmax + i, extra);
    }
    model.encode_to_vec()
}

/// The digits model with `w2`'s columns rotated by one: class k gets what was class k - 1's
/// score, so the top-1 class differs on every input.
pub fn rotated() -> Vec<u8> {
    let mut model = digits();
    let graph = model.graph.as_mut().unwrap();
    let w2 = graph.initializer.iter_mut().find(|t| t.name == "w2").unwrap();
    let (rows, cols) = (w2.dims[0] as usize, w2.dims[1] as usize);
    let values: Vec<f32> = if w2.float_data.is_empty() {
        w2.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else {
        w2.float_data.clone()
    };
    let mut rotated = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            rotated[r * cols + (c + 1) % cols] = values[r * cols + c];
        }
    }
    w2.raw_data.clear();
    w2.float_data = rotated;
    let b2 = graph.initializer.iter_mut().find(|t| t.name == "b2").unwrap();
    b2.raw_data.clear();
    b2.float_data = vec![0.0; cols];
    model.encode_to_vec()
}
