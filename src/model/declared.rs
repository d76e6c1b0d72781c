//! What a model file declares about its own size, checked before any engine allocates it.
//! A hostile or corrupt file can claim a tensor of terabytes in a few bytes, point its
//! external data at `/etc/passwd`, or build a terabyte constant from a tiny shape; the engines
//! would try to honour it. [`check`] walks every graph (subgraphs included) and refuses:
//!
//! - a tensor whose declared size does not match the data it holds (inline, or the external
//!   range it names);
//! - external data that is not a relative path inside the model's folder (absolute paths,
//!   `..`, links leading out), missing, or shorter than its offset and length say.
//!
//! What passes is summed up as a [`Footprint`]: the bytes of every tensor the file carries
//! (external data included), and the largest value whose size is known before running it —
//! a fixed-shape input or output, or the output of `ConstantOfShape`, `Expand`, `Tile`,
//! `Range` or `Resize` fed by constants. The repository's memory admission uses it.

use std::collections::HashMap;
use std::path::{Component, Path};

use tract_onnx::pb::{type_proto, AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto};

/// `TensorProto.data_location` of data kept in another file.
const EXTERNAL: i32 = 1;
/// Constants kept for the size analysis have at most this many elements (shapes, scalars).
const SMALL: usize = 64;

/// The sizes a model declares (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of every tensor the model carries (initializers, constants, external data).
    pub weights: u64,
    /// The largest value whose size is known statically, described, and its bytes.
    pub largest: Option<(String, u64)>,
}

impl Footprint {
    /// Bytes a load needs at least: the weights (or the file, whichever is larger) and the
    /// largest known value.
    pub fn total(&self, file_size: u64) -> u64 {
        let largest = self.largest.as_ref().map_or(0, |(_, bytes)| *bytes);
        self.weights.max(file_size).saturating_add(largest)
    }

    /// `"weights: W bytes; largest value: ... (B bytes)"`.
    pub fn describe(&self) -> String {
        match &self.largest {
            Some((what, bytes)) => format!(
                "weights {} bytes; largest value {what}: {bytes} bytes",
                self.weights
            ),
            None => format!("weights {} bytes", self.weights),
        }
    }

    fn value(&mut self, what: impl FnOnce() -> String, bytes: u64) {
        if self.largest.as_ref().is_none_or(|(_, b)| bytes > *b) {
            self.largest = Some((what(), bytes));
        }
    }
}

/// Checks the declared sizes and external data of `graph` (the model's, in the folder `dir`)
/// and returns its footprint; the error says which tensor is wrong and how.
pub fn check(graph: &GraphProto, dir: &Path) -> Result<Footprint, String> {
    let mut walk = Walk {
        dir,
        footprint: Footprint::default(),
        constants: HashMap::new(),
        types: HashMap::new(),
    };
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let values = graph.input.iter().chain(&graph.output);
    for value in values.filter(|v| !initializers.contains(v.name.as_str())) {
        if let Some((elem_type, dims)) = tensor_type(value) {
            let count = dims.iter().map(|&d| d.max(0) as f64).product::<f64>();
            let bytes = to_bytes(count, elem_bits(elem_type).unwrap_or(8));
            let what = || format!("'{}' (a graph input or output) of shape {dims:?}", value.name);
            walk.footprint.value(what, bytes);
        }
    }
    walk.graph(graph)?;
    Ok(walk.footprint)
}

struct Walk<'a> {
    dir: &'a Path,
    footprint: Footprint,
    /// Small constant tensors by name, as numbers (shapes, repeats, range bounds).
    constants: HashMap<String, (Vec<i64>, Vec<f64>)>,
    /// Element types by value name, where known.
    types: HashMap<String, i32>,
}

