use super::*;

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("onnxd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The error of loading `text` as the config.
fn refused(dir: &Path, text: &str) -> String {
    Config::load(&write(dir, text)).unwrap_err().to_string()
}

#[test]
fn relative_paths_resolve_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "node_id = \"n1\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n",
    );
    let config = Config::load(&path).unwrap();
    assert_eq!(config.repository.path, dir.path().join("models"));
    assert_eq!(config.state_dir, dir.path().join("state"));
    assert_eq!(config.http.listen, Some("127.0.0.1:8000".parse().unwrap()));
    assert_eq!(config.grpc.listen, Some("127.0.0.1:8001".parse().unwrap()));
}

#[test]
fn the_shipped_configs_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = Config::load(&root.join("config/onnxd.toml")).unwrap();
    assert_eq!(example.repository.path, root.join("config/../models"));
    // The service's /etc/onnxd/onnxd.toml: absolute paths the unit's sandbox allows.
    let service = Config::load(&root.join("systemd/onnxd.toml")).unwrap();
    assert_eq!(service.state_dir, Path::new("/var/lib/onnxd"));
    assert_eq!(service.repository.path, Path::new("/var/lib/onnxd/models"));
    assert!(service.mqtt.is_none());
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let err = refused(dir.path(), "[engine]\nprovidres = [\"cpu\"]\n");
    assert!(err.contains("providres"), "{err}");
    let err = refused(dir.path(), "[engine]\ndefault = \"gpu\"\n");
    assert!(
        err.contains("gpu") && err.contains("expected one of \"auto\", \"ort\", \"tract\""),
        "{err}"
    );
    let err = refused(dir.path(), "node_id = \"a/b\"\n");
    assert!(err.contains("node_id"), "{err}");
    let err = refused(dir.path(), "[http]\nlisten = \"nowhere\"\n");
    assert!(err.contains("http.listen"), "{err}");
    let err = refused(dir.path(), "[grpc]\nlisten = \"localhost\"\n");
    assert!(
        err.contains("grpc.listen") && err.contains("127.0.0.1:8001"),
        "{err}"
    );
    let path = write(dir.path(), "[grpc]\nlisten = \"\"\n");
    assert_eq!(Config::load(&path).unwrap().grpc.listen, None);
    let err = refused(dir.path(), "[mqtt]\nurl = \"tcp://127.0.0.1\"\n");
    assert!(err.contains("mqtt.url"), "{err}");
}

#[test]
fn engine_cpus_are_a_cpu_list_this_process_may_run_on() {
    let dir = tempfile::tempdir().unwrap();
    let first = CpuList::of_this_thread().unwrap().cpus()[0];
    let path = write(dir.path(), &format!("[engine]\ncpus = \"{first}\"\n"));
    let config = Config::load(&path).unwrap();
    assert_eq!(config.engine_options().cpus.cpus(), &[first]);
    let path = write(dir.path(), "");
    assert!(Config::load(&path).unwrap().engine_options().cpus.is_empty());
    let err = refused(dir.path(), "[engine]\ncpus = \"1023\"\n");
    assert!(
        err.contains("engine.cpus") && err.contains("CPU 1023 is not one this process may run on"),
        "{err}"
    );
    let err = refused(dir.path(), "[engine]\ncpus = \"3-1\"\n");
    assert!(err.contains("cpus") && err.contains("runs backwards"), "{err}");
}

