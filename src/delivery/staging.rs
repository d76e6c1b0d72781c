//! The staging area of model delivery, inside the repository so that installing is a rename
//! on one filesystem: `<repository>/.onnxd-staging/` (a name the repository ignores). A
//! delivered version is assembled there as a model directory of its own,
//! `.onnxd-staging/<model>.<version>/`:
//!
//! ```text
//! <version>/model.onnx(.part)     the model file (`.part` while it is being written)
//! <version>/model.onnx.minisig    its signature, when sent
//! model.toml, labels.txt          when sent; otherwise links to the model directory's own
//! golden/ …                       links to the rest of the model directory (golden samples)
//! ```
//!
//! so the candidate is loaded with exactly the files it will have once installed. Installing
//! renames the version directory into `<repository>/<model>/` (or the whole staged directory,
//! for a new model) and the sent `model.toml`/`labels.txt` over the model's; nothing else is
//! touched, and a version directory appears in the repository only whole. Removing a version
//! renames it into the staging area first, then deletes it. What a crash leaves in the staging
//! area is removed on the next start, except the downloads being resumed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::repository::layout::{self, MODEL_FILE, SIGNATURE_SUFFIX};

/// The staging directory's name inside the repository.
pub const STAGING_DIR: &str = ".onnxd-staging";
/// Files that may accompany a version: the model's sidecar, labels and the signature.
pub const EXTRA_FILES: [&str; 3] = ["model.toml", "labels.txt", "model.onnx.minisig"];
/// Model-level files (shared by every version) among [`EXTRA_FILES`].
const MODEL_LEVEL: [&str; 2] = ["model.toml", "labels.txt"];

/// The staging area of one repository.
#[derive(Clone, Debug)]
pub struct Staging {
    repository: PathBuf,
    root: PathBuf,
}

impl Staging {
    /// The staging area of `repository`.
    pub fn new(repository: &Path) -> Staging {
        Staging {
            repository: repository.to_path_buf(),
            root: repository.join(STAGING_DIR),
        }
    }

    /// The model directory in the repository.
    pub fn model_dir(&self, model: &str) -> PathBuf {
        self.repository.join(model)
    }

    /// The installed version directory.
    pub fn installed(&self, model: &str, version: u64) -> PathBuf {
        self.model_dir(model).join(version.to_string())
    }

    /// The staged model directory of a version.
    pub fn dir(&self, model: &str, version: u64) -> PathBuf {
        self.root.join(format!("{model}.{version}"))
    }

    /// The staged model file.
    pub fn model_file(&self, model: &str, version: u64) -> PathBuf {
        self.dir(model, version)
            .join(version.to_string())
            .join(MODEL_FILE)
    }

    /// The model file while it is written.
    pub fn part_file(&self, model: &str, version: u64) -> PathBuf {
        self.dir(model, version)
            .join(version.to_string())
            .join(format!("{MODEL_FILE}.part"))
    }

