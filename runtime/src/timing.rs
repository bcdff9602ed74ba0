//! Where an operation's time goes: the steps of a create, start or remove,
//! each with its duration, in one debug line when the operation ends
//! (`RUST_LOG=crust_runtime::timing=debug`), so a profile of crustd needs
//! no extra tooling.

use std::time::{Duration, Instant};

/// The steps of one operation on one object, timed as they end.
pub(crate) struct Steps {
    op: &'static str,
    id: String,
    start: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Steps {
    /// Starts timing operation `op` on object `id`.
    pub(crate) fn new(op: &'static str, id: &str) -> Steps {
        let now = Instant::now();
        Steps {
            op,
            id: if tracing::enabled!(target: "crust_runtime::timing", tracing::Level::DEBUG) {
                id.to_string()
            } else {
                String::new()
            },
            start: now,
            last: now,
            steps: Vec::new(),
        }
    }

    /// Ends step `name`: the time since the previous step ended.
    pub(crate) fn done(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if !tracing::enabled!(target: "crust_runtime::timing", tracing::Level::DEBUG) {
            return;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let steps = self
            .steps
            .iter()
            .map(|(name, d)| format!("{name} {:.2}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::debug!(
            target: "crust_runtime::timing",
            op = self.op,
            id = %self.id,
            total_ms = format!("{:.2}", ms(self.start.elapsed())),
            %steps,
            "steps (ms)"
        );
    }
}
