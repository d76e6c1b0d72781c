//! `onnxd run`: the daemon. At this stage it loads every model of the repository (each in the
//! engine `auto` picks, reporting engine, provider and reason, or the model's error) and
//! serves until SIGINT or SIGTERM; the serving core, protocols and hot reload build on this.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::engine::pool::LoadedModel;
use crate::engine::select;

/// The model file a repository entry serves now: `<dir>/model.onnx`, else the highest numeric
/// version directory's `model.onnx`.
pub fn current_model_file(dir: &Path) -> Option<PathBuf> {
    let single = dir.join("model.onnx");
    if single.is_file() {
        return Some(single);
    }
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u64>().ok()?, e.path())))
        .filter(|(_, p)| p.join("model.onnx").is_file())
        .max_by_key(|(v, _)| *v)
        .map(|(_, p)| p.join("model.onnx"))
}

/// Loads every model directory of the repository; failures are logged and skipped.
pub fn load_repository(config: &Config) -> Vec<(String, LoadedModel)> {
    let options = config.engine_options();
    let Ok(entries) = std::fs::read_dir(&config.repository.path) else {
        tracing::error!(path = %config.repository.path.display(), "model repository is not readable");
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .filter_map(|dir| {
            let name = dir.file_name()?.to_str()?.to_string();
            if name.starts_with('.') {
                return None;
            }
            let Some(file) = current_model_file(&dir) else {
                tracing::warn!(model = %name, "no model.onnx in the model directory");
                return None;
            };
            match select::load_path(&name, &file, &options) {
                Ok(model) => Some((name, model)),
                Err(e) => {
                    tracing::error!(model = %name, error = %e, "model UNAVAILABLE");
                    None
                }
            }
        })
        .collect()
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)?;
    let models = load_repository(&config);
    tracing::info!(models = models.len(), node_id = %config.node_id, "onnxd ready");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopping");
    drop(models);
    Ok(())
}
