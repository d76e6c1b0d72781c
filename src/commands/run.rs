//! `onnxd run`: the signal loop around the library [`Daemon`]. Signal handlers are installed
//! before the daemon reports ready (a SIGHUP right after READY must reload, not kill); SIGHUP
//! reloads, SIGTERM and SIGINT drain and stop. Debug builds also take SIGUSR2, the watchdog
//! test hook (`service::stall_on`). With `[engine] cpus` set, the process's threads start on
//! the CPUs the engine leaves ([`crate::cpus::reserve`]).

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::daemon::Daemon;

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    // Every thread but the inference threads starts from this one (or from a thread it started).
    crate::cpus::reserve(&config.engine.cpus).map_err(|why| anyhow::anyhow!("engine.cpus: {why}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        #[cfg(debug_assertions)]
        let usr2 = signal(SignalKind::user_defined2())?;
        let mut daemon = Daemon::start(config).await?;
        #[cfg(debug_assertions)]
        tokio::spawn(crate::service::stall_on(usr2, daemon.router().clone()));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = interrupt.recv() => break,
                _ = hup.recv() => {
                    // A refused config is logged by the daemon; the running one stays.
                    let _ = daemon.reload().await;
                }
            }
        }
        daemon.shutdown().await;
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
