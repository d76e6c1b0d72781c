//! `[engine] cpus`: in a running `onnxd run`, the inference thread and ONNX Runtime's
//! intra-op threads run on the listed CPU, every other thread of the process on the CPUs left,
//! the model answers and SIGHUP still reloads; inference threads started again (a shadow's
//! priority, a new batching policy) keep the list; `onnxd bench --cpus` checks it. Needs two
//! CPUs this process may run on (the CI machine has them).

mod common;

use std::time::Duration;

use common::process::Onnxd;
use onnxd::cpus::CpuList;
use onnxd::engine::batch::BatchPolicy;
use onnxd::engine::pool::Priority;
use onnxd::engine::{select, EngineChoice, EngineOptions};

/// The last CPU this process may run on, and the others (at least one).
fn last_and_rest() -> (CpuList, CpuList) {
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
    (engine, rest)
}

/// Each thread of process `pid` (`self` for this one): its name and the CPUs it may run on
/// (`Cpus_allowed_list`).
fn threads(pid: &str) -> Vec<(String, CpuList)> {
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
    let (engine, rest) = last_and_rest();
    let dir = tempfile::tempdir().unwrap();
    common::copy_example_model(&dir.path().join("models/digits"));
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

    let threads = threads(&daemon.pid().to_string());
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
    // thread that runs the session. Not the thread of ONNX Runtime's environment, built before
    // the session (the example's sidecar says `engine = "auto"`, so the first load builds it).
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

    // The main thread now runs on the rest only; the config's check still knows the process's
    // CPUs, so a reload is not refused.
    daemon.signal("HUP");
    daemon.wait_for("SIGHUP: config re-read", Duration::from_secs(20));
}

/// Waits until this process has one thread named `name`, on `cpus`. A new thread names and
/// pins itself once it runs, a moment after its spawn has returned.
fn wait_for_thread_on(name: &str, cpus: &CpuList) {
    let on_cpus = || {
        let found: Vec<CpuList> = threads("self")
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, c)| c)
            .collect();
        found == [cpus.clone()]
    };
    common::wait_until(
        &format!("one thread {name} on CPUs {cpus}"),
        Duration::from_secs(10),
        on_cpus,
    );
}

#[test]
fn inference_threads_started_again_keep_their_cpus() {
    let (engine, _) = last_and_rest();
    let options = EngineOptions {
        choice: EngineChoice::Ort,
        ort_library: Some(common::ort_library()),
        intra_threads: 1,
        cpus: engine.clone(),
        ..EngineOptions::default()
    };
    let model = select::load_path("k", &common::models().join("digits/model.onnx"), &options).unwrap();
    wait_for_thread_on("infer-k-0", &engine);
    // A shadow candidate's threads, at the lowest priority; then a new batching policy.
    let model = model.with_priority(Priority::Background);
    wait_for_thread_on("infer-k-0", &engine);
    let model = model.with_policy(BatchPolicy::unbatched(8));
    wait_for_thread_on("infer-k-0", &engine);
    drop(model);
}

#[test]
fn bench_takes_cpus_it_may_run_on_and_refuses_others() {
    let (engine, _) = last_and_rest();
    let model = common::models().join("digits/model.onnx");
    let bench = |cpus: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_onnxd"))
            .args([
                "bench",
                model.to_str().unwrap(),
                "--count",
                "20",
                "--json",
                "--cpus",
                cpus,
            ])
            .env("ORT_DYLIB_PATH", common::ort_library())
            .output()
            .unwrap()
    };
    let out = bench(&engine.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["requests"], 20, "{report}");
    let out = bench("1023");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--cpus: CPU 1023 is not one this process may run on"),
        "{err}"
    );
}
