//! `model.toml`, the optional sidecar of a model directory (SPEC §4): engine and instance
//! settings, the version policy, image pre/post-processing, the golden sample and the rollout
//! policy of model delivery. Parsed with unknown keys refused and then validated, so an error
//! names the file, the key and what was expected. Everything absent comes from the ONNX file
//! itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::{EngineChoice, Provider};
use crate::pipeline::postprocess::OutputProcessing;
use crate::pipeline::preprocess::ImageInput;

/// File name of the sidecar inside a model directory.
pub const FILE_NAME: &str = "model.toml";

/// A sidecar that could not be read or is invalid.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {message}")]
pub struct SidecarError {
    /// The sidecar file.
    pub file: PathBuf,
    /// What was wrong, naming the key.
    pub message: String,
}

/// Which versions of a model are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The highest N versions.
    Latest(usize),
    /// Every version present.
    All,
    /// Exactly these versions (those present).
    Specific(Vec<u64>),
}

/// The parsed sidecar.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Engine for this model (overrides `[engine] default`).
    pub engine: Option<EngineChoice>,
    /// Providers for this model (overrides `[engine] providers`).
    pub providers: Option<Vec<Provider>>,
    /// Parallel sessions (per GPU when `gpus` is set).
    pub instances: Option<usize>,
    /// GPUs to place the instances on (`instances` on each); default `[engine] cuda_device`.
    pub gpus: Option<Vec<i32>>,
    /// Largest batch (Triton semantics): 0 = no batching; absent = 4 for a model whose first
    /// dimension is symbolic everywhere, else 0.
    pub max_batch_size: Option<u64>,
    /// Dynamic batching settings.
    pub batching: Option<Batching>,
    /// `"latest"` (with `latest`), `"all"`, or a list of versions.
    pub versions: Option<VersionsField>,
    /// How many versions `"latest"` keeps (default 1).
    pub latest: Option<usize>,
    /// Image pre-processing.
    pub input: Option<ImageInput>,
    /// Post-processing.
    pub output: Option<OutputProcessing>,
    /// Golden sample a new version must reproduce.
    pub validate: Option<Validate>,
    /// Model delivery: `"immediate"` (default) or `"shadow"`.
    pub rollout: Option<String>,
    /// Shadow: decide after this many compared requests (default 200).
    pub shadow_requests: Option<u64>,
    /// Shadow: decide after this many seconds at the latest (default 600).
    pub shadow_secs: Option<u64>,
    /// Shadow: fraction of requests copied to the candidate (default 1.0 = all).
    pub shadow_fraction: Option<f64>,
    /// Shadow: raw outputs agree when max |Δ| / max |current| is at most this (default 1e-3).
    pub shadow_rtol: Option<f64>,
    /// Shadow: promote only when at least this fraction of requests agreed (default 0.95).
    pub min_agreement: Option<f64>,
    /// Shadow: promote only when the candidate's p99 is at most this × the current's (1.5).
    pub max_p99_ratio: Option<f64>,
}

/// `versions = "latest" | "all" | [1, 3]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum VersionsField {
    /// `"latest"` or `"all"`.
    Named(String),
    /// An explicit list.
    List(Vec<u64>),
}

/// `[batching]`: how waiting requests are combined (Triton's `dynamic_batching`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    /// Longest a request waits for a fuller batch (default 0: batch only what is waiting).
    #[serde(default)]
    pub max_queue_delay_us: u64,
    /// Preferred batch sizes.
    #[serde(default)]
    pub preferred: Vec<u64>,
    /// Most requests waiting (0: the instances' queue bound); more are refused as overloaded.
    #[serde(default)]
    pub max_queue_size: u64,
    /// A request waiting longer is answered `expired` (0: no limit).
    #[serde(default)]
    pub default_timeout_us: u64,
    /// Answers in request order.
    #[serde(default)]
    pub preserve_ordering: bool,
}

