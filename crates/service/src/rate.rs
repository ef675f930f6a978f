//! Rate limits: a token bucket, for what an outsider could otherwise make a service do without
//! bound (directory lookups of made-up kids, log lines of refusals).

use std::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
pub struct Bucket {
    rate: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A bucket that starts full.
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(0.0),
            burst,
            state: std::sync::Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token if there is one.
    pub fn take(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let bucket = Bucket::new(0.0, 3.0);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
        let refilling = Bucket::new(1_000_000.0, 1.0);
        assert!(refilling.take());
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(refilling.take());
    }
}
