//! What model delivery must remember across a crash, in `<state_dir>/delivery/<model>.json`:
//! the deploy in progress (so a `kill -9` during a download resumes it, and one during a
//! shadow is reported failed on the next start) and the last finished deploy (so a retained or
//! redelivered manifest of a deploy that already ended is not run again). Each write is a
//! new file flushed to disk and renamed over the old one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a deploy arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `PUT` + `POST …/commit`.
    Http,
    /// A manifest on `P/models/<m>/deploy` or `F/models/<m>/deploy`.
    Mqtt,
}

/// Where a deploy in progress is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Downloading the model file (resumed after a restart).
    Download,
    /// Loaded beside the current version, receiving copies of requests.
    Shadow,
}

/// A deploy in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Version being deployed.
    pub version: u64,
    /// Expected SHA-256 of the model file.
    pub sha256: String,
    /// Expected size (downloads).
    pub size: Option<u64>,
    /// Where it is downloaded from.
    pub url: Option<String>,
    /// The minisign signature sent with it.
    pub signature: Option<String>,
    /// `immediate` or `shadow`, when the deploy named one.
    pub rollout: Option<super::rollout::Rollout>,
    /// How it arrived.
    pub origin: Origin,
    /// Where it is.
    pub phase: Phase,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
}

/// A finished deploy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    /// Version.
    pub version: u64,
    /// SHA-256 of its model file.
    pub sha256: String,
    /// `promoted`, `rolled_back` or `failed`.
    pub state: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// One model's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// The deploy in progress.
    pub active: Option<Job>,
    /// The last finished deploy.
    pub last: Option<Finished>,
}

/// The records of every model.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal in `dir` (created when first written).
    pub fn new(dir: &Path) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, model: &str) -> PathBuf {
        self.dir.join(format!("{model}.json"))
    }

    /// A model's record (empty when there is none or it cannot be read).
    pub fn read(&self, model: &str) -> Record {
        let path = self.path(model);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "delivery journal unreadable: ignored");
                Record::default()
            }),
            Err(_) => Record::default(),
        }
    }

    /// Replaces a model's record, durably.
    pub fn write(&self, model: &str, record: &Record) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(model);
        let temporary = self.dir.join(format!(".{model}.json.tmp"));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(record).expect("serialisable"))?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        super::staging::sync_dir(&self.dir);
        Ok(())
    }

    /// Changes a model's record in place.
    pub fn update(&self, model: &str, change: impl FnOnce(&mut Record)) -> std::io::Result<()> {
        let mut record = self.read(model);
        change(&mut record);
        self.write(model, &record)
    }

    /// Every model with a record.
    pub fn models(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut models: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        models.sort();
        models
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(&dir.path().join("delivery"));
        assert!(journal.read("m").active.is_none());
        let job = Job {
            version: 2,
            sha256: "ab".into(),
            size: Some(10),
            url: Some("http://x/m.onnx".into()),
            signature: None,
            rollout: None,
            origin: Origin::Mqtt,
            phase: Phase::Download,
            started_ms: 1,
        };
        journal.update("m", |r| r.active = Some(job.clone())).unwrap();
        let reopened = Journal::new(&dir.path().join("delivery"));
        assert_eq!(reopened.read("m").active, Some(job));
        assert_eq!(reopened.models(), vec!["m".to_string()]);
    }
}
