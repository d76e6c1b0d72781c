//! `[engine] cpus` in a running `onnxd run`: the inference thread and ONNX Runtime's intra-op
//! threads run on the listed CPU, every other thread of the process on the CPUs left, and the
//! model answers. Needs two CPUs this process may run on (the CI machine has them).

mod common;

use common::process::Onnxd;
use onnxd::cpus::CpuList;

/// Each thread of `pid`: its name and the CPUs it may run on (`Cpus_allowed_list`).
fn threads(pid: u32) -> Vec<(String, CpuList)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let allowed = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list in /proc/PID/task/TID/status");
        found.push((name.trim().to_string(), allowed.trim().parse().unwrap()));
    }
    found
}

#[test]
fn inference_runs_on_the_engine_cpus_and_every_other_thread_on_the_rest() {
    let allowed = CpuList::of_this_thread().unwrap();
    let [.., last] = allowed.cpus() else {
        unreachable!()
    };
    let engine: CpuList = last.to_string().parse().unwrap();
    let rest = allowed.without(&engine);
    assert!(
        !rest.is_empty(),
        "this test needs two CPUs this process may run on; it has {allowed}"
    );
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models/digits/1");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(
        common::models().join("digits/model.onnx"),
        repo.join("model.onnx"),
    )
    .unwrap();
    let port = common::free_port();
    let config = dir.path().join("onnxd.toml");
    std::fs::write(
        &config,
        format!("node_id = \"cpus\"\nstate_dir = \"state\"\n[repository]\npath = \"models\"\n[engine]\ndefault = \"ort\"\nintra_threads = 3\ncpus = \"{engine}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[mqtt]\nurl = \"\"\n"),
    )
    .unwrap();
    let daemon = Onnxd::start(&config, &[]);
    let request = std::fs::read(common::models().join("digits/sample-request.json")).unwrap();
    let response = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/v2/models/digits/infer"))
        .body(request)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "{}", daemon.log());

    let threads = threads(daemon.pid());
    let on = |cpus: &CpuList| -> Vec<&str> {
        threads
            .iter()
            .filter(|(_, c)| c == cpus)
            .map(|(name, _)| name.as_str())
            .collect()
    };
    let (on_engine, on_rest) = (on(&engine), on(&rest));
    assert_eq!(
        on_engine.len() + on_rest.len(),
        threads.len(),
        "threads elsewhere: {threads:?}"
    );
    // The inference thread, and ONNX Runtime's pool of 3 intra-op threads: 2 besides the
    // thread that runs the session.
    assert_eq!(
        on_engine.iter().filter(|name| **name == "infer-digits-0").count(),
        1,
        "{threads:?}"
    );
    assert_eq!(on_engine.len(), 3, "{threads:?}");
    // The main thread, the tokio workers, ...
    assert!(on_rest.contains(&"onnxd"), "{threads:?}");
    assert!(
        on_rest.iter().any(|name| name.starts_with("tokio")),
        "{threads:?}"
    );
}
