//! Timestamps as CRI wants them (nanoseconds since the Unix epoch), and
//! deadlines from durations a client chose.

use std::time::{Duration, Instant};

/// Where a deadline too far to represent is put: far beyond any wait.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The instant `d` from now, saturating: a client's `i64::MAX` seconds is a
/// deadline a century away, never an overflow.
pub fn instant_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// `secs` seconds from a request as a duration; negative is zero.
pub fn request_secs(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_from_any_request_duration() {
        let far = instant_after(request_secs(i64::MAX));
        assert!(far > Instant::now() + Duration::from_secs(50 * 365 * 24 * 3600));
        assert!(instant_after(request_secs(-5)) <= Instant::now());
        assert_eq!(request_secs(7), Duration::from_secs(7));
    }
}
