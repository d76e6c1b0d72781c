//! Loading one version of a model, with every check a reload must pass before the version may
//! serve (SPEC §4 "the guarantee", step 2): the minisign signature when signatures are
//! required, a valid ONNX file, an engine that loads it, one warm-up inference (see
//! [`warmup`] for its inputs and when its failure refuses), and the golden sample of
//! `[validate]` within its tolerances. Any failure is a [`LoadError`] naming the step.
//! [`stage`] runs the checks that need no engine, so a `replace` reload can refuse a bad
//! version before it drains the one serving.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use minisign_verify::{PublicKey, Signature};

use super::layout::SIGNATURE_SUFFIX;
use super::sidecar::{Sidecar, Validate};
use super::warmup::{self, Origin};
use crate::engine::batch::{rows_of, BatchPolicy};
use crate::engine::pool::LoadedModel;
use crate::engine::select::{self, QUEUE_PER_INSTANCE};
use crate::engine::{EngineChoice, EngineOptions};
use crate::model::{ModelFile, ModelInfo};
use crate::pipeline::postprocess::{Kind, Postprocessor};
use crate::serving::image::ImagePipeline;
use crate::serving::LoadedVersion;
use crate::tensor::approx_eq;
use crate::tensor::kserve::{InferRequestBody, InferResponseBody};
use crate::tensor::{Tensor, Tensors};

/// Settings every load of this daemon shares.
#[derive(Clone, Debug)]
pub struct LoadSettings {
    /// Engine settings from `[engine]` (a sidecar may override some).
    pub engine: EngineOptions,
    /// Refuse files without a valid signature.
    pub require_signatures: bool,
    /// Trusted minisign public keys (base64).
    pub trusted_keys: Vec<String>,
    /// An engine that wins over the sidecar's (the CLI's `--engine`).
    pub force_engine: Option<EngineChoice>,
    /// Batching settings that win over the sidecar's (the CLI's `bench`).
    pub batching: BatchOverrides,
}

/// Batching settings given on the command line.
#[derive(Clone, Debug, Default)]
pub struct BatchOverrides {
    /// `max_batch_size`.
    pub max_batch_size: Option<u64>,
    /// `[batching] max_queue_delay_us`.
    pub max_queue_delay_us: Option<u64>,
}

impl LoadSettings {
    /// The settings of a daemon's repository: `[engine]`, `state_dir` and the signature keys.
    pub fn from_config(config: &crate::config::Config) -> LoadSettings {
        LoadSettings {
            engine: config.engine_options(),
            require_signatures: config.repository.require_signatures,
            trusted_keys: config.repository.trusted_keys.clone(),
            force_engine: None,
            batching: BatchOverrides::default(),
        }
    }
}

/// Which check refused a version, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("version {version}: {step}: {message}")]
pub struct LoadError {
    /// Version that failed.
    pub version: u64,
    /// `signature`, `model`, `warmup` or `golden`.
    pub step: &'static str,
    /// What was wrong.
    pub message: String,
}

/// One version to load.
pub struct VersionSource<'a> {
    /// Model name.
    pub name: &'a str,
    /// Model directory.
    pub dir: &'a Path,
    /// Version number.
    pub version: u64,
    /// Its `model.onnx`.
    pub file: &'a Path,
    /// The model's sidecar.
    pub sidecar: &'a Sidecar,
}

/// A version that passed every check that needs no engine: file read, signature, ONNX
/// parsed, model facts expressible, the engine choice possible, `[input]` and `[output]`
/// fitting the signature. A `replace` reload stages the new version before it drains the old.
pub struct Staged {
    file: ModelFile,
    options: EngineOptions,
    policy: BatchPolicy,
    /// Batching was asked for, not defaulted (a model that cannot batch is then refused).
    batching_asked: bool,
    image: Option<ImagePipeline>,
    post: Option<Postprocessor>,
    labels: Option<Vec<String>>,
    started: Instant,
}

/// How the warm-up inference went.
#[derive(Clone, Debug)]
pub struct WarmupReport {
    /// Where its inputs came from.
    pub origin: Origin,
    /// `None` when it ran; the engine's complaint when it failed on inputs that do not refuse
    /// the version (the version serves and pays the lazy initialisation on its first request).
    pub skipped: Option<String>,
}