#[test]
fn secret_and_certificate_files_are_read_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[mqtt]\nurl = \"mqtt://127.0.0.1\"\nusername = \"u\"\npassword_file = \"missing.pw\"\n",
    );
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("mqtt.password_file") && err.contains("missing.pw"),
        "{err}"
    );
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let path = write(
        dir.path(),
        "[mqtt]\nurl = \"mqtts://broker.example\"\nusername = \"u\"\npassword_file = \"pw\"\n",
    );
    let mqtt = Config::load(&path).unwrap().mqtt.unwrap();
    assert_eq!(
        mqtt.broker,
        Broker {
            host: "broker.example".into(),
            port: 8883,
            tls: true
        }
    );
    let (user, password) = mqtt.credentials.unwrap();
    assert_eq!((user.as_str(), password.expose()), ("u", "s3cret"));
    assert_eq!(format!("{password:?}"), "Secret(***)");
    std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
    let err = refused(dir.path(), "[mqtt]\nurl = \"mqtts://h\"\nca_file = \"ca.pem\"\n");
    assert!(err.contains("mqtt.ca_file"), "{err}");
    let err = refused(dir.path(), "[http]\ntoken_file = \"nope\"\n");
    assert!(err.contains("http.token_file"), "{err}");
    let err = refused(dir.path(), "[http]\ntls_cert = \"c.pem\"\n");
    assert!(
        err.contains("http.tls_cert") && err.contains("set together"),
        "{err}"
    );
}

#[test]
fn broker_urls_parse() {
    let b = |url: &str| broker(url).map(|b| (b.host, b.port, b.tls));
    assert_eq!(
        b("mqtt://127.0.0.1:1884"),
        Some(("127.0.0.1".into(), 1884, false))
    );
    assert_eq!(b("mqtts://broker"), Some(("broker".into(), 8883, true)));
    assert_eq!(b("mqtt://broker/"), Some(("broker".into(), 1883, false)));
    assert_eq!(b("mqtt://[::1]:9"), Some(("::1".into(), 9, false)));
    assert_eq!(b("mqtt://host:x"), None);
    assert_eq!(b("mqtt://"), None);
    assert_eq!(b("tcp://host"), None);
}

#[test]
fn homeassistant_defaults_to_off_and_its_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&write(dir.path(), "node_id = \"n\"\n")).unwrap();
    assert_eq!(config.homeassistant, HomeAssistantConfig::default());
    assert!(!config.homeassistant.enabled);
    assert_eq!(config.homeassistant.discovery_prefix, "homeassistant");
    assert!(config.homeassistant.labels.is_empty());
    let mqtt = "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";
    let text = format!("{mqtt}[homeassistant]\nenabled = true\ndiscovery_prefix = \"ha/x\"\nlabels = [\"person\", \"car\"]\n");
    let config = Config::load(&write(dir.path(), &text)).unwrap();
    assert!(config.homeassistant.enabled);
    assert_eq!(config.homeassistant.discovery_prefix, "ha/x");
    assert_eq!(config.homeassistant.labels, ["person", "car"]);
    let refused = |text: &str, key: &str, says: &str| {
        let err = Config::load(&write(dir.path(), text)).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(says), "{err}");
    };
    refused(
        "[mqtt]\nurl = \"\"\n[homeassistant]\nenabled = true\n",
        "homeassistant.enabled",
        "[mqtt] url",
    );
    refused(
        &format!("{mqtt}[homeassistant]\ndiscovery_prefix = \"home/+\"\n"),
        "homeassistant.discovery_prefix",
        "wildcards",
    );
    refused(
        &format!("{mqtt}[homeassistant]\ndiscovery_prefix = \"/ha/\"\n"),
        "homeassistant.discovery_prefix",
        "leading or trailing",
    );
    refused(
        &format!("{mqtt}[homeassistant]\nlabels = [\"a\", \" \"]\n"),
        "homeassistant.labels[1]",
        "empty",
    );
    refused("[homeassistant]\nenable = true\n", "enable", "unknown field");
}

#[test]
fn camera_names_may_hold_spaces_and_slashes_but_not_mqtt_wildcards() {
    let dir = tempfile::tempdir().unwrap();
    let camera =
        |name: &str| format!("[[camera]]\nname = \"{name}\"\nsource = \"file:///x/*.jpg\"\nmodel = \"m\"\n");
    let config = Config::load(&write(dir.path(), &(camera("front door") + &camera("yard/gate")))).unwrap();
    assert_eq!(config.camera[0].name, "front door");
    assert_eq!(config.camera[1].name, "yard/gate");
    for (name, says) in [("door+1", "wildcards"), ("all#", "wildcards"), (" ", "empty")] {
        let err = Config::load(&write(dir.path(), &camera(name)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("camera[0].name") && err.contains(says),
            "{name}: {err}"
        );
    }
}
