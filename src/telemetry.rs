//! Logging: `tracing` to stderr (journald under systemd), filtered by the config's `log`
//! value or `RUST_LOG`. ONNX Runtime's own chatter is held to warnings unless asked for.
//! A closed or full stderr never takes the daemon down: failed log writes are dropped.

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is unset.
pub fn init(default_filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            if default_filter.contains("ort") {
                default_filter.to_string()
            } else {
                format!("{default_filter},ort=warn")
            }
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info,ort=warn")))
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Stderr that reports every write as done. tracing-subscriber answers a failed write by
/// printing to stderr with `eprintln!`, which panics when stderr itself is gone (a closed
/// journald pipe); losing a log line is better than losing the daemon.
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
