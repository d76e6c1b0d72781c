//! The repository's layout on disk (SPEC §4): which directories are models, which versions
//! each has, and the files that belong to a version. Names starting with `.` or ending in
//! `.tmp`, `.part`, `.partial` or `~` are ignored, so writers can stage files beside the
//! real ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// File name of a model inside a version directory (or the model directory).
pub const MODEL_FILE: &str = "model.onnx";
/// Extension of a minisign signature next to a model file.
pub const SIGNATURE_SUFFIX: &str = ".minisig";
/// Optional labels file of a model directory.
pub const LABELS_FILE: &str = "labels.txt";

/// Whether a directory entry is ignored (staging and hidden files).
pub fn is_ignored(name: &str) -> bool {
    name.starts_with('.')
        || [".tmp", ".part", ".partial", "~"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Whether a name is a valid model name (`[A-Za-z0-9_.-]+`, not ignored).
pub fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && !is_ignored(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The model directories under `root`, by name, sorted.
pub fn model_names(root: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_model_name(n))
        .collect();
    names.sort();
    Ok(names)
}

/// The versions present in a model directory: numeric subdirectories holding `model.onnx`,
/// and a `model.onnx` directly inside as version 1 (unless `1/` exists).
pub fn versions(dir: &Path) -> BTreeMap<u64, PathBuf> {
    let mut found = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(|e| e.ok()) {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(version) = name.parse::<u64>() else {
                continue;
            };
            let file = entry.path().join(MODEL_FILE);
            if !is_ignored(&name) && file.is_file() {
                found.insert(version, file);
            }
        }
    }
    let single = dir.join(MODEL_FILE);
    if single.is_file() {
        found.entry(1).or_insert(single);
    }
    found
}

/// Reads `labels.txt` (one label per line) if the model directory has one.
pub fn labels(dir: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(dir.join(LABELS_FILE)).ok()?;
    Some(text.lines().map(|l| l.trim().to_string()).collect())
}

/// What a version's files look like now: sizes and modification times of the model, its
/// signature, the sidecar and the labels. A failed version is retried only when this changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<(u64, SystemTime)>>);

impl Fingerprint {
    /// Reads the fingerprint of `model_file` in model directory `dir`.
    pub fn of(dir: &Path, model_file: &Path) -> Fingerprint {
        let stat = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
        };
        let signature = PathBuf::from(format!("{}{SIGNATURE_SUFFIX}", model_file.display()));
        Fingerprint(vec![
            stat(model_file),
            stat(&signature),
            stat(&dir.join(super::sidecar::FILE_NAME)),
            stat(&dir.join(LABELS_FILE)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_and_valid_names() {
        for name in [".hidden", "a.tmp", "b.part", "c.partial", "d~", ""] {
            assert!(!is_model_name(name), "{name}");
        }
        for name in ["resnet", "yolo_v8.n", "A-1"] {
            assert!(is_model_name(name), "{name}");
        }
        assert!(!is_model_name("sp ace"));
    }

    #[test]
    fn versions_from_numeric_dirs_and_single_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        for v in ["1", "3", "x", "4.tmp"] {
            std::fs::create_dir_all(m.join(v)).unwrap();
            std::fs::write(m.join(v).join(MODEL_FILE), b"x").unwrap();
        }
        std::fs::create_dir_all(m.join("7")).unwrap(); // no model file: not a version
        assert_eq!(versions(m).keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        let single = tempfile::tempdir().unwrap();
        std::fs::write(single.path().join(MODEL_FILE), b"x").unwrap();
        assert_eq!(
            versions(single.path()).keys().copied().collect::<Vec<_>>(),
            vec![1]
        );
    }
}
