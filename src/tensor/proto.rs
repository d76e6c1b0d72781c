//! ONNX `TensorProto` (the `.pb` files of ONNX test data and golden samples) to [`Tensor`].
//!
//! Follows the ONNX spec's storage rules: `raw_data` (little-endian) when present, otherwise
//! the typed fields — `int32_data` for BOOL/INT8/INT16/UINT8/UINT16/FP16/BF16 (FP16 and BF16
//! as bit patterns), `uint64_data` for UINT32/UINT64, `int64_data`, `float_data`,
//! `double_data`, `string_data`. External data is refused: test data never uses it.

use prost::Message;
use tract_onnx::pb::TensorProto;

use super::{element_count, DType, Tensor, TensorError};

/// Decodes a serialized `TensorProto`.
pub fn decode_tensor_proto(bytes: &[u8]) -> Result<Tensor, TensorError> {
    let proto = TensorProto::decode(bytes)
        .map_err(|e| TensorError::Malformed(format!("not an ONNX TensorProto: {e}")))?;
    tensor_from_proto(&proto)
}

/// Converts a decoded `TensorProto`.
pub fn tensor_from_proto(proto: &TensorProto) -> Result<Tensor, TensorError> {
    let dtype = DType::from_onnx_type(proto.data_type)?;
    let shape = super::shape_from_i64(&proto.dims)?;
    if !proto.external_data.is_empty() {
        return Err(TensorError::Unsupported(
            "TensorProto with external data is not supported".into(),
        ));
    }
    if dtype == DType::Bytes {
        return Tensor::from_strings(shape, proto.string_data.clone());
    }
    if !proto.raw_data.is_empty() || element_count(&shape)? == 0 {
        return Tensor::from_raw(dtype, shape, proto.raw_data.clone());
    }
    let mut bytes = Vec::new();
    match dtype {
        DType::Bool | DType::U8 | DType::I8 => bytes.extend(proto.int32_data.iter().map(|&v| v as u8)),
        DType::U16 | DType::I16 | DType::F16 | DType::BF16 => {
            for &v in &proto.int32_data {
                bytes.extend_from_slice(&(v as u16).to_le_bytes());
            }
        }
        DType::I32 => proto
            .int32_data
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        DType::U32 => proto
            .uint64_data
            .iter()
            .for_each(|&v| bytes.extend_from_slice(&(v as u32).to_le_bytes())),
        DType::U64 => proto
            .uint64_data
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        DType::I64 => proto
            .int64_data
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        DType::F32 => proto
            .float_data
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        DType::F64 => proto
            .double_data
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        DType::Bytes => unreachable!("BYTES handled above"),
    }
    Tensor::from_raw(dtype, shape, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_and_raw_data_decode_alike() {
        let typed = TensorProto {
            dims: vec![2],
            data_type: DType::F16.onnx_type(),
            int32_data: vec![0x3c00, 0xc000],
            ..Default::default()
        };
        let t = tensor_from_proto(&typed).unwrap();
        assert_eq!(t.to_f64_vec().unwrap(), vec![1.0, -2.0]);
        let raw = TensorProto {
            dims: vec![2],
            data_type: DType::F16.onnx_type(),
            raw_data: t.raw_bytes().unwrap().to_vec(),
            ..Default::default()
        };
        assert_eq!(tensor_from_proto(&raw).unwrap(), t);
        let bytes = raw.encode_to_vec();
        assert_eq!(decode_tensor_proto(&bytes).unwrap(), t);
    }

    #[test]
    fn unsupported_types_and_short_data_are_errors() {
        let fp8 = TensorProto {
            dims: vec![1],
            data_type: 17,
            raw_data: vec![0],
            ..Default::default()
        };
        assert!(tensor_from_proto(&fp8)
            .unwrap_err()
            .to_string()
            .contains("float8"));
        let short = TensorProto {
            dims: vec![3],
            data_type: 1,
            float_data: vec![1.0],
            ..Default::default()
        };
        assert!(matches!(
            tensor_from_proto(&short),
            Err(TensorError::LengthMismatch { .. })
        ));
    }
}
