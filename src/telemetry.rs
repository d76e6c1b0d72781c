//! Logging: `tracing` to stderr (journald under systemd), filtered by the config's `log`
//! value or `RUST_LOG`. ONNX Runtime's own chatter is held to warnings unless asked for.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is unset.
pub fn init(default_filter: &str) {
    let filter = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        if default_filter.contains("ort") {
            default_filter.to_string()
        } else {
            format!("{default_filter},ort=warn")
        }
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info,ort=warn")))
        .with_writer(std::io::stderr)
        .try_init();
}
