//! Runs the ONNX backend node test suite through onnxd's engines and prints the counts
//! recorded in CONFORMANCE.md:
//!
//! ```text
//! cargo run --example conformance -- DIR [--engine ort|tract|both] [--every N] [--list]
//! ```
//!
//! `DIR` is `onnx/backend/test/data/node` of the `onnx` wheel (`scripts/conformance` finds it).
//! `--list` prints every case's outcome.

use std::path::PathBuf;

use onnxd::conformance::{cases, run_case, Outcome, Summary};
use onnxd::engine::EngineChoice;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut engines = vec![EngineChoice::Ort, EngineChoice::Tract];
    let mut every = 1usize;
    let mut list = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--engine" => {
                engines = match args.next().as_deref() {
                    Some("ort") => vec![EngineChoice::Ort],
                    Some("tract") => vec![EngineChoice::Tract],
                    Some("both") => vec![EngineChoice::Ort, EngineChoice::Tract],
                    other => anyhow::bail!("--engine expects ort, tract or both, got {other:?}"),
                }
            }
            "--every" => {
                every = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| anyhow::anyhow!("--every expects a positive number"))?
            }
            "--list" => list = true,
            _ => dir = Some(PathBuf::from(arg)),
        }
    }
    let dir = dir.ok_or_else(|| {
        anyhow::anyhow!("usage: conformance DIR [--engine ort|tract|both] [--every N] [--list]")
    })?;
    // Panics are counted per case; keep their default report off the terminal.
    std::panic::set_hook(Box::new(|_| {}));
    let all = cases(&dir)?;
    println!("{} cases in {}", all.len(), dir.display());
    println!(
        "{:<8} {:>6} {:>12} {:>7} {:>7} {:>12} {:>11} {:>13} {:>8}",
        "engine",
        "cases",
        "expressible",
        "loaded",
        "passed",
        "load_failed",
        "run_failed",
        "wrong_result",
        "crashed"
    );
    for engine in engines {
        let mut summary = Summary::default();
        for case in all.iter().step_by(every) {
            let outcome = run_case(case, engine, None);
            if list {
                let name = case.file_name().unwrap_or_default().to_string_lossy();
                let (kind, detail) = match &outcome {
                    Outcome::Passed => ("passed", String::new()),
                    Outcome::NotExpressible(d) => ("not_expressible", d.clone()),
                    Outcome::LoadFailed(d) => ("load_failed", d.clone()),
                    Outcome::RunFailed(d) => ("run_failed", d.clone()),
                    Outcome::WrongResult(d) => ("wrong_result", d.clone()),
                    Outcome::Crashed(d) => ("crashed", d.clone()),
                };
                let detail: String = detail.chars().take(160).collect();
                println!("{engine:?}\t{name}\t{kind}\t{detail}");
            }
            summary.add(&outcome);
        }
        println!(
            "{:<8} {:>6} {:>12} {:>7} {:>7} {:>12} {:>11} {:>13} {:>8}",
            format!("{engine:?}").to_lowercase(),
            summary.cases,
            summary.expressible,
            summary.loaded,
            summary.passed,
            summary.load_failed,
            summary.run_failed,
            summary.wrong_result,
            summary.crashed
        );
    }
    Ok(())
}
