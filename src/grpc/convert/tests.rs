use super::*;
use crate::grpc::proto::model_infer_request::InferRequestedOutputTensor;

fn input(
    name: &str,
    datatype: &str,
    shape: &[i64],
    contents: Option<InferTensorContents>,
) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        parameters: HashMap::new(),
        contents,
    }
}

fn message(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "m".into(),
        inputs,
        raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
        ..Default::default()
    }
}

fn one_tensor(m: ModelInferRequest) -> Result<Tensor, ConvertError> {
    request(m, None).map(|r| r.inputs.into_iter().next().unwrap().1)
}

#[test]
fn typed_contents_become_tensors_of_their_datatype() {
    let ints = InferTensorContents {
        int_contents: vec![-1, 2, 3],
        ..Default::default()
    };
    let t = one_tensor(message(vec![input("x", "INT16", &[3], Some(ints))], vec![])).unwrap();
    assert_eq!(t, Tensor::from_values(vec![3], &[-1i16, 2, 3]).unwrap());
    let flags = InferTensorContents {
        bool_contents: vec![true, false],
        ..Default::default()
    };
    let t = one_tensor(message(vec![input("x", "BOOL", &[2], Some(flags))], vec![])).unwrap();
    assert_eq!(t.raw_bytes(), Some(&[1u8, 0][..]));
    let strings = InferTensorContents {
        bytes_contents: vec![b"a".to_vec(), Vec::new()],
        ..Default::default()
    };
    let t = one_tensor(message(vec![input("x", "BYTES", &[1, 2], Some(strings))], vec![])).unwrap();
    assert_eq!(t.strings(), Some(&[b"a".to_vec(), Vec::new()][..]));
}

#[test]
fn typed_contents_are_checked() {
    let wide = InferTensorContents {
        uint_contents: vec![1, 300],
        ..Default::default()
    };
    let e = one_tensor(message(vec![input("x", "UINT8", &[2], Some(wide))], vec![])).unwrap_err();
    assert!(
        e.0.contains("input 'x'") && e.0.contains("300 does not fit UINT8"),
        "{e}"
    );
    let floats = InferTensorContents {
        fp32_contents: vec![1.0],
        ..Default::default()
    };
    let e = one_tensor(message(
        vec![input("x", "FP16", &[1], Some(floats.clone()))],
        vec![],
    ))
    .unwrap_err();
    assert!(e.0.contains("FP16") && e.0.contains("raw_input_contents"), "{e}");
    let e = one_tensor(message(vec![input("x", "FP64", &[1], Some(floats))], vec![])).unwrap_err();
    assert!(
        e.0.contains("contents.fp64_contents, not contents.fp32_contents"),
        "{e}"
    );
    let e = one_tensor(message(vec![input("x", "INT32", &[2], None)], vec![])).unwrap_err();
    assert!(
        e.0.contains("contents.int_contents has 0 values but shape [2] needs 2"),
        "{e}"
    );
}

#[test]
fn raw_contents_are_little_endian_and_length_prefixed_for_bytes() {
    let raw = [1.5f32.to_le_bytes(), (-2f32).to_le_bytes()].concat();
    let t = one_tensor(message(vec![input("x", "FP32", &[2], None)], vec![raw])).unwrap();
    assert_eq!(t, Tensor::from_values(vec![2], &[1.5f32, -2.0]).unwrap());
    let half = half::f16::from_f32(0.5).to_le_bytes().to_vec();
    let t = one_tensor(message(vec![input("x", "FP16", &[1], None)], vec![half])).unwrap();
    assert_eq!(t.dtype(), DType::F16);
    let wire = [&3u32.to_le_bytes()[..], b"abc", &0u32.to_le_bytes()].concat();
    let t = one_tensor(message(vec![input("x", "BYTES", &[2], None)], vec![wire])).unwrap();
    assert_eq!(t.strings(), Some(&[b"abc".to_vec(), Vec::new()][..]));
    let e = one_tensor(message(
        vec![input("x", "FP32", &[2, 3], None)],
        vec![vec![0; 20]],
    ))
    .unwrap_err();
    assert!(e.0.contains("20 bytes") && e.0.contains("24 bytes"), "{e}");
}

#[test]
fn forms_are_not_mixed_and_buffers_match_inputs() {
    let typed = InferTensorContents {
        fp32_contents: vec![1.0],
        ..Default::default()
    };
    let inputs = vec![
        input("a", "FP32", &[1], Some(typed)),
        input("b", "FP32", &[1], None),
    ];
    let e = request(message(inputs, vec![vec![0; 4], vec![0; 4]]), None).unwrap_err();
    assert!(e.0.contains("input 'a' has typed contents"), "{e}");
    let e = request(
        message(vec![input("a", "FP32", &[1], None)], vec![vec![0; 4]; 2]),
        None,
    )
    .unwrap_err();
    assert!(e.0.contains("2 buffers for 1 inputs"), "{e}");
    let e = request(
        message(vec![input("a", "FP33", &[1], None)], vec![vec![0; 4]]),
        None,
    )
    .unwrap_err();
    assert!(e.0.contains("unknown datatype 'FP33'"), "{e}");
}

#[test]
fn version_outputs_and_timeout_are_taken() {
    let mut m = message(vec![], vec![]);
    m.model_version = "3".into();
    m.outputs = vec![InferRequestedOutputTensor {
        name: "z".into(),
        parameters: HashMap::new(),
    }];
    m.parameters.insert(
        "timeout".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::Int64Param(1_000_000)),
        },
    );
    let before = Instant::now();
    let r = request(m.clone(), None).unwrap();
    assert_eq!((r.model.as_str(), r.version), ("m", Some(3)));
    assert_eq!(r.outputs, Some(vec!["z".to_string()]));
    let deadline = r.deadline.unwrap();
    assert!(deadline >= before + Duration::from_secs(1) && deadline < before + Duration::from_secs(2));
    let sooner = before + Duration::from_millis(5);
    assert_eq!(request(m.clone(), Some(sooner)).unwrap().deadline, Some(sooner));
    m.model_version = "latest".into();
    assert!(request(m, None)
        .unwrap_err()
        .0
        .contains("'latest' is not a number"));
    assert_eq!(version(""), Ok(None));
}

#[test]
fn outputs_go_back_raw_in_order() {
    let strings = Tensor::from_strings(vec![2], vec![b"ab".to_vec(), b"c".to_vec()]).unwrap();
    let floats = Tensor::from_values(vec![1, 2], &[1f32, 2.0]).unwrap();
    let (described, raw) = output(("s".into(), strings));
    assert_eq!((described.datatype.as_str(), described.shape), ("BYTES", vec![2]));
    assert_eq!(
        raw,
        [&2u32.to_le_bytes()[..], b"ab", &1u32.to_le_bytes(), b"c"].concat()
    );
    let (described, raw) = output(("f".into(), floats));
    assert_eq!(
        (described.datatype.as_str(), described.shape),
        ("FP32", vec![1, 2])
    );
    assert_eq!(raw, [1f32.to_le_bytes(), 2f32.to_le_bytes()].concat());
}

#[test]
fn the_version_policy_of_the_configuration() {
    use proto::model_version_policy::PolicyChoice;
    let latest = version_policy(&serde_json::json!({"latest": {"num_versions": 2}}));
    assert!(matches!(latest.policy_choice, Some(PolicyChoice::Latest(l)) if l.num_versions == 2));
    let specific = version_policy(&serde_json::json!({"specific": {"versions": [1, 3]}}));
    assert!(matches!(specific.policy_choice, Some(PolicyChoice::Specific(s)) if s.versions == [1, 3]));
}
