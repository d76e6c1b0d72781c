//! The daemon's configuration file (`onnxd.toml`) as `onnxd run` and SIGHUP read it: TOML,
//! the typed settings, and every check (`Config::load`). Input: the file. Seeds: the shipped
//! configs (`config/`, `systemd/`).

fn main() {
    let path = onnxd_fuzz::scratch("config").join("onnxd.toml");
    afl::fuzz!(|data: &[u8]| {
        std::fs::write(&path, data).expect("scratch write");
        if let Ok(config) = onnxd::config::Config::load(&path) {
            let _ = config.engine_options();
        }
    });
}