impl WarmupReport {
    /// What the model's state says about it.
    pub fn describe(&self) -> String {
        match &self.skipped {
            None => format!("ok on {}", self.origin.describe()),
            Some(why) => format!(
                "skipped: {} failed ({why}); the first request pays the engine's lazy initialisation",
                self.origin.describe()
            ),
        }
    }
}

/// Loads, warms up and validates one version; it is ready to be swapped in.
pub fn load_version(source: &VersionSource<'_>, settings: &LoadSettings) -> Result<LoadedVersion, LoadError> {
    let staged = stage(source, settings)?;
    load_staged(source, staged)
}

/// The checks of a version that need no engine (see [`Staged`]).
pub fn stage(source: &VersionSource<'_>, settings: &LoadSettings) -> Result<Staged, LoadError> {
    let started = Instant::now();
    let fail = |step: &'static str, message: String| LoadError {
        version: source.version,
        step,
        message,
    };
    let bytes = std::fs::read(source.file)
        .map_err(|e| fail("model", format!("cannot read {}: {e}", source.file.display())))?;
    if settings.require_signatures {
        verify_signature(source.file, &bytes, &settings.trusted_keys).map_err(|m| fail("signature", m))?;
    }
    let file = ModelFile::from_bytes(source.file, &bytes).map_err(|e| fail("model", e.to_string()))?;
    drop(bytes);
    let mut options = engine_options(&settings.engine, source.sidecar);
    if let Some(engine) = settings.force_engine {
        options.choice = engine;
    }
    select::precheck(&file, &options).map_err(|e| fail("model", e.to_string()))?;
    let policy = batch_policy(source.sidecar, &settings.batching, &file.info, &options)
        .map_err(|m| fail("max_batch_size", m))?;
    let image = source
        .sidecar
        .input
        .as_ref()
        .map(|input| ImagePipeline::new(&file.info.inputs, input))
        .transpose()
        .map_err(|m| fail("input", m))?;
    let labels = super::layout::labels(source.dir);
    let post = source
        .sidecar
        .output
        .as_ref()
        .map(|output| {
            let input_size = image.as_ref().map(|i| i.pre.size());
            Postprocessor::new(output, labels.clone(), input_size)
        })
        .transpose()
        .map_err(|e| fail("output", e.to_string()))?
        .filter(|post| post.kind() != Kind::None);
    Ok(Staged {
        file,
        options,
        policy,
        batching_asked: batching_asked(source.sidecar, &settings.batching),
        image,
        post,
        labels,
        started,
    })
}

/// Loads a staged version in its engine, warms it up and checks the golden sample.
pub fn load_staged(source: &VersionSource<'_>, staged: Staged) -> Result<LoadedVersion, LoadError> {
    let fail = |step: &'static str, message: String| LoadError {
        version: source.version,
        step,
        message,
    };
    let Staged {
        file,
        options,
        policy,
        batching_asked,
        image,
        post,
        labels,
        started,
    } = staged;
    let mut model =
        select::load(source.name, &file, &options, policy).map_err(|e| fail("model", e.to_string()))?;
    drop(file);
    let validate = source.sidecar.validate.as_ref();
    let chosen = warmup::choose(
        &model.info,
        validate.and_then(|v| v.warmup.as_ref()),
        image.as_ref(),
        source.dir,
    )
    .map_err(|m| fail("warmup", m))?;
    let outcome = model
        .infer_blocking(chosen.inputs.clone(), None)
        .and_then(|r| r.outputs);
    let warmup = match outcome {
        Ok(outputs) => {
            if let Some(post) = &post {
                // The outputs must have the shape `[output]` expects.
                post.apply(&outputs, None)
                    .map_err(|e| fail("output", e.to_string()))?;
            }
            model = batching_or_not(source, model, &chosen.inputs, batching_asked)
                .map_err(|why| fail("max_batch_size", why))?;
            WarmupReport {
                origin: chosen.origin,
                skipped: None,
            }
        }
        Err(e) if chosen.origin.refuses() => {
            return Err(fail("warmup", format!("on {}: {e}", chosen.origin.describe())))
        }
        Err(e) => {
            let report = WarmupReport {
                origin: chosen.origin,
                skipped: Some(e.to_string()),
            };
            tracing::warn!(model = source.name, version = source.version, warmup = %report.describe(), "serving without a warm-up");
            report
        }
    };
    if let Some(validate) = validate.filter(|v| v.input.is_some()) {
        check_golden(&model, source.dir, validate).map_err(|m| fail("golden", m))?;
    }
    Ok(LoadedVersion {
        version: source.version,
        model,
        file: source.file.to_path_buf(),
        loaded_at: SystemTime::now(),
        load_time: started.elapsed(),
        labels,
        image,
        post,
        warmup: warmup.describe(),
    })
}