/// `[validate]`: the golden sample and the warm-up inputs.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    /// Golden request: V2 request JSON (relative to the model directory).
    pub input: Option<PathBuf>,
    /// Golden response: V2 response JSON with the expected outputs.
    pub expected: Option<PathBuf>,
    /// Relative tolerance.
    #[serde(default = "default_rtol")]
    pub rtol: f64,
    /// Absolute tolerance.
    #[serde(default = "default_atol")]
    pub atol: f64,
    /// Explicit warm-up inputs (`[validate.warmup]`); a warm-up on them that fails refuses
    /// the version.
    pub warmup: Option<Warmup>,
}

/// `[validate.warmup]`: the inputs of the warm-up inference — a request file, or per input a
/// shape with a fill value or a `.npy` file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// A V2 request JSON holding every input (relative to the model directory).
    pub request: Option<PathBuf>,
    /// Per input name: `{ shape = [1, 3, 320, 320], value = 0.5 }` or `{ file = "x.npy" }`.
    #[serde(default)]
    pub inputs: BTreeMap<String, WarmupInput>,
}

/// One explicit warm-up input.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupInput {
    /// Concrete shape, filled with `value`.
    pub shape: Option<Vec<usize>>,
    /// Fill value (default 0).
    pub value: Option<f64>,
    /// A `.npy` file (relative to the model directory).
    pub file: Option<PathBuf>,
}

fn default_rtol() -> f64 {
    1e-3
}
fn default_atol() -> f64 {
    1e-4
}

impl Sidecar {
    /// Reads `<dir>/model.toml`; a missing file is the all-defaults sidecar.
    pub fn load(dir: &Path) -> Result<Sidecar, SidecarError> {
        let file = dir.join(FILE_NAME);
        let fail = |message: String| SidecarError {
            file: file.clone(),
            message,
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sidecar::default()),
            Err(e) => return Err(fail(format!("cannot read: {e}"))),
        };
        let sidecar: Sidecar =
            toml::from_str(&text).map_err(|e| fail(e.to_string().trim_end().to_string()))?;
        sidecar.validate().map_err(fail)?;
        Ok(sidecar)
    }

    fn validate(&self) -> Result<(), String> {
        self.policy()?;
        if self.instances == Some(0) {
            return Err("instances: expected at least 1".into());
        }
        self.check_batching()?;
        if let Some(gpus) = &self.gpus {
            let unique: std::collections::BTreeSet<&i32> = gpus.iter().collect();
            if gpus.is_empty() || unique.len() != gpus.len() || gpus.iter().any(|g| *g < 0) {
                return Err(format!(
                    "gpus: expected distinct GPU numbers (0, 1, ...), got {gpus:?}"
                ));
            }
        }
        if let Some(input) = &self.input {
            let one_of = |key: &str, value: &str, allowed: &[&str]| {
                if allowed.contains(&value) {
                    Ok(())
                } else {
                    Err(format!(
                        "input.{key}: expected one of {allowed:?}, got \"{value}\""
                    ))
                }
            };
            one_of("resize", &input.resize, &["stretch", "letterbox", "center_crop"])?;
            one_of("color", &input.color, &["rgb", "bgr", "gray"])?;
            one_of("layout", &input.layout, &["nchw", "nhwc"])?;
            crate::tensor::DType::from_kserve_name(&input.dtype).map_err(|e| format!("input.dtype: {e}"))?;
            if input.width == 0 || input.height == 0 {
                return Err("input.width/height: expected positive sizes".into());
            }
        }
        if let Some(output) = &self.output {
            if !["none", "classify", "yolo", "ssd"].contains(&output.kind.as_str()) {
                return Err(format!(
                    "output.kind: expected one of \"none\", \"classify\", \"yolo\", \"ssd\", got \"{}\"",
                    output.kind
                ));
            }
        }
        if let Some(v) = &self.validate {
            v.check()?;
        }
        self.check_rollout()
    }

    fn check_rollout(&self) -> Result<(), String> {
        if let Some(rollout) = self
            .rollout
            .as_deref()
            .filter(|r| !["immediate", "shadow"].contains(r))
        {
            return Err(format!(
                "rollout: expected \"immediate\" or \"shadow\", got \"{rollout}\""
            ));
        }
        let fractions = [
            ("shadow_fraction", self.shadow_fraction),
            ("min_agreement", self.min_agreement),
        ];
        for (key, value) in fractions {
            if value.is_some_and(|v| !(0.0..=1.0).contains(&v) || (key == "shadow_fraction" && v == 0.0)) {
                return Err(format!(
                    "{key}: expected a fraction in (0, 1], got {}",
                    value.unwrap_or_default()
                ));
            }
        }
        for (key, value) in [
            ("shadow_rtol", self.shadow_rtol),
            ("max_p99_ratio", self.max_p99_ratio),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(format!(
                    "{key}: expected a positive number, got {}",
                    value.unwrap_or_default()
                ));
            }
        }
        if self.shadow_requests == Some(0) && self.shadow_secs == Some(0) {
            return Err("shadow_requests/shadow_secs: at least one must be positive".into());
        }
        Ok(())
    }

    /// The version policy (default: the latest version).
    pub fn policy(&self) -> Result<VersionPolicy, String> {
        let latest = self.latest.unwrap_or(1);
        if latest == 0 {
            return Err("latest: expected at least 1".into());
        }
        match &self.versions {
            None => Ok(VersionPolicy::Latest(latest)),
            Some(VersionsField::Named(name)) if name == "latest" => Ok(VersionPolicy::Latest(latest)),
            Some(VersionsField::Named(name)) if name == "all" => Ok(VersionPolicy::All),
            Some(VersionsField::Named(other)) => Err(format!(
                "versions: expected \"latest\", \"all\" or a list of version numbers, got \"{other}\""
            )),
            Some(VersionsField::List(list)) if list.is_empty() => {
                Err("versions: expected at least one version number".into())
            }
            Some(VersionsField::List(list)) => Ok(VersionPolicy::Specific(list.clone())),
        }
    }
}

