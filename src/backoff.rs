//! Capped exponential backoff with jitter, the one used for every reconnect (MQTT broker,
//! camera sources): each failure doubles the delay up to the cap; a success resets it; the
//! delay slept is a random 50–100 % of the current one, so many clients do not retry in step.

use std::time::Duration;

/// Reconnect delays.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starting at `min`, never above `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The delay to wait after this failure (jittered); the next one doubles.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current.mul_f64(0.5 + fastrand::f64() / 2.0);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// After a success: the next failure waits the minimum again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(350));
        let delays: Vec<Duration> = (0..4).map(|_| backoff.next_delay()).collect();
        for (delay, nominal) in delays.iter().zip([100, 200, 350, 350]) {
            assert!(*delay >= ms(nominal) / 2 && *delay <= ms(nominal), "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= ms(100));
    }
}
