//! `onnxd check`: validates the config and loads every model of the repository with all the
//! checks of a reload (signature, engine, warm-up, golden sample), prints a table, and tells
//! the caller through the exit status whether everything is good.

use std::sync::Arc;

use crate::config::Config;
use crate::repository::loader::LoadSettings;
use crate::repository::{Repository, SyncReport};
use crate::serving::Router;

/// Loads every model once and returns one report per model.
pub fn check(config: &Config) -> Vec<SyncReport> {
    let settings = LoadSettings::from_config(config);
    let router = Arc::new(Router::default());
    Repository::new(
        &config.repository.path,
        settings,
        config.repository.reload,
        router,
    )
    .sync_all()
}

/// Whether every model serves with no error.
pub fn all_good(reports: &[SyncReport]) -> bool {
    reports
        .iter()
        .all(|r| r.errors.is_empty() && !r.serving.is_empty())
}

/// The table `onnxd check` prints.
pub fn table(config: &Config, reports: &[SyncReport]) -> String {
    let mut out = format!(
        "config     {}  ok\nrepository {}\n",
        config.file.display(),
        config.repository.path.display()
    );
    out.push_str(&format!(
        "{:<24} {:<8} {:<10} {}\n",
        "MODEL", "STATUS", "VERSIONS", "DETAIL"
    ));
    for r in reports {
        let status = if all_good(std::slice::from_ref(r)) {
            "OK"
        } else {
            "FAILED"
        };
        let versions: Vec<String> = r.serving.iter().map(u64::to_string).collect();
        let detail = if r.errors.is_empty() {
            "-".to_string()
        } else {
            r.errors.join("; ")
        };
        out.push_str(&format!(
            "{:<24} {:<8} {:<10} {}\n",
            r.model,
            status,
            versions.join(","),
            detail
        ));
    }
    if reports.is_empty() {
        out.push_str("(no model directories)\n");
    }
    out
}
