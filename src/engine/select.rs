//! Engine selection: `auto` tries ONNX Runtime first (when its library is present) and falls
//! back to tract, and a model that fails in one engine is tried in the other; `ort` and
//! `tract` are honoured as given. The chosen engine, the provider and the reason — including
//! what failed before — come back to the caller and are logged, never silent.

use std::path::Path;

use super::batch::BatchPolicy;
use super::pool::LoadedModel;
use super::{ort, tract, EngineChoice, EngineError, EngineKind, EngineOptions, LoadedSessions, ModelFile};

/// Default bound of a model's request queue, per instance.
pub const QUEUE_PER_INSTANCE: usize = 64;

/// Reads a model file and loads it with the configured engine choice, one request per
/// execution.
pub fn load_path(name: &str, path: &Path, options: &EngineOptions) -> Result<LoadedModel, EngineError> {
    let model = ModelFile::open(path)?;
    let policy = BatchPolicy::unbatched(QUEUE_PER_INSTANCE * options.total_instances());
    load(name, &model, options, policy)
}

/// Loads a decoded model with the configured engine choice and starts its instances, taking
/// requests as `policy` says.
pub fn load(
    name: &str,
    model: &ModelFile,
    options: &EngineOptions,
    policy: BatchPolicy,
) -> Result<LoadedModel, EngineError> {
    let (loaded, reason) = choose(model, options)?;
    tracing::info!(
        model = name,
        engine = %loaded.engine,
        provider = %loaded.provider,
        reason = %reason,
        "engine selected"
    );
    Ok(LoadedModel::start(
        name,
        model.info.clone(),
        loaded,
        reason,
        policy,
        options.cpus.clone(),
    ))
}

/// The checks of an engine choice that load nothing: the model's values are expressible,
/// the engine asked for exists here (ONNX Runtime's library is found for `ort`; tract has no
/// BF16). `auto` only needs one of them, and tract is always there.
pub fn precheck(model: &ModelFile, options: &EngineOptions) -> Result<(), EngineError> {
    model.info.check_expressible()?;
    match options.choice {
        EngineChoice::Ort => ort::runtime(options.ort_library.as_deref()).map(|_| ()),
        EngineChoice::Tract => tract::precheck(model),
        EngineChoice::Auto => Ok(()),
    }
}

fn load_in(
    kind: EngineKind,
    model: &ModelFile,
    options: &EngineOptions,
) -> Result<LoadedSessions, EngineError> {
    match kind {
        EngineKind::Ort => ort::load(model, options),
        EngineKind::Tract => tract::load(model, options),
    }
}

fn choose(model: &ModelFile, options: &EngineOptions) -> Result<(LoadedSessions, String), EngineError> {
    model.info.check_expressible()?;
    let order = match options.choice {
        EngineChoice::Ort => {
            return load_in(EngineKind::Ort, model, options).map(|l| (l, "engine = ort".to_string()))
        }
        EngineChoice::Tract => {
            return load_in(EngineKind::Tract, model, options).map(|l| (l, "engine = tract".to_string()))
        }
        EngineChoice::Auto => [EngineKind::Ort, EngineKind::Tract],
    };
    let mut failures: Vec<String> = Vec::new();
    for kind in order {
        match load_in(kind, model, options) {
            Ok(loaded) => {
                let reason = if failures.is_empty() {
                    format!("auto: {kind} loaded the model")
                } else {
                    format!("auto: {kind} after {}", failures.join("; "))
                };
                return Ok((loaded, reason));
            }
            Err(e) => {
                tracing::warn!(model = %model.path.display(), engine = %kind, error = %e, "engine could not load the model");
                failures.push(e.to_string());
            }
        }
    }
    Err(EngineError::NoEngine(failures.join("; ")))
}
