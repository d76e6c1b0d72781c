//! `ONNXD_<SECTION>__<KEY>` environment overrides (SPEC §2): which variables name a key, and
//! which variable to blame when an override does not parse. A variable that merely starts
//! with `ONNXD_` but names no key (`ONNXD_BIN` set by a wrapper) is a warning, not a failure;
//! `ONNXD_CONFIG` names the file and is not an override.

use std::collections::{BTreeMap, BTreeSet};

use super::file::FileConfig;

/// The environment variable that overrides `key` (`engine.default` → `ONNXD_ENGINE__DEFAULT`).
pub fn var_of(key: &str) -> String {
    format!("ONNXD_{}", key.replace('.', "__").to_uppercase())
}

/// Every key a config can set, as `section.key` or `key`.
fn known_keys() -> BTreeSet<String> {
    let defaults = serde_json::to_value(FileConfig::default()).expect("config serialises");
    let mut keys = BTreeSet::new();
    for (name, value) in defaults.as_object().expect("an object") {
        match value.as_object() {
            Some(section) => keys.extend(section.keys().map(|key| format!("{name}.{key}"))),
            None => {
                keys.insert(name.clone());
            }
        }
    }
    keys
}

/// The `ONNXD_*` variables of `vars` that name a key (variable → value), and a warning for
/// each one that does not.
pub fn overrides(vars: impl Iterator<Item = (String, String)>) -> (BTreeMap<String, String>, Vec<String>) {
    let known = known_keys();
    let mut overrides = BTreeMap::new();
    let mut warnings = Vec::new();
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix("ONNXD_") else {
            continue;
        };
        if var == "ONNXD_CONFIG" {
            continue;
        }
        let key = rest.to_lowercase().replace("__", ".");
        if known.contains(&key) {
            overrides.insert(var, value);
        } else {
            warnings.push(format!(
                "environment variable {var} names no config key (ONNXD_<SECTION>__<KEY>, e.g. ONNXD_HTTP__LISTEN); ignored"
            ));
        }
    }
    (overrides, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_map_to_keys_and_strays_are_warnings() {
        let vars = [
            ("ONNXD_HTTP__LISTEN", "127.0.0.1:1"),
            ("ONNXD_NODE_ID", "n"),
            ("ONNXD_CONFIG", "/etc/x.toml"),
            ("ONNXD_BIN", "/usr/bin/onnxd"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let (applied, warnings) = overrides(vars.into_iter());
        assert_eq!(
            applied.keys().collect::<Vec<_>>(),
            ["ONNXD_HTTP__LISTEN", "ONNXD_NODE_ID"]
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("ONNXD_BIN"), "{warnings:?}");
        assert_eq!(var_of("engine.default"), "ONNXD_ENGINE__DEFAULT");
    }
}