/// Keeps batching when the model batches; otherwise refuses it when batching was asked for,
/// or serves the model one request at a time when only the default assumed it batches.
fn batching_or_not(
    source: &VersionSource<'_>,
    model: LoadedModel,
    inputs: &Tensors,
    batching_asked: bool,
) -> Result<LoadedModel, String> {
    if !model.policy().batches() {
        return Ok(model);
    }
    match check_batching(&model, inputs) {
        Ok(()) => Ok(model),
        Err(why) if batching_asked => Err(why),
        Err(why) => {
            tracing::info!(model = source.name, version = source.version, reason = %why, "not batching");
            let unbatched = BatchPolicy {
                max_batch_size: 0,
                ..model.policy().clone()
            };
            Ok(model.with_policy(unbatched))
        }
    }
}

/// The engine settings of a model: `[engine]` with the sidecar's overrides.
pub fn engine_options(base: &EngineOptions, sidecar: &Sidecar) -> EngineOptions {
    let mut options = base.clone();
    if let Some(engine) = sidecar.engine {
        options.choice = engine;
    }
    if let Some(providers) = &sidecar.providers {
        options.providers = providers.clone();
    }
    if let Some(instances) = sidecar.instances {
        options.instances = instances;
    }
    if let Some(gpus) = &sidecar.gpus {
        options.gpus = gpus.clone();
    }
    options
}

/// `max_batch_size` when the sidecar names none: Triton's default for a model that batches.
pub const DEFAULT_MAX_BATCH_SIZE: u64 = 4;

