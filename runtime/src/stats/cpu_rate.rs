//! CPU usage rates (`usage_nano_cores`): the cumulative CPU time of a cgroup
//! between two samples, divided by the time between them.
//!
//! Every caller (kubelet every 10 s, metrics-server, `crictl stats`) shares the
//! samples: a rate is taken against the last kept sample once at least
//! [`MIN_WINDOW`] has passed since it, so a caller that asks twice in a
//! millisecond gets the last rate again instead of a figure made of noise.

use std::collections::HashMap;
use std::sync::Mutex;

/// The shortest window a rate is computed over, in nanoseconds.
const MIN_WINDOW_NS: i64 = 1_000_000_000;

#[derive(Clone, Copy, Debug)]
struct Sample {
    cpu_ns: u64,
    at_ns: i64,
    rate: Option<u64>,
}

/// The last sample of each object (container or pod sandbox id).
#[derive(Debug, Default)]
pub(crate) struct CpuRates {
    samples: Mutex<HashMap<String, Sample>>,
}

impl CpuRates {
    /// The rate of `id`'s CPU use in nanocores, given its cumulative `cpu_ns`
    /// read at `at_ns` (ns since the epoch); `None` on the first sample.
    pub(crate) fn rate(&self, id: &str, cpu_ns: u64, at_ns: i64) -> Option<u64> {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = Sample {
            cpu_ns,
            at_ns,
            rate: None,
        };
        let Some(last) = samples.get_mut(id) else {
            samples.insert(id.to_string(), fresh);
            return None;
        };
        let window = at_ns - last.at_ns;
        if window < MIN_WINDOW_NS && cpu_ns >= last.cpu_ns && window >= 0 {
            return last.rate;
        }
        // A counter that went backwards (a container of a pod was removed)
        // or a clock that did: start again from this sample.
        let rate = (window > 0 && cpu_ns >= last.cpu_ns).then(|| {
            let used = u128::from(cpu_ns - last.cpu_ns);
            u64::try_from(used * 1_000_000_000 / window as u128).unwrap_or(u64::MAX)
        });
        *last = Sample { rate, ..fresh };
        rate
    }

    /// Forgets the samples of objects not in `live`.
    pub(crate) fn retain(&self, live: impl Fn(&str) -> bool) {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn rates_between_samples() {
        let r = CpuRates::default();
        assert_eq!(r.rate("c", 0, 10 * S), None, "first sample");
        // Half a core over two seconds.
        assert_eq!(r.rate("c", 1_000_000_000, 12 * S), Some(500_000_000));
        // Asked again within the minimum window: the last rate, unchanged sample.
        assert_eq!(r.rate("c", 1_000_100_000, 12 * S + 1000), Some(500_000_000));
        // One full core over the next second (from the kept sample).
        assert_eq!(r.rate("c", 2_000_000_000, 13 * S), Some(1_000_000_000));
        // The counter went backwards: no rate, and the next one starts there.
        assert_eq!(r.rate("c", 100, 14 * S), None);
        assert_eq!(r.rate("c", 100, 15 * S), Some(0));
        r.retain(|id| id != "c");
        assert_eq!(r.rate("c", 100, 16 * S), None, "forgotten");
    }
}
