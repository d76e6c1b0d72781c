//! A tiny SSD-style detector for camera tests: whatever the image, it reports the same
//! [`BOXES`] (TensorFlow Object Detection API outputs: normalised `y1, x1, y2, x2` boxes,
//! scores, float class ids, num_detections), with its sidecar (`[input]` 32×32, `[output]
//! kind = "ssd"`) and labels. Each output is a constant plus 0 × the mean of the image, so it
//! really runs on every frame. Built in Rust (protobuf), like `common::value_model`.

#![allow(dead_code)]

use std::path::Path;

use prost::Message;
use tract_onnx::pb::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The detections: label, score, normalised `[y1, x1, y2, x2]`.
pub const BOXES: [(&str, f32, [f32; 4]); 2] = [
    ("person", 0.9, [0.2, 0.1, 0.6, 0.45]),
    ("car", 0.8, [0.5, 0.55, 0.9, 0.95]),
];
/// The labels file: class 0 is `person`, 1 is `car`.
pub const LABELS: &str = "person\ncar\n";

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(dimension::Value::DimValue(*d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn constant(name: &str, dims: &[i64], values: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values,
        ..Default::default()
    }
}

/// The ONNX model.
pub fn model() -> Vec<u8> {
    let n = BOXES.len() as i64;
    let outputs: [(&str, Vec<i64>, Vec<f32>); 4] = [
        (
            "detection_boxes",
            vec![1, n, 4],
            BOXES.iter().flat_map(|b| b.2).collect(),
        ),
        (
            "detection_scores",
            vec![1, n],
            BOXES.iter().map(|b| b.1).collect(),
        ),
        ("detection_classes", vec![1, n], vec![0.0, 1.0]),
        ("num_detections", vec![1], vec![n as f32]),
    ];
    let keepdims = AttributeProto {
        name: "keepdims".into(),
        r#type: 2,
        i: 0,
        ..Default::default()
    };
    let mut nodes = vec![
        node("ReduceMean", &["image"], "mean", vec![keepdims]),
        node("Mul", &["mean", "zero"], "nothing", vec![]),
    ];
    let mut initializer = vec![constant("zero", &[], vec![0.0])];
    for (name, dims, values) in &outputs {
        let c = format!("{name}_const");
        initializer.push(constant(&c, dims, values.clone()));
        nodes.push(node("Add", &[&c, "nothing"], name, vec![]));
    }
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "onnxd-tests".into(),
        graph: Some(GraphProto {
            name: "detector".into(),
            node: nodes,
            initializer,
            input: vec![value_info("image", &[1, 3, 32, 32])],
            output: outputs
                .iter()
                .map(|(name, dims, _)| value_info(name, dims))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Writes the detector as model `name` (version 1, sidecar, labels) into the repository `repo`.
pub fn install(repo: &Path, name: &str) {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(dir.join("1/model.onnx"), model()).unwrap();
    std::fs::write(
        dir.join("model.toml"),
        "[input]\nwidth = 32\nheight = 32\n[output]\nkind = \"ssd\"\nlabels = \"labels.txt\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("labels.txt"), LABELS).unwrap();
}

/// A flat grey `width` × `height` JPEG written to `path`: the camera's frame.
pub fn grey_frame(path: &Path, width: u32, height: u32) -> image::RgbImage {
    let frame = image::RgbImage::from_pixel(width, height, image::Rgb([128, 128, 128]));
    frame.save(path).unwrap();
    image::open(path).unwrap().to_rgb8()
}