/// How a version batches: the sidecar's `max_batch_size` and `[batching]` (with the CLI's
/// overrides), checked against what the model allows — a model whose first dimension is not
/// symbolic on every input and output cannot batch.
pub fn batch_policy(
    sidecar: &Sidecar,
    overrides: &BatchOverrides,
    info: &ModelInfo,
    options: &EngineOptions,
) -> Result<BatchPolicy, String> {
    let batching = sidecar.batching.clone().unwrap_or_default();
    let max = match overrides.max_batch_size.or(sidecar.max_batch_size) {
        Some(0) => 0,
        Some(n) if !info.batchable() => {
            let fixed = info
                .inputs
                .iter()
                .chain(&info.outputs)
                .find(|s| !s.has_symbolic_batch())
                .map_or(String::new(), |s| format!(": '{}' is {}", s.name, s.describe()));
            return Err(format!(
                "max_batch_size = {n}, but the model's first dimension is not symbolic everywhere{fixed}; this model cannot batch (set max_batch_size = 0)"
            ));
        }
        Some(n) => n,
        None if info.batchable() => DEFAULT_MAX_BATCH_SIZE,
        None => 0,
    };
    let delay = overrides
        .max_queue_delay_us
        .unwrap_or(batching.max_queue_delay_us);
    let bound = QUEUE_PER_INSTANCE * options.total_instances();
    Ok(BatchPolicy {
        max_batch_size: usize::try_from(max).unwrap_or(usize::MAX),
        max_queue_delay: Duration::from_micros(delay),
        preferred: batching.preferred.iter().map(|&p| p as usize).collect(),
        max_queue_size: match batching.max_queue_size {
            0 => bound,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        default_timeout: (batching.default_timeout_us > 0)
            .then(|| Duration::from_micros(batching.default_timeout_us)),
        preserve_ordering: batching.preserve_ordering,
        enforce_max: batching_asked(sidecar, overrides),
    })
}

/// Whether batching was asked for (in the sidecar or on the command line), not defaulted.
fn batching_asked(sidecar: &Sidecar, overrides: &BatchOverrides) -> bool {
    overrides.max_batch_size.or(sidecar.max_batch_size).is_some()
}

/// A batching model must answer a batch of twice the warm-up's rows with outputs of twice
/// the rows (else batches cannot be split back into their requests).
fn check_batching(model: &LoadedModel, inputs: &Tensors) -> Result<(), String> {
    let rows = rows_of(inputs)?;
    if rows * 2 > model.policy().max_batch_size {
        return Ok(());
    }
    let doubled = inputs
        .iter()
        .map(|(name, t)| Ok((name.clone(), Tensor::concat(&[t, t]).map_err(|e| e.to_string())?)))
        .collect::<Result<Tensors, String>>()?;
    let outputs = model
        .infer_blocking(doubled, None)
        .and_then(|r| r.outputs)
        .map_err(|e| {
            format!(
                "a batch of {} rows failed: {e}; set max_batch_size = 0 if the model cannot batch",
                rows * 2
            )
        })?;
    for (name, tensor) in &outputs {
        if tensor.shape().first() != Some(&(rows * 2)) {
            return Err(format!(
                "output '{name}' of a batch of {} rows has shape {:?}: its first dimension is not the batch, so batches cannot be split; set max_batch_size = 0",
                rows * 2,
                tensor.shape()
            ));
        }
    }
    Ok(())
}

/// Checks `<file>.minisig` against the trusted keys.
fn verify_signature(file: &Path, bytes: &[u8], trusted_keys: &[String]) -> Result<(), String> {
    let sig_path = PathBuf::from(format!("{}{SIGNATURE_SUFFIX}", file.display()));
    let text = std::fs::read_to_string(&sig_path).map_err(|e| {
        format!(
            "signatures are required and {} cannot be read: {e}",
            sig_path.display()
        )
    })?;
    let signature = Signature::decode(&text)
        .map_err(|e| format!("{} is not a minisign signature: {e}", sig_path.display()))?;
    let mut last_error = String::from("no trusted key configured");
    for key in trusted_keys {
        let key = PublicKey::from_base64(key.trim())
            .map_err(|e| format!("trusted key {key:?} is not a minisign public key: {e}"))?;
        match key.verify(bytes, &signature, false) {
            Ok(()) => return Ok(()),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(format!(
        "{} does not verify with any trusted key: {last_error}",
        sig_path.display()
    ))
}

/// Runs the golden request and compares every expected output.
fn check_golden(model: &LoadedModel, dir: &Path, validate: &Validate) -> Result<(), String> {
    let read = |p: &Path| -> Result<Vec<u8>, String> {
        let path = dir.join(p);
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (Some(input), Some(expected)) = (&validate.input, &validate.expected) else {
        return Ok(());
    };
    let request: InferRequestBody =
        serde_json::from_slice(&read(input)?).map_err(|e| format!("{}: {e}", input.display()))?;
    let expected_path = expected;
    let expected: InferResponseBody = serde_json::from_value({
        let mut v: serde_json::Value = serde_json::from_slice(&read(expected_path)?)
            .map_err(|e| format!("{}: {e}", expected_path.display()))?;
        v.as_object_mut()
            .map(|o| o.entry("model_name").or_insert_with(|| "golden".into()));
        v
    })
    .map_err(|e| format!("{}: {e}", expected_path.display()))?;
    let inputs = request.tensors().map_err(|e| format!("golden {e}"))?;
    let names: Vec<String> = expected.outputs.iter().map(|o| o.name.clone()).collect();
    let outputs = model
        .infer_blocking(inputs, Some(&names))
        .and_then(|r| r.outputs)
        .map_err(|e| e.to_string())?;
    for ((name, got), want) in outputs.iter().zip(&expected.outputs) {
        let want = want
            .to_tensor()
            .map_err(|e| format!("expected output '{name}': {e}"))?;
        approx_eq(got, &want, validate.rtol, validate.atol)
            .map_err(|why| format!("output '{name}' does not match the golden sample: {why}"))?;
    }
    Ok(())
}