    /// Creates the staged version directory.
    pub fn prepare(&self, model: &str, version: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir(model, version).join(version.to_string()))
    }

    /// Whether a version has been staged (anything written for it).
    pub fn exists(&self, model: &str, version: u64) -> bool {
        self.dir(model, version).exists()
    }

    /// Writes an accompanying file (one of [`EXTRA_FILES`]) of a staged version.
    pub fn write_extra(&self, model: &str, version: u64, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.prepare(model, version)?;
        let path = self.extra_path(model, version, name);
        write_synced(&path, bytes)
    }

    fn extra_path(&self, model: &str, version: u64, name: &str) -> PathBuf {
        let dir = self.dir(model, version);
        if MODEL_LEVEL.contains(&name) {
            dir.join(name)
        } else {
            dir.join(version.to_string()).join(name)
        }
    }

    /// Links what the staged version did not bring from the model directory (sidecar, labels,
    /// golden samples …), so that the staged directory loads as the model will once installed.
    pub fn link_model_files(&self, model: &str, version: u64) -> std::io::Result<()> {
        let staged = self.dir(model, version);
        let Ok(entries) = std::fs::read_dir(self.model_dir(model)) else {
            return Ok(()); // a new model: nothing to link
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(text) = name.to_str() else { continue };
            let skip = layout::is_ignored(text)
                || text.parse::<u64>().is_ok()
                || text == MODEL_FILE
                || text == format!("{MODEL_FILE}{SIGNATURE_SUFFIX}");
            let link = staged.join(&name);
            if skip || link.symlink_metadata().is_ok() {
                continue;
            }
            std::os::unix::fs::symlink(entry.path().canonicalize()?, &link)?;
        }
        Ok(())
    }

    /// Moves a staged version into the repository; returns the installed model file. The
    /// version directory must not exist there yet.
    pub fn install(&self, model: &str, version: u64) -> std::io::Result<PathBuf> {
        let staged = self.dir(model, version);
        let model_dir = self.model_dir(model);
        let target = self.installed(model, version);
        if target.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists", target.display()),
            ));
        }
        if !model_dir.exists() {
            remove_links(&staged)?;
            std::fs::rename(&staged, &model_dir)?;
        } else {
            std::fs::rename(staged.join(version.to_string()), &target)?;
            for name in MODEL_LEVEL {
                let sent = staged.join(name);
                if sent.symlink_metadata().is_ok_and(|m| m.is_file()) {
                    std::fs::rename(&sent, model_dir.join(name))?;
                }
            }
            std::fs::remove_dir_all(&staged)?;
        }
        sync_dir(&model_dir);
        sync_dir(&self.repository);
        Ok(target.join(MODEL_FILE))
    }

    /// Removes a staged version (a refusal, a roll-back, a cancelled upload).
    pub fn remove(&self, model: &str, version: u64) {
        let dir = self.dir(model, version);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove a staged version");
            }
        }
    }

    /// Takes an installed version out of the repository in one rename, then deletes it.
    pub fn discard(&self, model: &str, version: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let trash = self
            .root
            .join(format!("removed-{model}.{version}-{}", crate::clock::now_ms()));
        std::fs::rename(self.installed(model, version), &trash)?;
        sync_dir(&self.model_dir(model));
        std::fs::remove_dir_all(&trash)
    }

    /// Removes everything in the staging area but the staged versions in `keep`.
    pub fn clean(&self, keep: &[(String, u64)]) {
        let keep: Vec<PathBuf> = keep.iter().map(|(m, v)| self.dir(m, *v)).collect();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if keep.contains(&path) {
                continue;
            }
            tracing::info!(path = %path.display(), "removing what an interrupted delivery left");
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove");
            }
        }
    }

    /// The numbered version directories of a model on disk, highest first.
    pub fn versions_on_disk(&self, model: &str) -> Vec<u64> {
        let dir = self.model_dir(model);
        let mut versions: Vec<u64> = layout::versions(&dir)
            .into_iter()
            .filter(|(_, file)| file.parent() != Some(dir.as_path()))
            .map(|(v, _)| v)
            .collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions
    }
}

/// Removes the links of a staged directory (they point into the model directory).
fn remove_links(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
        if entry.file_type()?.is_symlink() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Writes a file and flushes it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Flushes a directory's entries (renames) to disk; best effort.
pub fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// The SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_version_installs_whole_and_links_are_left_behind() {
        let repo = tempfile::tempdir().unwrap();
        let staging = Staging::new(repo.path());
        let model = repo.path().join("m");
        std::fs::create_dir_all(model.join("1")).unwrap();
        std::fs::write(model.join("1/model.onnx"), b"v1").unwrap();
        std::fs::write(model.join("labels.txt"), b"a\nb\n").unwrap();
        std::fs::create_dir_all(model.join("golden")).unwrap();
        staging.prepare("m", 2).unwrap();
        std::fs::write(staging.model_file("m", 2), b"v2").unwrap();
        staging
            .write_extra("m", 2, "model.toml", b"instances = 1\n")
            .unwrap();
        staging.link_model_files("m", 2).unwrap();
        let staged = staging.dir("m", 2);
        assert!(staged.join("labels.txt").symlink_metadata().unwrap().is_symlink());
        assert!(staged.join("golden").is_dir());
        assert!(!staged.join("1").exists(), "versions are not linked");
        let file = staging.install("m", 2).unwrap();
        assert_eq!(file, model.join("2/model.onnx"));
        assert_eq!(std::fs::read(&file).unwrap(), b"v2");
        assert_eq!(
            std::fs::read(model.join("model.toml")).unwrap(),
            b"instances = 1\n"
        );
        assert!(!model.join("labels.txt").symlink_metadata().unwrap().is_symlink());
        assert!(!staged.exists());
        assert_eq!(staging.versions_on_disk("m"), vec![2, 1]);
        staging.discard("m", 2).unwrap();
        assert_eq!(staging.versions_on_disk("m"), vec![1]);
    }

    #[test]
    fn a_new_model_is_installed_as_a_whole_directory() {
        let repo = tempfile::tempdir().unwrap();
        let staging = Staging::new(repo.path());
        staging.prepare("new", 3).unwrap();
        std::fs::write(staging.model_file("new", 3), b"x").unwrap();
        staging.link_model_files("new", 3).unwrap();
        staging.install("new", 3).unwrap();
        assert!(repo.path().join("new/3/model.onnx").is_file());
        assert_eq!(
            sha256_file(&repo.path().join("new/3/model.onnx")).unwrap().len(),
            64
        );
        staging.prepare("other", 1).unwrap();
        staging.clean(&[]);
        assert!(!staging.dir("other", 1).exists());
    }
}