impl Walk<'_> {
    fn graph(&mut self, graph: &GraphProto) -> Result<(), String> {
        for value in graph.input.iter().chain(&graph.value_info).chain(&graph.output) {
            if let Some((elem_type, _)) = tensor_type(value) {
                self.types.insert(value.name.clone(), elem_type);
            }
        }
        for tensor in &graph.initializer {
            self.tensor(tensor, &tensor.name)?;
        }
        for node in &graph.node {
            for attribute in &node.attribute {
                self.attribute(node, attribute)?;
            }
            self.allocation(node);
        }
        Ok(())
    }

    fn attribute(&mut self, node: &NodeProto, attribute: &AttributeProto) -> Result<(), String> {
        let name = |suffix: &str| format!("{}.{}{suffix}", node_name(node), attribute.name);
        if let Some(tensor) = &attribute.t {
            self.tensor(tensor, &name(""))?;
            if node.op_type == "Constant" {
                if let Some(output) = node.output.first() {
                    self.types.insert(output.clone(), tensor.data_type);
                    if let Some(values) = small_values(tensor) {
                        self.constants.insert(output.clone(), values);
                    }
                }
            }
        }
        for (i, tensor) in attribute.tensors.iter().enumerate() {
            self.tensor(tensor, &name(&format!("[{i}]")))?;
        }
        if node.op_type == "Constant" && attribute.name == "value_ints" {
            if let Some(output) = node.output.first() {
                let floats = attribute.ints.iter().map(|&i| i as f64).collect();
                self.constants
                    .insert(output.clone(), (attribute.ints.clone(), floats));
            }
        }
        for graph in attribute.g.iter().chain(&attribute.graphs) {
            self.graph(graph)?;
        }
        Ok(())
    }

    /// Checks one tensor's declared size against what it holds and counts its bytes.
    fn tensor(&mut self, tensor: &TensorProto, name: &str) -> Result<(), String> {
        let name = if tensor.name.is_empty() {
            name
        } else {
            &tensor.name
        };
        let wrong = |what: String| format!("tensor '{name}': {what}");
        let count = tensor.dims.iter().try_fold(1u64, |acc, &d| {
            u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        });
        let Some(count) = count else {
            return Err(wrong(format!(
                "declared shape {:?} is negative or overflows",
                tensor.dims
            )));
        };
        let held = if tensor.data_location == Some(EXTERNAL) {
            Held::Bytes(external(tensor, self.dir).map_err(wrong)?)
        } else {
            held_inline(tensor)
        };
        let bits = elem_bits(tensor.data_type);
        let declared = bits.map(|bits| count.saturating_mul(bits).div_ceil(8));
        let bytes = match (held, declared) {
            (Held::Bytes(held), Some(declared)) if held != declared => {
                return Err(wrong(format!(
                    "declares shape {:?} of {} = {declared} bytes but holds {held} bytes",
                    tensor.dims,
                    type_name(tensor.data_type)
                )))
            }
            (Held::Elements(held, _), _) if held != count => {
                return Err(wrong(format!(
                    "declares shape {:?} = {count} elements but holds {held}",
                    tensor.dims
                )));
            }
            (Held::Bytes(held), _) => held,
            (Held::Elements(_, bytes), _) => bytes,
            (Held::Unchecked, declared) => declared.unwrap_or(0),
        };
        self.footprint.weights = self.footprint.weights.saturating_add(bytes);
        if !tensor.name.is_empty() {
            self.types.insert(tensor.name.clone(), tensor.data_type);
            if let Some(values) = small_values(tensor) {
                self.constants.insert(tensor.name.clone(), values);
            }
        }
        Ok(())
    }

    /// The output size of an op that allocates from constant inputs, if known.
    fn allocation(&mut self, node: &NodeProto) {
        let input = |i: usize| node.input.get(i).filter(|n| !n.is_empty());
        let constant = |i: usize| input(i).and_then(|n| self.constants.get(n));
        let bits_of = |i: usize| {
            input(i)
                .and_then(|n| self.types.get(n))
                .and_then(|&t| elem_bits(t))
                .unwrap_or(8)
        };
        let product = |values: &[i64]| values.iter().map(|&v| v.max(0) as f64).product::<f64>();
        let (count, bits) = match node.op_type.as_str() {
            "ConstantOfShape" => {
                let bits = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref())
                    .and_then(|t| elem_bits(t.data_type))
                    .unwrap_or(32);
                (constant(0).map(|(ints, _)| product(ints)), bits)
            }
            "Expand" => (constant(1).map(|(ints, _)| product(ints)), bits_of(0)),
            "Tile" => {
                let base = constant(0).map_or(1.0, |(_, floats)| floats.len().max(1) as f64);
                (constant(1).map(|(ints, _)| product(ints) * base), bits_of(0))
            }
            "Resize" | "Upsample" => (constant(3).map(|(ints, _)| product(ints)), bits_of(0)),
            "Range" => match (constant(0), constant(1), constant(2)) {
                (Some((_, s)), Some((_, l)), Some((_, d)))
                    if s.len() == 1 && l.len() == 1 && d.len() == 1 && d[0] != 0.0 =>
                {
                    (Some(((l[0] - s[0]) / d[0]).ceil().max(0.0)), bits_of(0))
                }
                _ => (None, 8),
            },
            _ => (None, 8),
        };
        if let Some(count) = count.filter(|c| !c.is_nan()) {
            let what = || {
                format!(
                    "node '{}' ({}): {count:.0} elements",
                    node_name(node),
                    node.op_type
                )
            };
            self.footprint.value(what, to_bytes(count, bits));
        }
    }
}

