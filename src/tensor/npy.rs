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
    let mut out = Cursor::new(Vec::new());
    let io = |e: std::io::Error| malformed(format!("writing .npy: {e}"));
    macro_rules! write {
        ($t:ty) => {{
            let values = typed_values::<$t>(tensor);
            let mut w = WriteOptions::<$t>::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut out)
                .begin_nd()
                .map_err(io)?;
            w.extend(values).map_err(io)?;
            w.finish().map_err(io)?;
        }};
    }
    match tensor.dtype() {
        DType::Bool => {
            let values: Vec<bool> = tensor
                .raw_bytes()
                .unwrap_or_default()
                .iter()
                .map(|&b| b != 0)
                .collect();
            let mut w = WriteOptions::<bool>::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut out)
                .begin_nd()
                .map_err(io)?;
            w.extend(values).map_err(io)?;
            w.finish().map_err(io)?;
        }
        DType::U8 => write!(u8),
        DType::U16 => write!(u16),
        DType::U32 => write!(u32),
        DType::U64 => write!(u64),
        DType::I8 => write!(i8),
        DType::I16 => write!(i16),
        DType::I32 => write!(i32),
        DType::I64 => write!(i64),
        DType::F16 => write!(half::f16),
        DType::F32 => write!(f32),
        DType::F64 => write!(f64),
        DType::BF16 => return Err(unsupported("BF16 has no .npy dtype".into())),
        DType::Bytes => {
            let elements = tensor.strings().unwrap_or_default();
            let width = elements.iter().map(Vec::len).max().unwrap_or(0).max(1);
            let dtype = NpyDType::Plain(format!("|S{width}").parse().expect("valid type string"));
            let mut w = WriteOptions::<[u8]>::new()
                .dtype(dtype)
                .shape(&shape)
                .writer(&mut out)
                .begin_nd()
                .map_err(io)?;
            for e in elements {
                w.push(e).map_err(io)?;
            }
            w.finish().map_err(io)?;
        }
    }
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
