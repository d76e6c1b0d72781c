//! The raw form (`Inference-Header-Content-Length: 0`): the single input's bytes, shaped by
//! the model's signature. Input: the input's datatype and dimensions (see
//! [`onnxd_fuzz::spec`]), then the body. Seeds: bodies that fit their signature
//! (`make_seeds`).

use onnxd::model::ModelInfo;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut input = onnxd_fuzz::Input::new(data);
        let info = ModelInfo {
            inputs: vec![onnxd_fuzz::spec(&mut input, "x")],
            ..ModelInfo::default()
        };
        let body = bytes::Bytes::copy_from_slice(input.rest());
        if let Ok(payload) = onnxd::codec::Payload::parse(body, Some(0)) {
            onnxd_fuzz::exercise_payload(&payload, &info);
        }
    });
}
