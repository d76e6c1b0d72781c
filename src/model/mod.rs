//! Model facts: what an ONNX file says about itself, read once from its protobuf before any
//! engine sees it, and which engine runs it. Every layer reports these (metadata, status,
//! metrics) without knowing an engine.
//!
//! [`ModelFile::open`] reads the file into memory (no mmap: a file truncated while mapped
//! would kill the process with SIGBUS), hashes it and decodes the `ModelProto`; a corrupt,
//! truncated, empty or non-ONNX file is refused here with a clear [`ModelError::InvalidModel`].
//! [`ModelInfo`] holds the facts (inputs, outputs, opsets, producer, metadata) and validates
//! requests against the model's signature, so both engines reject bad inputs with the same
//! messages. [`declared`] checks what the file declares about its sizes and external data
//! before any engine allocates them.

pub mod declared;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::pb::{self, tensor_shape_proto::dimension, type_proto, ModelProto};

use crate::tensor::{format_dims, onnx_type_name, DType, Dim, Tensor};

/// Why a model file or a request does not fit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// The file is not a usable ONNX model.
    #[error("{path}: {reason}")]
    InvalidModel {
        /// Model file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model has inputs or outputs that are not KServe tensors.
    #[error("model not supported by onnxd: {0}")]
    NotExpressible(String),
    /// The request does not fit the model's signature.
    #[error("{0}")]
    BadInput(String),
}

/// The engines onnxd has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// ONNX Runtime.
    Ort,
    /// tract.
    Tract,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Ort => "onnxruntime",
            EngineKind::Tract => "tract",
        })
    }
}

/// The type of a model input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// A tensor of a KServe datatype.
    Tensor(DType),
    /// Anything onnxd cannot carry (sequence, map, optional, FP8, INT4, ...), described.
    Other(String),
}

impl std::fmt::Display for ValueKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueKind::Tensor(d) => write!(f, "{d}"),
            ValueKind::Other(s) => f.write_str(s),
        }
    }
}

/// One input or output of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the graph.
    pub name: String,
    /// Element type.
    pub kind: ValueKind,
    /// Declared shape; empty with `rank_known = false` when the model declares none.
    pub dims: Vec<Dim>,
    /// Whether the model declares a shape at all.
    pub rank_known: bool,
}

impl TensorSpec {
    /// The datatype if this is a KServe tensor.
    pub fn dtype(&self) -> Option<DType> {
        match self.kind {
            ValueKind::Tensor(d) => Some(d),
            ValueKind::Other(_) => None,
        }
    }

    /// `FP32 [N, 3, 224, 224]`.
    pub fn describe(&self) -> String {
        if self.rank_known {
            format!("{} {}", self.kind, format_dims(&self.dims))
        } else {
            format!("{} [any shape]", self.kind)
        }
    }

    /// Whether dimension 0 exists and is symbolic (Triton's "batchable").
    pub fn has_symbolic_batch(&self) -> bool {
        matches!(self.dims.first(), Some(Dim::Symbolic(_)))
    }
}

/// Facts about a model, engine-independent.
#[derive(Clone, Debug, Default)]
pub struct ModelInfo {
    /// Graph inputs (initializers excluded), in graph order.
    pub inputs: Vec<TensorSpec>,
    /// Graph outputs, in graph order.
    pub outputs: Vec<TensorSpec>,
    /// Opset per domain (`""` is the default ONNX domain).
    pub opsets: BTreeMap<String, i64>,
    /// ONNX IR version.
    pub ir_version: i64,
    /// Producer name and version (`pytorch 2.5.0`).
    pub producer: String,
    /// Graph name.
    pub graph_name: String,
    /// `metadata_props` of the model.
    pub metadata: BTreeMap<String, String>,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// File size in bytes.
    pub file_size: u64,
    /// The sizes the file declares (weights, largest statically known value).
    pub footprint: declared::Footprint,
}

