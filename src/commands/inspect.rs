//! `onnxd inspect MODEL.onnx [--json]`: what a model file declares and which engines and
//! providers can run it here.

use std::path::Path;

use serde::Serialize;

use crate::engine::{self, ort, EngineOptions};
use crate::model::{EngineKind, ModelFile, TensorSpec};

/// Everything `inspect` reports.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    /// File inspected.
    pub path: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// ONNX IR version.
    pub ir_version: i64,
    /// Opset per domain (`ai.onnx` for the default domain).
    pub opsets: Vec<(String, i64)>,
    /// Producer name and version.
    pub producer: String,
    /// Graph name.
    pub graph: String,
    /// Model metadata properties.
    pub metadata: Vec<(String, String)>,
    /// Inputs.
    pub inputs: Vec<SpecReport>,
    /// Outputs.
    pub outputs: Vec<SpecReport>,
    /// Dim 0 symbolic on every input and output.
    pub batchable: bool,
    /// Whether each engine can load the model here.
    pub engines: Vec<EngineReport>,
    /// The ONNX Runtime library and its providers.
    pub onnxruntime: RuntimeReport,
}

/// One input or output.
#[derive(Debug, Serialize)]
pub struct SpecReport {
    /// Name.
    pub name: String,
    /// KServe datatype, or a description of a type onnxd cannot carry.
    pub datatype: String,
    /// Dimensions: numbers, symbol names, or `?`.
    pub shape: Vec<String>,
}

/// Whether one engine loads the model.
#[derive(Debug, Serialize)]
pub struct EngineReport {
    /// Engine.
    pub engine: EngineKind,
    /// Loaded successfully.
    pub loads: bool,
    /// Provider it would use.
    pub provider: Option<String>,
    /// Why it cannot load the model.
    pub error: Option<String>,
}

/// The ONNX Runtime library found here.
#[derive(Debug, Serialize)]
pub struct RuntimeReport {
    /// Library path, when found.
    pub library: Option<String>,
    /// Why it is unavailable.
    pub error: Option<String>,
    /// Providers compiled into the library.
    pub providers: Vec<&'static str>,
}

fn spec(s: &TensorSpec) -> SpecReport {
    SpecReport {
        name: s.name.clone(),
        datatype: s.kind.to_string(),
        shape: s.dims.iter().map(ToString::to_string).collect(),
    }
}

/// Reads a model and probes both engines.
pub fn inspect(path: &Path, options: &EngineOptions) -> Result<InspectReport, engine::EngineError> {
    let model = ModelFile::open(path)?;
    let info = &model.info;
    let onnxruntime = match ort::runtime(options.ort_library.as_deref()) {
        Ok(rt) => RuntimeReport {
            library: Some(rt.library.display().to_string()),
            error: None,
            providers: ort::compiled_providers(),
        },
        Err(e) => RuntimeReport {
            library: None,
            error: Some(e.to_string()),
            providers: Vec::new(),
        },
    };
    let engines = [EngineKind::Ort, EngineKind::Tract]
        .into_iter()
        .map(|kind| {
            let result = match kind {
                EngineKind::Ort => ort::load(&model, options),
                EngineKind::Tract => engine::tract::load(&model, options),
            };
            match result {
                Ok(loaded) => EngineReport {
                    engine: kind,
                    loads: true,
                    provider: Some(loaded.provider),
                    error: None,
                },
                Err(e) => EngineReport {
                    engine: kind,
                    loads: false,
                    provider: None,
                    error: Some(e.to_string()),
                },
            }
        })
        .collect();
    Ok(InspectReport {
        path: path.display().to_string(),
        sha256: info.sha256.clone(),
        size_bytes: info.file_size,
        ir_version: info.ir_version,
        opsets: info
            .opsets
            .iter()
            .map(|(d, v)| {
                (
                    if d.is_empty() {
                        "ai.onnx".to_string()
                    } else {
                        d.clone()
                    },
                    *v,
                )
            })
            .collect(),
        producer: info.producer.clone(),
        graph: info.graph_name.clone(),
        metadata: info
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        inputs: info.inputs.iter().map(spec).collect(),
        outputs: info.outputs.iter().map(spec).collect(),
        batchable: info.batchable(),
        engines,
        onnxruntime,
    })
}

impl std::fmt::Display for InspectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "model     {}", self.path)?;
        writeln!(f, "sha256    {}", self.sha256)?;
        writeln!(f, "size      {} bytes", self.size_bytes)?;
        let opsets: Vec<String> = self.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
        writeln!(f, "ir        {}   opsets: {}", self.ir_version, opsets.join(", "))?;
        writeln!(
            f,
            "producer  {}",
            if self.producer.is_empty() {
                "-"
            } else {
                &self.producer
            }
        )?;
        writeln!(
            f,
            "batchable {}",
            if self.batchable {
                "yes (dim 0 symbolic everywhere)"
            } else {
                "no"
            }
        )?;
        for (title, specs) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            writeln!(f, "{title}:")?;
            for s in specs {
                writeln!(f, "  {:<24} {:<8} [{}]", s.name, s.datatype, s.shape.join(", "))?;
            }
        }
        if !self.metadata.is_empty() {
            writeln!(f, "metadata:")?;
            for (k, v) in &self.metadata {
                writeln!(f, "  {k} = {v}")?;
            }
        }
        writeln!(f, "engines:")?;
        for e in &self.engines {
            match (&e.provider, &e.error) {
                (Some(p), _) => writeln!(f, "  {:<12} yes  ({p})", e.engine.to_string())?,
                (_, Some(err)) => writeln!(f, "  {:<12} no   {err}", e.engine.to_string())?,
                _ => {}
            }
        }
        match (&self.onnxruntime.library, &self.onnxruntime.error) {
            (Some(lib), _) => writeln!(
                f,
                "onnxruntime {lib}\n  providers compiled in: {}",
                self.onnxruntime.providers.join(", ")
            ),
            (_, Some(err)) => writeln!(f, "onnxruntime {err}"),
            _ => Ok(()),
        }
    }
}
