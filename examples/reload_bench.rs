//! Hot-reload benchmarks recorded in BENCHMARKS.md (run through `scripts/bench-reload`):
//!
//! - `latency MODEL.onnx SECONDS`: a steady closed-loop request stream against a repository
//!   served by the real watch; p50/p99 for SECONDS without swaps, then for SECONDS while a new
//!   version lands every 200 ms, interleaved over three rounds; prints the p99 ratio.
//! - `memory MODEL.onnx CYCLES ENGINE`: reloads the model CYCLES times (file rewritten, synced,
//!   one request) and prints the process RSS every 50 cycles.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onnxd::config::ReloadMode;
use onnxd::engine::{EngineChoice, EngineOptions};
use onnxd::repository::loader::LoadSettings;
use onnxd::repository::watch::{RepositoryThread, Timing};
use onnxd::repository::Repository;
use onnxd::serving::{InferRequest, Router};

fn settings(choice: EngineChoice) -> LoadSettings {
    LoadSettings {
        engine: EngineOptions {
            choice,
            intra_threads: 1,
            ..EngineOptions::default()
        },
        require_signatures: false,
        trusted_keys: Vec::new(),
        force_engine: None,
        batching: Default::default(),
    }
}

fn put_version(model_dir: &Path, version: u64, source: &Path) {
    let staging = model_dir.join(format!("{version}.tmp"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy(source, staging.join("model.onnx")).unwrap();
    std::fs::rename(&staging, model_dir.join(version.to_string())).unwrap();
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn latency(model: &Path, seconds: f64) {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("m");
    std::fs::create_dir_all(&model_dir).unwrap();
    put_version(&model_dir, 1, model);
    let router = Arc::new(Router::default());
    let mut repo = Repository::new(
        dir.path(),
        settings(EngineChoice::Auto),
        ReloadMode::Beside,
        router.clone(),
    );
    repo.sync_all();
    let info = router.handle("m").unwrap().pick(None).unwrap().model.info.clone();
    let inputs = info.unit_inputs().unwrap();
    let _thread = RepositoryThread::start(
        repo,
        dir.path(),
        true,
        Timing {
            settle: Duration::from_millis(50),
            poll: None,
        },
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut next_version = 2;
    let mut measure = |swapping: bool| -> Vec<f64> {
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = swapping.then(|| {
            let (stop, model_dir, model) = (stop.clone(), model_dir.clone(), model.to_path_buf());
            let first = next_version;
            next_version += 1000;
            std::thread::spawn(move || {
                let mut v = first;
                while !stop.load(Ordering::Relaxed) {
                    put_version(&model_dir, v, &model);
                    v += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                v - first
            })
        });
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let mut latencies = Vec::new();
        while Instant::now() < until {
            let request = InferRequest {
                model: "m".into(),
                inputs: inputs.clone(),
                ..Default::default()
            };
            let t0 = Instant::now();
            runtime
                .block_on(router.infer(request))
                .expect("no request may fail");
            latencies.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(s) = swapper {
            eprintln!("  {} versions landed", s.join().unwrap());
        }
        latencies.sort_by(f64::total_cmp);
        latencies
    };
    println!("| round | p50 steady µs | p99 steady µs | p50 swapping µs | p99 swapping µs | p99 ratio |");
    println!("|---|---|---|---|---|---|");
    for round in 1..=3 {
        let steady = measure(false);
        let swapping = measure(true);
        let (p99s, p99w) = (percentile(&steady, 0.99), percentile(&swapping, 0.99));
        println!(
            "| {round} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            percentile(&steady, 0.5),
            p99s,
            percentile(&swapping, 0.5),
            p99w,
            p99w / p99s
        );
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

fn memory(model: &Path, cycles: u64, choice: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("m/1");
    std::fs::create_dir_all(&model_dir).unwrap();
    let router = Arc::new(Router::default());
    let mut repo = Repository::new(dir.path(), settings(choice), ReloadMode::Beside, router.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| engine | cycle | RSS MiB |");
    println!("|---|---|---|");
    for cycle in 1..=cycles {
        std::fs::copy(model, model_dir.join("model.onnx")).unwrap();
        let report = repo.sync_model("m");
        assert_eq!(report.loaded, vec![1], "{report:?}");
        let inputs = router
            .handle("m")
            .unwrap()
            .pick(None)
            .unwrap()
            .model
            .info
            .unit_inputs()
            .unwrap();
        runtime
            .block_on(router.infer(InferRequest {
                model: "m".into(),
                inputs,
                ..Default::default()
            }))
            .unwrap();
        if cycle == 1 || cycle % 50 == 0 {
            println!("| {choice:?} | {cycle} | {:.1} |", rss_mib());
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["latency", model, seconds] => latency(Path::new(model), seconds.parse().expect("seconds")),
        ["memory", model, cycles, engine] => {
            let choice = match engine {
                "ort" => EngineChoice::Ort,
                "tract" => EngineChoice::Tract,
                other => panic!("engine must be ort or tract, got {other}"),
            };
            memory(Path::new(model), cycles.parse().expect("cycles"), choice)
        }
        _ => eprintln!("usage: reload_bench latency MODEL.onnx SECONDS | memory MODEL.onnx CYCLES ort|tract"),
    }
}
