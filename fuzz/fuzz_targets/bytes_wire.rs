//! Triton's `BYTES` wire form: each element a 4-byte little-endian length and its bytes.
//! Input: a rank byte and one byte per dimension, then the wire bytes. What decodes must
//! encode back to the same bytes. Seeds: string tensors in wire form (`make_seeds`).

use onnxd::tensor::{DType, Tensor};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut input = onnxd_fuzz::Input::new(data);
        let rank = input.u8() % 4;
        let shape: Vec<usize> = (0..rank).map(|_| input.u8() as usize).collect();
        let wire = input.rest();
        let Ok(tensor) = Tensor::from_wire(DType::Bytes, shape.clone(), wire) else {
            return;
        };
        assert_eq!(tensor.to_wire(), wire, "BYTES wire form round trip");
        let shared = Tensor::from_wire_bytes(DType::Bytes, shape, bytes::Bytes::copy_from_slice(wire));
        assert_eq!(
            shared.as_ref().ok(),
            Some(&tensor),
            "shared and copied decodes agree"
        );
        let _ = onnxd::tensor::kserve::tensor_to_json(&tensor);
        let _ = tensor.utf8_strings();
        if let Some(rows) = tensor.shape().first().copied() {
            let _ = tensor.rows(0, rows);
            let _ = Tensor::concat(&[&tensor, &tensor]);
        }
    });
}