enum Held {
    /// Raw bytes (inline `raw_data` or external).
    Bytes(u64),
    /// Elements in the typed fields, and their bytes.
    Elements(u64, u64),
    /// Packed sub-byte types and types unknown here: the engine checks them.
    Unchecked,
}

fn held_inline(t: &TensorProto) -> Held {
    if !t.raw_data.is_empty() {
        return Held::Bytes(t.raw_data.len() as u64);
    }
    let n = |len: usize| len as u64;
    match t.data_type {
        1 => Held::Elements(n(t.float_data.len()), n(t.float_data.len()) * 4),
        14 => Held::Elements(n(t.float_data.len() / 2), n(t.float_data.len()) * 4),
        7 => Held::Elements(n(t.int64_data.len()), n(t.int64_data.len()) * 8),
        11 => Held::Elements(n(t.double_data.len()), n(t.double_data.len()) * 8),
        15 => Held::Elements(n(t.double_data.len() / 2), n(t.double_data.len()) * 8),
        12 | 13 => Held::Elements(n(t.uint64_data.len()), n(t.uint64_data.len()) * 8),
        8 => Held::Elements(
            n(t.string_data.len()),
            t.string_data.iter().map(|s| s.len() as u64).sum(),
        ),
        2..=6 | 9 | 10 | 16..=20 => Held::Elements(n(t.int32_data.len()), n(t.int32_data.len()) * 4),
        _ => Held::Unchecked,
    }
}

/// Checks where an external tensor's data is and returns the bytes it names.
fn external(t: &TensorProto, dir: &Path) -> Result<u64, String> {
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let location = entry("location")
        .filter(|l| !l.is_empty())
        .ok_or("external data without a location")?;
    let relative = Path::new(location);
    let inside = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside || relative.is_absolute() {
        return Err(format!(
            "external data at {location:?} refused: expected a relative path inside the model's folder (no '..', not absolute)"
        ));
    }
    let unreadable = |e: std::io::Error| format!("external data {location:?} cannot be read: {e}");
    let folder = dir.canonicalize().map_err(unreadable)?;
    let path = dir.join(relative).canonicalize().map_err(unreadable)?;
    if !path.starts_with(&folder) {
        return Err(format!(
            "external data {location:?} refused: it resolves to {} outside the model's folder",
            path.display()
        ));
    }
    let file_len = std::fs::metadata(&path).map_err(unreadable)?.len();
    let number = |key: &str| -> Result<Option<u64>, String> {
        entry(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("external data {key} {v:?} is not a number"))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let length = number("length")?;
    let end = match length {
        Some(length) => offset.checked_add(length),
        None => Some(file_len.max(offset)),
    };
    match end {
        Some(end) if end <= file_len && offset <= file_len => Ok(end - offset),
        _ => Err(format!(
            "external data {location:?} is {file_len} bytes, shorter than offset {offset} + length {}",
            length.map_or("(rest)".to_string(), |l| l.to_string())
        )),
    }
}

fn small_values(t: &TensorProto) -> Option<(Vec<i64>, Vec<f64>)> {
    let ints: Vec<i64> = match t.data_type {
        7 if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        7 => t.int64_data.clone(),
        6 if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect(),
        6 => t.int32_data.iter().map(|&v| i64::from(v)).collect(),
        1 if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect(),
        1 => t.float_data.iter().map(|&v| v as i64).collect(),
        _ => return None,
    };
    let floats = match t.data_type {
        1 if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect(),
        1 => t.float_data.iter().map(|&v| f64::from(v)).collect(),
        _ => ints.iter().map(|&v| v as f64).collect(),
    };
    (ints.len() <= SMALL).then_some((ints, floats))
}

fn tensor_type(value: &ValueInfoProto) -> Option<(i32, Vec<i64>)> {
    let Some(type_proto::Value::TensorType(t)) = value.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dims = t
        .shape
        .iter()
        .flat_map(|s| &s.dim)
        .map(|d| match d.value {
            Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(n)) => n,
            _ => 1,
        })
        .collect();
    Some((t.elem_type, dims))
}

fn node_name(node: &NodeProto) -> &str {
    if node.name.is_empty() {
        node.output.first().map_or("?", String::as_str)
    } else {
        &node.name
    }
}

fn to_bytes(count: f64, bits: u64) -> u64 {
    let bytes = (count * bits as f64 / 8.0).ceil();
    if bytes >= u64::MAX as f64 || bytes.is_nan() {
        u64::MAX
    } else {
        bytes as u64
    }
}

/// Bits per element of an ONNX element type; `None` for strings and unknown types.
fn elem_bits(data_type: i32) -> Option<u64> {
    Some(match data_type {
        2 | 3 | 9 | 17..=20 | 24 => 8,
        4 | 5 | 10 | 16 => 16,
        1 | 6 | 12 => 32,
        7 | 11 | 13 | 14 => 64,
        15 => 128,
        21..=23 => 4,
        _ => return None,
    })
}

