//! Latency samples and the summary statistics the report prints.

use std::time::Duration;

use serde_json::{Value, json};

/// The durations of one operation, in the order they were taken.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    millis: Vec<f64>,
}

impl Samples {
    /// An empty set of samples.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one duration.
    pub fn push(&mut self, elapsed: Duration) {
        self.millis.push(elapsed.as_secs_f64() * 1000.0);
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.millis.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.millis.is_empty()
    }

    /// The `p`-th percentile (0 < p <= 100) in milliseconds, by nearest rank.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.millis.is_empty() {
            return None;
        }
        let mut sorted = self.millis.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    /// The median in milliseconds.
    pub fn p50(&self) -> Option<f64> {
        self.percentile(50.0)
    }

    /// The 99th percentile in milliseconds (the maximum below 100 samples).
    pub fn p99(&self) -> Option<f64> {
        self.percentile(99.0)
    }

    /// The arithmetic mean in milliseconds.
    pub fn mean(&self) -> Option<f64> {
        (!self.millis.is_empty())
            .then(|| self.millis.iter().sum::<f64>() / self.millis.len() as f64)
    }

    /// The summary as JSON: count, p50, p99, mean, min and max in ms.
    pub fn to_json(&self) -> Value {
        json!({
            "unit": "ms",
            "n": self.len(),
            "p50": self.p50(),
            "p99": self.p99(),
            "mean": self.mean(),
            "min": self.percentile(0.0),
            "max": self.percentile(100.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[u64]) -> Samples {
        let mut s = Samples::new();
        for v in values {
            s.push(Duration::from_millis(*v));
        }
        s
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = samples(&[5, 1, 4, 2, 3]);
        assert_eq!(s.p50(), Some(3.0));
        assert_eq!(s.p99(), Some(5.0));
        assert_eq!(s.percentile(0.0), Some(1.0));
        assert_eq!(s.mean(), Some(3.0));
    }

    #[test]
    fn hundred_samples_p99_is_not_the_max() {
        let s = samples(&(1..=100).collect::<Vec<_>>());
        assert_eq!(s.p99(), Some(99.0));
        assert_eq!(s.p50(), Some(50.0));
    }

    #[test]
    fn empty_has_no_statistics() {
        assert_eq!(Samples::new().p50(), None);
        assert_eq!(Samples::new().mean(), None);
    }
}
