//! `.npy` files (NumPy's array format) to and from [`Tensor`], through the `npyz` crate.
//!
//! Every numeric dtype of either byte order is read (and converted to little-endian);
//! `|S` byte strings and `<U` unicode strings become `BYTES`. Fortran-ordered arrays are
//! refused rather than silently transposed. `BF16` has no NumPy type and is refused on write.

use std::io::{Cursor, Read};

use npyz::{DType as NpyDType, NpyFile, Order, TypeChar, WriteOptions, WriterBuilder};

use super::{DType, Element, Tensor, TensorError};

/// Reads a tensor from the bytes of a `.npy` file.
pub fn read_npy(reader: impl Read) -> Result<Tensor, TensorError> {
    let npy = NpyFile::new(reader).map_err(|e| malformed(format!("not a .npy file: {e}")))?;
    if npy.order() == Order::Fortran && npy.shape().len() > 1 {
        return Err(malformed(
            "Fortran-ordered .npy is not supported; save np.ascontiguousarray(a)".into(),
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let NpyDType::Plain(ty) = npy.dtype() else {
        return Err(unsupported(format!(
            "structured .npy dtype {} has no KServe datatype",
            npy.dtype().descr()
        )));
    };
    let size = ty.size_field();
    macro_rules! read {
        ($t:ty) => {{
            let values: Vec<$t> = npy
                .into_vec()
                .map_err(|e| malformed(format!("reading .npy data: {e}")))?;
            Tensor::from_values(shape, &values)
        }};
    }
    match (ty.type_char(), size) {
        (TypeChar::Bool, 1) => read!(bool),
        (TypeChar::Uint, 1) => read!(u8),
        (TypeChar::Uint, 2) => read!(u16),
        (TypeChar::Uint, 4) => read!(u32),
        (TypeChar::Uint, 8) => read!(u64),
        (TypeChar::Int, 1) => read!(i8),
        (TypeChar::Int, 2) => read!(i16),
        (TypeChar::Int, 4) => read!(i32),
        (TypeChar::Int, 8) => read!(i64),
        (TypeChar::Float, 2) => read!(half::f16),
        (TypeChar::Float, 4) => read!(f32),
        (TypeChar::Float, 8) => read!(f64),
        (TypeChar::ByteStr, _) => {
            let values: Vec<Vec<u8>> = npy
                .into_vec()
                .map_err(|e| malformed(format!("reading .npy data: {e}")))?;
            // NumPy pads |S elements with NUL bytes; they are not part of the value.
            let trimmed = values
                .into_iter()
                .map(|mut v| {
                    while v.last() == Some(&0) {
                        v.pop();
                    }
                    v
                })
                .collect();
            Tensor::from_strings(shape, trimmed)
        }
        (TypeChar::UnicodeStr, _) => {
            let values: Vec<String> = npy
                .into_vec()
                .map_err(|e| malformed(format!("reading .npy data: {e}")))?;
            Tensor::from_strings(shape, values.into_iter().map(String::into_bytes).collect())
        }
        _ => Err(unsupported(format!(".npy dtype {ty} has no KServe datatype"))),
    }
}

/// Writes a tensor as a `.npy` file.
pub fn write_npy(tensor: &Tensor) -> Result<Vec<u8>, TensorError> {
    let shape: Vec<u64> = tensor.shape().iter().map(|&d| d as u64).collect();
    match tensor.dtype() {
        DType::Bool => {
            let bytes = tensor.raw_bytes().unwrap_or_default();
            write_auto(&shape, bytes.iter().map(|&b| b != 0))
        }
        DType::U8 => write_auto(&shape, typed_values::<u8>(tensor)),
        DType::U16 => write_auto(&shape, typed_values::<u16>(tensor)),
        DType::U32 => write_auto(&shape, typed_values::<u32>(tensor)),
        DType::U64 => write_auto(&shape, typed_values::<u64>(tensor)),
        DType::I8 => write_auto(&shape, typed_values::<i8>(tensor)),
        DType::I16 => write_auto(&shape, typed_values::<i16>(tensor)),
        DType::I32 => write_auto(&shape, typed_values::<i32>(tensor)),
        DType::I64 => write_auto(&shape, typed_values::<i64>(tensor)),
        DType::F16 => write_auto(&shape, typed_values::<half::f16>(tensor)),
        DType::F32 => write_auto(&shape, typed_values::<f32>(tensor)),
        DType::F64 => write_auto(&shape, typed_values::<f64>(tensor)),
        DType::BF16 => Err(unsupported("BF16 has no .npy dtype".into())),
        DType::Bytes => {
            let elements = tensor.strings().unwrap_or_default();
            let width = elements.iter().map(Vec::len).max().unwrap_or(0).max(1);
            let dtype = NpyDType::Plain(format!("|S{width}").parse().expect("valid type string"));
            write_array::<[u8], &[u8]>(&shape, dtype, elements.iter().map(Vec::as_slice))
        }
    }
}

/// Writes `values` as an array of `shape` with the element type's default NumPy dtype.
fn write_auto<T: npyz::AutoSerialize>(
    shape: &[u64],
    values: impl IntoIterator<Item = T>,
) -> Result<Vec<u8>, TensorError> {
    write_array::<T, T>(shape, T::default_dtype(), values)
}

/// Writes `values` as an array of `shape` and NumPy `dtype`.
fn write_array<T: npyz::Serialize + ?Sized, V: std::borrow::Borrow<T>>(
    shape: &[u64],
    dtype: NpyDType,
    values: impl IntoIterator<Item = V>,
) -> Result<Vec<u8>, TensorError> {
    let io = |e: std::io::Error| malformed(format!("writing .npy: {e}"));
    let mut out = Cursor::new(Vec::new());
    let options = WriteOptions::<T>::new().dtype(dtype);
    let mut writer = options.shape(shape).writer(&mut out).begin_nd().map_err(io)?;
    for value in values {
        writer.push(value.borrow()).map_err(io)?;
    }
    writer.finish().map_err(io)?;
    Ok(out.into_inner())
}

/// Decodes the little-endian buffer of a fixed-size tensor into typed values.
fn typed_values<T: Element + bytemuck::Pod>(tensor: &Tensor) -> Vec<T> {
    let bytes = tensor.raw_bytes().unwrap_or_default();
    bytes
        .chunks_exact(std::mem::size_of::<T>())
        .map(bytemuck::pod_read_unaligned::<T>)
        .collect()
}

fn malformed(message: String) -> TensorError {
    TensorError::Malformed(message)
}

fn unsupported(message: String) -> TensorError {
    TensorError::Unsupported(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_npy_dtype_round_trips() {
        let tensors = [
            Tensor::from_values(vec![2], &[true, false]).unwrap(),
            Tensor::from_values(vec![2, 1], &[1u8, 2]).unwrap(),
            Tensor::from_values(vec![2], &[1u16, 2]).unwrap(),
            Tensor::from_values(vec![2], &[1u32, 2]).unwrap(),
            Tensor::from_values(vec![2], &[1u64, u64::MAX]).unwrap(),
            Tensor::from_values(vec![2], &[-1i8, 2]).unwrap(),
            Tensor::from_values(vec![2], &[-1i16, 2]).unwrap(),
            Tensor::from_values(vec![2], &[-1i32, 2]).unwrap(),
            Tensor::from_values(vec![1, 2], &[-1i64, 2]).unwrap(),
            Tensor::from_values(vec![2], &[half::f16::ONE, half::f16::MAX]).unwrap(),
            Tensor::from_values(vec![2], &[1.5f32, -2.0]).unwrap(),
            Tensor::from_values(vec![], &[1.5f64]).unwrap(),
            Tensor::from_strings(vec![2], vec![b"ab".to_vec(), b"c".to_vec()]).unwrap(),
        ];
        for t in tensors {
            let bytes = write_npy(&t).unwrap();
            assert_eq!(read_npy(&bytes[..]).unwrap(), t, "{}", t.dtype());
        }
    }

    #[test]
    fn garbage_and_bf16_are_refused_with_a_reason() {
        let err = read_npy(&b"not numpy"[..]).unwrap_err();
        assert!(err.to_string().starts_with("not a .npy file"), "{err}");
        let bf = Tensor::from_values(vec![1], &[half::bf16::ONE]).unwrap();
        assert!(write_npy(&bf).unwrap_err().to_string().contains("BF16"));
    }
}