fn type_name(data_type: i32) -> String {
    crate::tensor::onnx_type_name(data_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{tensor_proto::DataType, StringStringEntryProto};

    fn tensor(dims: &[i64], raw: usize) -> TensorProto {
        TensorProto {
            name: "w".into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            raw_data: vec![0; raw],
            ..TensorProto::default()
        }
    }

    fn graph(initializer: Vec<TensorProto>, node: Vec<NodeProto>) -> GraphProto {
        GraphProto {
            initializer,
            node,
            ..GraphProto::default()
        }
    }

    fn external(location: &str, offset: Option<u64>, length: Option<u64>) -> TensorProto {
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.into(),
            value,
        };
        let mut t = tensor(&[4], 0);
        t.data_location = Some(EXTERNAL);
        t.external_data.push(entry("location", location.into()));
        t.external_data
            .extend(offset.map(|o| entry("offset", o.to_string())));
        t.external_data
            .extend(length.map(|l| entry("length", l.to_string())));
        t
    }

    #[test]
    fn declared_sizes_must_match_the_data_held() {
        let dir = Path::new(".");
        let ok = check(&graph(vec![tensor(&[2, 4], 32)], vec![]), dir).unwrap();
        assert_eq!(ok.weights, 32);
        let err = check(&graph(vec![tensor(&[1_000_000_000, 4], 16)], vec![]), dir).unwrap_err();
        assert!(
            err.contains("declares shape [1000000000, 4] of FP32 = 16000000000 bytes but holds 16 bytes"),
            "{err}"
        );
        let err = check(&graph(vec![tensor(&[-4], 16)], vec![]), dir).unwrap_err();
        assert!(err.contains("negative or overflows"), "{err}");
        let err = check(&graph(vec![tensor(&[1 << 62, 1 << 62], 16)], vec![]), dir).unwrap_err();
        assert!(err.contains("negative or overflows"), "{err}");
        let mut typed = tensor(&[4], 0);
        typed.float_data = vec![1.0; 3];
        let err = check(&graph(vec![typed], vec![]), dir).unwrap_err();
        assert!(err.contains("= 4 elements but holds 3"), "{err}");
    }

    #[test]
    fn external_data_stays_inside_the_model_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [0u8; 16]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.bin")).unwrap();
        let run = |t: TensorProto| check(&graph(vec![t], vec![]), dir.path());
        assert_eq!(run(external("w.bin", None, None)).unwrap().weights, 16);
        assert_eq!(run(external("./w.bin", Some(0), Some(16))).unwrap().weights, 16);
        for (location, why) in [
            (
                "/etc/passwd",
                "expected a relative path inside the model's folder",
            ),
            (
                "../../../../etc/passwd",
                "expected a relative path inside the model's folder",
            ),
            (
                "sub/../w.bin",
                "expected a relative path inside the model's folder",
            ),
            ("link.bin", "outside the model's folder"),
            ("missing.bin", "cannot be read"),
            ("", "without a location"),
        ] {
            let err = run(external(location, None, None)).unwrap_err();
            assert!(err.contains(why), "{location}: {err}");
        }
        let err = run(external("w.bin", Some(8), Some(16))).unwrap_err();
        assert!(err.contains("shorter than offset 8 + length 16"), "{err}");
        let err = run(external("w.bin", Some(u64::MAX), Some(u64::MAX))).unwrap_err();
        assert!(err.contains("shorter than"), "{err}");
        let err = run(external("w.bin", Some(4), None)).unwrap_err();
        assert!(
            err.contains("declares shape [4] of FP32 = 16 bytes but holds 12 bytes"),
            "{err}"
        );
    }

    #[test]
    fn allocations_from_constant_shapes_are_known_before_running() {
        let shape = TensorProto {
            name: "s".into(),
            dims: vec![3],
            data_type: DataType::Int64 as i32,
            int64_data: vec![1_000_000, 1_000_000, 1000],
            ..TensorProto::default()
        };
        let node = NodeProto {
            op_type: "ConstantOfShape".into(),
            name: "big".into(),
            input: vec!["s".into()],
            output: vec!["y".into()],
            ..NodeProto::default()
        };
        let footprint = check(&graph(vec![shape], vec![node]), Path::new(".")).unwrap();
        let (what, bytes) = footprint.largest.clone().unwrap();
        assert_eq!(bytes, 4_000_000_000_000_000);
        assert!(what.contains("node 'big' (ConstantOfShape)"), "{what}");
        assert_eq!(footprint.total(10), 24 + 4_000_000_000_000_000);
        assert!(footprint.describe().contains("largest value node 'big'"));
    }
}