impl Sidecar {
    fn check_batching(&self) -> Result<(), String> {
        let Some(batching) = &self.batching else {
            return Ok(());
        };
        if self.max_batch_size == Some(0) {
            return Err("batching: a model with max_batch_size = 0 does not batch; remove [batching] or raise max_batch_size".into());
        }
        let max = self.max_batch_size.unwrap_or(u64::MAX);
        if let Some(bad) = batching.preferred.iter().find(|&&p| p == 0 || p > max) {
            return Err(format!(
                "batching.preferred: {bad} is not a batch size between 1 and max_batch_size ({max})"
            ));
        }
        Ok(())
    }
}

impl Validate {
    fn check(&self) -> Result<(), String> {
        if !(self.rtol >= 0.0 && self.atol >= 0.0) {
            return Err("validate.rtol/atol: expected non-negative numbers".into());
        }
        if self.input.is_some() != self.expected.is_some() {
            return Err(
                "validate.input/expected: a golden sample needs both the request and the expected response"
                    .into(),
            );
        }
        let Some(warmup) = &self.warmup else {
            return Ok(());
        };
        if warmup.request.is_some() != warmup.inputs.is_empty() {
            return Err(
                "validate.warmup: expected either `request = \"file.json\"` or `[validate.warmup.inputs]`, not both or neither"
                    .into(),
            );
        }
        for (name, input) in &warmup.inputs {
            if input.file.is_some() == input.shape.is_some() {
                return Err(format!(
                    "validate.warmup.inputs.{name}: expected either `shape` (with an optional `value`) or `file`"
                ));
            }
            if input.file.is_some() && input.value.is_some() {
                return Err(format!(
                    "validate.warmup.inputs.{name}: `value` goes with `shape`, not with `file`"
                ));
            }
        }
        Ok(())
    }
}

impl VersionPolicy {
    /// Chooses the served versions among those present (sorted ascending).
    pub fn select(&self, present: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::Latest(n) => present[present.len().saturating_sub(*n)..].to_vec(),
            VersionPolicy::All => present.to_vec(),
            VersionPolicy::Specific(wanted) => {
                present.iter().copied().filter(|v| wanted.contains(v)).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(text: &str) -> Result<Sidecar, SidecarError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
        Sidecar::load(dir.path())
    }

    #[test]
    fn missing_sidecar_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sidecar::load(dir.path()).unwrap();
        assert_eq!(s.policy().unwrap(), VersionPolicy::Latest(1));
    }