/// A model file read and decoded, ready to hand to an engine.
pub struct ModelFile {
    /// Path it was read from.
    pub path: PathBuf,
    /// Decoded protobuf (tract builds from it; dropped after loading).
    pub proto: ModelProto,
    /// Facts derived from it.
    pub info: Arc<ModelInfo>,
}

impl ModelFile {
    /// Reads, hashes and decodes an ONNX file.
    pub fn open(path: &Path) -> Result<ModelFile, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::InvalidModel {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        ModelFile::from_bytes(path, &bytes)
    }

    /// Hashes and decodes the bytes of an ONNX file already read from `path`.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<ModelFile, ModelError> {
        let invalid = |reason: String| ModelError::InvalidModel {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.is_empty() {
            return Err(invalid("the file is empty".into()));
        }
        let proto = ModelProto::decode(bytes).map_err(|e| {
            invalid(format!(
                "not an ONNX model (protobuf decode failed: {e}); truncated or corrupt?"
            ))
        })?;
        let graph = proto
            .graph
            .as_ref()
            .filter(|g| !g.output.is_empty())
            .ok_or_else(|| {
                invalid("not an ONNX model (no graph with outputs); truncated or corrupt?".into())
            })?;
        if proto.ir_version <= 0 || proto.opset_import.is_empty() {
            return Err(invalid(
                "not an ONNX model (no IR version or opset import); truncated or corrupt?".into(),
            ));
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let footprint = declared::check(graph, dir).map_err(invalid)?;
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .map(tensor_spec)
            .collect();
        let outputs = graph.output.iter().map(tensor_spec).collect();
        let producer = format!("{} {}", proto.producer_name, proto.producer_version)
            .trim()
            .to_string();
        let info = ModelInfo {
            inputs,
            outputs,
            opsets: proto
                .opset_import
                .iter()
                .map(|o| (o.domain.clone(), o.version))
                .collect(),
            ir_version: proto.ir_version,
            producer,
            graph_name: graph.name.clone(),
            metadata: proto
                .metadata_props
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect(),
            sha256: hex(&Sha256::digest(bytes)),
            file_size: bytes.len() as u64,
            footprint,
        };
        Ok(ModelFile {
            path: path.to_path_buf(),
            proto,
            info: Arc::new(info),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tensor_spec(value: &pb::ValueInfoProto) -> TensorSpec {
    let tensor = match value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        None => {
            return TensorSpec {
                name: value.name.clone(),
                kind: ValueKind::Other("a sequence, map or optional value".into()),
                dims: Vec::new(),
                rank_known: false,
            }
        }
    };
    let kind = match DType::from_onnx_type(tensor.elem_type) {
        Ok(d) => ValueKind::Tensor(d),
        Err(_) => ValueKind::Other(format!("tensor({})", onnx_type_name(tensor.elem_type))),
    };
    let dims: Vec<Dim> = tensor
        .shape
        .iter()
        .flat_map(|s| &s.dim)
        .map(|d| match &d.value {
            Some(dimension::Value::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as u64),
            Some(dimension::Value::DimParam(p)) if !p.is_empty() => Dim::Symbolic(Some(p.clone())),
            _ => Dim::Symbolic(None),
        })
        .collect();
    TensorSpec {
        name: value.name.clone(),
        kind,
        dims,
        rank_known: tensor.shape.is_some(),
    }
}

impl ModelInfo {
    /// Refuses models whose inputs or outputs onnxd cannot carry.
    pub fn check_expressible(&self) -> Result<(), ModelError> {
        let odd: Vec<String> = self
            .inputs
            .iter()
            .map(|s| ("input", s))
            .chain(self.outputs.iter().map(|s| ("output", s)))
            .filter(|(_, s)| s.dtype().is_none())
            .map(|(what, s)| format!("{what} '{}' is {}", s.name, s.kind))
            .collect();
        if odd.is_empty() {
            Ok(())
        } else {
            Err(ModelError::NotExpressible(odd.join("; ")))
        }
    }

    /// Whether every input and output has a symbolic first dimension.
    pub fn batchable(&self) -> bool {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .all(TensorSpec::has_symbolic_batch)
    }

    /// Deterministic inputs for a model: each symbolic dimension sized by `size(spec, axis)`
    /// (`None`: no size known, an error naming it), floats in [-1, 1), integers small and
    /// non-negative, strings short.
    pub fn synthetic_inputs(
        &self,
        size: impl Fn(&TensorSpec, usize) -> Option<usize>,
    ) -> Result<Vec<(String, Tensor)>, ModelError> {
        self.inputs
            .iter()
            .map(|spec| {
                let dtype = spec.dtype().ok_or_else(|| {
                    ModelError::NotExpressible(format!("input '{}' is {}", spec.name, spec.kind))
                })?;
                let shape = spec
                    .dims
                    .iter()
                    .enumerate()
                    .map(|(axis, d)| match d {
                        Dim::Fixed(n) => Ok(*n as usize),
                        Dim::Symbolic(_) => size(spec, axis).ok_or_else(|| {
                            ModelError::BadInput(format!(
                                "no size for dimension {axis} ({d}) of input '{}'",
                                spec.name
                            ))
                        }),
                    })
                    .collect::<Result<Vec<usize>, _>>()?;
                let too_large = || {
                    ModelError::BadInput(format!(
                        "input '{}' of shape {shape:?} is too large to build",
                        spec.name
                    ))
                };
                let count = crate::tensor::element_count(&shape).map_err(|_| too_large())?;
                let tensor = synthetic_tensor(dtype, shape.clone(), count).ok_or_else(too_large)?;
                Ok((spec.name.clone(), tensor))
            })
            .collect()
    }

    /// [`ModelInfo::synthetic_inputs`] with every symbolic dimension 1.
    pub fn unit_inputs(&self) -> Result<Vec<(String, Tensor)>, ModelError> {
        self.synthetic_inputs(|_, _| Some(1))
    }

    /// Checks named inputs against the signature and returns them in graph order.
    pub fn order_inputs(
        &self,
        mut given: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, ModelError> {
        let expected = || {
            self.inputs
                .iter()
                .map(|s| format!("{} ({})", s.name, s.describe()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, (name, _)) in given.iter().enumerate() {
            if !self.inputs.iter().any(|s| &s.name == name) {
                return Err(ModelError::BadInput(format!(
                    "unknown input '{name}'; the model's inputs are: {}",
                    expected()
                )));
            }
            if given[..i].iter().any(|(n, _)| n == name) {
                return Err(ModelError::BadInput(format!("input '{name}' is given twice")));
            }
        }
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let Some(pos) = given.iter().position(|(n, _)| n == &spec.name) else {
                return Err(ModelError::BadInput(format!(
                    "missing input '{}' ({})",
                    spec.name,
                    spec.describe()
                )));
            };
            let (name, tensor) = given.swap_remove(pos);
            check_tensor(spec, &tensor)?;
            ordered.push((name, tensor));
        }
        Ok(ordered)
    }

    /// Resolves the requested output names (all outputs when `None`), refusing unknown and
    /// repeated ones.
    pub fn select_outputs(&self, requested: Option<&[String]>) -> Result<Vec<String>, ModelError> {
        let all = || self.outputs.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let Some(requested) = requested else {
            return Ok(all());
        };
        for (i, name) in requested.iter().enumerate() {
            if !self.outputs.iter().any(|s| &s.name == name) {
                return Err(ModelError::BadInput(format!(
                    "unknown output '{name}'; the model's outputs are: {}",
                    all().join(", ")
                )));
            }
            if requested[..i].contains(name) {
                return Err(ModelError::BadInput(format!(
                    "output '{name}' is requested twice"
                )));
            }
        }
        Ok(requested.to_vec())
    }
}

fn check_tensor(spec: &TensorSpec, tensor: &Tensor) -> Result<(), ModelError> {
    if spec.dtype() != Some(tensor.dtype()) {
        return Err(ModelError::BadInput(format!(
            "input '{}' is {} but the model expects {}",
            spec.name,
            tensor.dtype(),
            spec.kind
        )));
    }
    let shape = tensor.shape();
    let fits = !spec.rank_known
        || (spec.dims.len() == shape.len() && spec.dims.iter().zip(shape).all(|(d, &s)| d.accepts(s)));
    if !fits {
        return Err(ModelError::BadInput(format!(
            "input '{}' has shape {:?} but the model expects {}",
            spec.name,
            shape,
            format_dims(&spec.dims)
        )));
    }
    Ok(())
}

/// `None` when its bytes cannot be allocated (checked, never an abort).
fn synthetic_tensor(dtype: DType, shape: Vec<usize>, count: usize) -> Option<Tensor> {
    // A tiny LCG: reproducible without a dependency.
    let mut state = 0x2545_f491_u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(count.checked_mul(dtype.size().unwrap_or(0))?)
        .ok()?;
    for _ in 0..count {
        let x = next() * 2.0 - 1.0;
        match dtype {
            DType::F32 => bytes.extend_from_slice(&(x as f32).to_le_bytes()),
            DType::F64 => bytes.extend_from_slice(&x.to_le_bytes()),
            DType::F16 => bytes.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
            DType::BF16 => bytes.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
            DType::Bool => bytes.push(u8::from(x > 0.0)),
            DType::Bytes => {}
            other => {
                let size = other.size().expect("fixed size");
                let v = ((x + 1.0) * 4.0) as u64;
                bytes.extend_from_slice(&v.to_le_bytes()[..size]);
            }
        }
    }
    if dtype == DType::Bytes {
        let mut elements = Vec::new();
        elements.try_reserve_exact(count).ok()?;
        elements.resize(count, b"onnxd".to_vec());
        return Some(Tensor::from_strings(shape, elements).expect("count matches shape"));
    }
    Some(Tensor::from_raw(dtype, shape, bytes).expect("count matches shape"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guessed_inputs_of_impossible_sizes_are_refused_not_allocated() {
        let info = |dims: Vec<u64>| ModelInfo {
            inputs: vec![TensorSpec {
                name: "x".into(),
                kind: ValueKind::Tensor(DType::F32),
                dims: dims.into_iter().map(Dim::Fixed).collect(),
                rank_known: true,
            }],
            ..ModelInfo::default()
        };
        // Found by tests/hostile_models.rs: a fixed input of i64::MAX elements overflowed the
        // element count (a panic that killed the repository thread).
        for dims in [vec![i64::MAX as u64, 4], vec![1 << 40, 1 << 40], vec![1 << 62]] {
            let err = info(dims.clone()).unit_inputs().unwrap_err();
            assert!(
                err.to_string().contains("is too large to build"),
                "{dims:?}: {err}"
            );
        }
        assert_eq!(info(vec![2, 3]).unit_inputs().unwrap()[0].1.shape(), &[2, 3]);
    }

    #[test]
    fn an_output_requested_twice_is_a_bad_request() {
        let output = |name: &str| TensorSpec {
            name: name.into(),
            kind: ValueKind::Tensor(DType::F32),
            dims: vec![Dim::Fixed(1)],
            rank_known: true,
        };
        let info = ModelInfo {
            outputs: vec![output("y"), output("z")],
            ..ModelInfo::default()
        };
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            info.select_outputs(Some(&names(&["z", "y"]))).unwrap(),
            names(&["z", "y"])
        );
        let err = info.select_outputs(Some(&names(&["y", "z", "y"]))).unwrap_err();
        assert!(
            matches!(&err, ModelError::BadInput(m) if m == "output 'y' is requested twice"),
            "{err}"
        );
    }
}
