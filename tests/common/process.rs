//! The one launcher of `onnxd run` as a separate process, for the tests that need one
//! (signals, sd_notify, `kill -9`, MQTT crash recovery): it captures the log, waits for
//! "onnxd ready", sends signals, and kills the process when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sends a signal (`TERM`, `HUP`, ...) to a process.
pub fn signal(pid: u32, name: &str) {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
}

/// An `onnxd run -c CONFIG` process.
pub struct Onnxd {
    child: Option<Child>,
    config: PathBuf,
    env: Vec<(String, String)>,
    log: Arc<Mutex<String>>,
    lines: Option<Receiver<String>>,
}

impl Onnxd {
    /// Starts the daemon on `config` with extra environment `env`, without waiting.
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> Onnxd {
        let mut daemon = Onnxd {
            child: None,
            config: config.to_path_buf(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log: Arc::default(),
            lines: None,
        };
        daemon.launch();
        daemon
    }

    /// Starts the daemon and waits (up to 60 s) until it logged "onnxd ready".
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Onnxd {
        let daemon = Onnxd::spawn(config, env);
        daemon.wait_for("onnxd ready", Duration::from_secs(60));
        daemon
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let mut command = Command::new(env!("CARGO_BIN_EXE_onnxd"));
        command
            .args(["run", "-c"])
            .arg(&self.config)
            .env("ORT_DYLIB_PATH", super::ort_library())
            .env("RUST_LOG", "info,onnxd=debug")
            .stderr(Stdio::piped());
        // gRPC is on by default (127.0.0.1:8001): a config that does not ask for it gets it off,
        // so tests running side by side do not race for the port.
        let text = std::fs::read_to_string(&self.config).unwrap_or_default();
        if !text.contains("[grpc]") {
            command.env("ONNXD_GRPC__LISTEN", "");
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (log, (lines_tx, lines)) = (self.log.clone(), channel());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
                let _ = lines_tx.send(line);
            }
        });
        self.child = Some(child);
        self.lines = Some(lines);
    }

    /// Waits until a log line since the last wait contains `needle`; returns those lines.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let lines = self.lines.as_ref().expect("daemon started");
        let until = Instant::now() + timeout;
        let mut seen = String::new();
        while let Ok(line) = lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return seen;
            }
        }
        panic!("no '{needle}' in the daemon's log:\n{}", self.log());
    }

    /// Starts the (stopped) daemon again on the same config and waits until it is ready.
    pub fn restart(&mut self) {
        self.launch();
        self.wait_for("onnxd ready", Duration::from_secs(60));
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Sends a signal (e.g. `HUP`) to the running daemon.
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; returns whether it exited with status 0.
    pub fn terminate(&mut self) -> bool {
        self.signal("TERM");
        self.wait_success()
    }

    /// Waits for the daemon (signalled elsewhere) to exit; returns whether with status 0.
    pub fn wait_success(&mut self) -> bool {
        let mut child = self.child.take().expect("daemon running");
        child.wait().unwrap().success()
    }

    /// Its config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Onnxd {
    fn drop(&mut self) {
        self.kill();
    }
}