    #[test]
    fn version_policies_select_versions() {
        assert_eq!(VersionPolicy::Latest(2).select(&[1, 2, 5]), vec![2, 5]);
        assert_eq!(VersionPolicy::Latest(9).select(&[1, 2]), vec![1, 2]);
        assert_eq!(VersionPolicy::All.select(&[1, 2]), vec![1, 2]);
        assert_eq!(VersionPolicy::Specific(vec![1, 7]).select(&[1, 2, 3]), vec![1]);
        assert_eq!(
            sidecar("versions = \"all\"").unwrap().policy().unwrap(),
            VersionPolicy::All
        );
        assert_eq!(
            sidecar("versions = [3, 1]").unwrap().policy().unwrap(),
            VersionPolicy::Specific(vec![3, 1])
        );
        assert_eq!(
            sidecar("versions = \"latest\"\nlatest = 2")
                .unwrap()
                .policy()
                .unwrap(),
            VersionPolicy::Latest(2)
        );
    }

    #[test]
    fn errors_name_file_key_and_expectation() {
        let err = sidecar("instancs = 2").unwrap_err().to_string();
        assert!(err.contains("model.toml") && err.contains("instancs"), "{err}");
        let err = sidecar("versions = \"newest\"").unwrap_err().to_string();
        assert!(err.contains("versions: expected \"latest\", \"all\""), "{err}");
        let err = sidecar("[input]\nwidth = 8\nheight = 8\nresize = \"zoom\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("input.resize: expected one of"), "{err}");
        let err = sidecar("instances = \"two\"").unwrap_err().to_string();
        assert!(err.contains("instances"), "{err}");
        let err = sidecar("[output]\nkind = \"segment\"").unwrap_err().to_string();
        assert!(err.contains("output.kind"), "{err}");
        let err = sidecar("max_batch_size = 0\n[batching]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batching: a model with max_batch_size = 0"), "{err}");
        let err = sidecar("max_batch_size = 8\n[batching]\npreferred = [4, 16]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batching.preferred: 16"), "{err}");
        let err = sidecar("gpus = [0, 0]").unwrap_err().to_string();
        assert!(err.contains("gpus: expected distinct"), "{err}");
        let err = sidecar("[batching]\nmax_delay_us = 5\n").unwrap_err().to_string();
        assert!(err.contains("max_delay_us"), "{err}");
        let err = sidecar("[validate]\ninput = \"a.json\"").unwrap_err().to_string();
        assert!(err.contains("validate.input/expected"), "{err}");
        let err = sidecar("[validate.warmup]\n").unwrap_err().to_string();
        assert!(err.contains("validate.warmup: expected either"), "{err}");
        let err = sidecar("[validate.warmup.inputs.x]\nvalue = 1.0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("validate.warmup.inputs.x"), "{err}");
        let err = sidecar("rollout = \"canary\"").unwrap_err().to_string();
        assert!(
            err.contains("rollout: expected \"immediate\" or \"shadow\""),
            "{err}"
        );
        let err = sidecar("min_agreement = 1.5").unwrap_err().to_string();
        assert!(err.contains("min_agreement: expected a fraction"), "{err}");
        let err = sidecar("max_p99_ratio = 0").unwrap_err().to_string();
        assert!(err.contains("max_p99_ratio: expected a positive"), "{err}");
        let ok = sidecar("rollout = \"shadow\"\nshadow_requests = 50\nmin_agreement = 0.9\n").unwrap();
        assert_eq!(ok.rollout.as_deref(), Some("shadow"));
        let ok = sidecar("[validate.warmup.inputs.x]\nshape = [1, 3]\nvalue = 0.5\n").unwrap();
        let warmup = ok.validate.unwrap().warmup.unwrap();
        assert_eq!(warmup.inputs["x"].shape, Some(vec![1, 3]));
    }

    #[test]
    fn example_model_sidecar_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits");
        let s = Sidecar::load(&dir).unwrap();
        assert_eq!(s.input.unwrap().width, 8);
        assert_eq!(s.output.unwrap().kind, "classify");
    }
}
