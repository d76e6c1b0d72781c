//! The rollout policy of a deploy and the shadow's verdict. `immediate` swaps the new version
//! in once it passed the reload checks; `shadow` first loads it beside the current version,
//! copies live requests to it (see [`crate::serving::shadow`]) and, after `shadow_requests`
//! answered copies or `shadow_secs`, **promotes** it when agreement ≥ `min_agreement`, no copy
//! failed and its p99 on-CPU engine time ≤ `max_p99_ratio` × the current version's on the
//! same requests (CPU time: see [`crate::serving::shadow`] for why not wall time) — otherwise **rolls it back** (the staged version is deleted, the current one
//! keeps serving). The settings come from the model's sidecar (the one sent with the version,
//! else the model's own); the deploy may name the rollout.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::repository::sidecar::Sidecar;
use crate::serving::shadow::{ShadowFigures, ShadowSettings};

/// How a new version takes traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rollout {
    /// Swapped in once loaded and checked.
    Immediate,
    /// Compared on copies of live requests first.
    Shadow,
}

impl Rollout {
    /// `immediate` or `shadow`.
    pub fn parse(text: &str) -> Result<Rollout, String> {
        match text {
            "immediate" => Ok(Rollout::Immediate),
            "shadow" => Ok(Rollout::Shadow),
            other => Err(format!(
                "rollout: expected \"immediate\" or \"shadow\", got \"{other}\""
            )),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Rollout::Immediate => "immediate",
            Rollout::Shadow => "shadow",
        }
    }
}

/// Default `shadow_requests`.
pub const SHADOW_REQUESTS: u64 = 200;
/// Default `shadow_secs`.
pub const SHADOW_SECS: u64 = 600;
/// Default `min_agreement`.
pub const MIN_AGREEMENT: f64 = 0.95;
/// Default `max_p99_ratio`.
pub const MAX_P99_RATIO: f64 = 1.5;
/// Default `shadow_rtol`.
pub const SHADOW_RTOL: f64 = 1e-3;

/// A deploy's rollout policy.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Policy {
    /// `immediate` or `shadow`.
    pub rollout: Rollout,
    /// Decide after this many answered copies (0: only `secs`).
    pub requests: u64,
    /// Decide after this long at the latest (0: only `requests`).
    pub secs: u64,
    /// Fraction of requests copied.
    pub fraction: f64,
    /// Raw outputs agree within this relative error.
    pub rtol: f64,
    /// Promote at or above this agreement.
    pub min_agreement: f64,
    /// Promote at or below this p99 ratio.
    pub max_p99_ratio: f64,
}

impl Policy {
    /// The policy of `sidecar`, with the deploy's choice of rollout winning.
    pub fn of(sidecar: &Sidecar, chosen: Option<Rollout>) -> Policy {
        let named = sidecar.rollout.as_deref().and_then(|r| Rollout::parse(r).ok());
        Policy {
            rollout: chosen.or(named).unwrap_or(Rollout::Immediate),
            requests: sidecar.shadow_requests.unwrap_or(SHADOW_REQUESTS),
            secs: sidecar.shadow_secs.unwrap_or(SHADOW_SECS),
            fraction: sidecar.shadow_fraction.unwrap_or(1.0),
            rtol: sidecar.shadow_rtol.unwrap_or(SHADOW_RTOL),
            min_agreement: sidecar.min_agreement.unwrap_or(MIN_AGREEMENT),
            max_p99_ratio: sidecar.max_p99_ratio.unwrap_or(MAX_P99_RATIO),
        }
    }

    /// What the shadow samples with.
    pub fn shadow_settings(&self) -> ShadowSettings {
        ShadowSettings {
            fraction: self.fraction,
            rtol: self.rtol,
        }
    }

    /// Whether a shadow that has `answered` copies after `elapsed` has run long enough.
    pub fn done(&self, answered: u64, elapsed: Duration) -> bool {
        (self.requests > 0 && answered >= self.requests) || (self.secs > 0 && elapsed.as_secs() >= self.secs)
    }

    /// The thresholds, as reported with a decision.
    pub fn thresholds(&self) -> Value {
        json!({
            "shadow_requests": self.requests,
            "shadow_secs": self.secs,
            "shadow_fraction": self.fraction,
            "shadow_rtol": self.rtol,
            "min_agreement": self.min_agreement,
            "max_p99_ratio": self.max_p99_ratio,
        })
    }
}

/// The shadow's verdict: promote, or the reasons it is rolled back.
pub fn verdict(policy: &Policy, figures: &ShadowFigures) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    if figures.compared == 0 {
        reasons.push(format!(
            "no request was compared in {:.0} s ({} copies failed, {} dropped)",
            figures.elapsed_secs, figures.errors, figures.dropped
        ));
    }
    if figures.errors > 0 {
        reasons.push(format!(
            "{} of {} copies failed on the new version (error rate {:.3}, expected 0): {}",
            figures.errors,
            figures.compared + figures.errors,
            figures.error_rate,
            figures.last_error.as_deref().unwrap_or("")
        ));
    }
    if figures.compared > 0 && figures.agreement < policy.min_agreement {
        reasons.push(format!(
            "agreement {:.3} ({} of {}) is below min_agreement {} (max |Δ| {:.3e}, max relative error {:.3e})",
            figures.agreement, figures.agreed, figures.compared, policy.min_agreement, figures.max_abs_diff,
            figures.max_rel_error
        ));
    }
    if figures.compared > 0 && figures.cpu_p99_ratio > policy.max_p99_ratio {
        reasons.push(format!(
            "p99 on-CPU engine time {:.0} µs is {:.2} × the current version's {:.0} µs, above max_p99_ratio {} (wall clock: {:.0} µs, {:.2} ×)",
            figures.cpu_p99_us, figures.cpu_p99_ratio, figures.current_cpu_p99_us, policy.max_p99_ratio,
            figures.p99_us, figures.p99_ratio
        ));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(compared: u64, agreed: u64, errors: u64, cpu_p99_ratio: f64) -> ShadowFigures {
        ShadowFigures {
            compared,
            agreed,
            agreement: agreed as f64 / compared.max(1) as f64,
            errors,
            // Wall time alone decides nothing (preemption lands on one side).
            p99_ratio: 9.0,
            cpu_p99_ratio,
            ..ShadowFigures::default()
        }
    }

    #[test]
    fn promotion_needs_agreement_no_errors_and_latency() {
        let policy = Policy::of(&Sidecar::default(), Some(Rollout::Shadow));
        assert_eq!(
            (policy.requests, policy.min_agreement, policy.max_p99_ratio),
            (200, 0.95, 1.5)
        );
        assert!(verdict(&policy, &figures(200, 200, 0, 1.1)).is_ok());
        let low = verdict(&policy, &figures(200, 150, 0, 1.0)).unwrap_err();
        assert!(low[0].contains("agreement 0.750"), "{low:?}");
        assert!(verdict(&policy, &figures(200, 200, 1, 1.0)).is_err());
        let slow = verdict(&policy, &figures(200, 200, 0, 3.0)).unwrap_err();
        assert!(slow[0].contains("3.00 ×"), "{slow:?}");
        assert!(verdict(&policy, &figures(0, 0, 0, 0.0)).is_err());
        assert!(policy.done(200, Duration::ZERO) && !policy.done(10, Duration::from_secs(1)));
        assert!(policy.done(10, Duration::from_secs(600)));
    }
}
