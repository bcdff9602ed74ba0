//! The undo stack of a staged create: every step that made something registers how
//! to take it away again; a failure runs the stack in reverse.

/// Undo steps of a create in progress.
#[derive(Default)]
pub struct Cleanup {
    steps: Vec<(String, Undo)>,
}

type Undo = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

impl Cleanup {
    /// Registers how to undo the step just taken.
    pub fn push(
        &mut self,
        what: impl Into<String>,
        undo: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
    ) {
        self.steps.push((what.into(), Box::new(undo)));
    }

    /// The create succeeded: forget the undo steps.
    pub fn disarm(mut self) {
        self.steps.clear();
    }

    /// Runs every undo step, newest first. Returns the failures, so the caller can
    /// keep a record of an object that still holds resources.
    pub fn run(mut self) -> Vec<String> {
        let mut failures = Vec::new();
        while let Some((what, undo)) = self.steps.pop() {
            if let Err(e) = undo() {
                tracing::warn!(step = %what, error = %format!("{e:#}"), "rollback step failed");
                failures.push(format!("{what}: {e:#}"));
            }
        }
        failures
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.steps.is_empty() {
            let steps = std::mem::take(&mut self.steps);
            Cleanup { steps }.run();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn runs_in_reverse_and_disarms() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut c = Cleanup::default();
        for i in 0..3 {
            let log = log.clone();
            c.push(format!("step {i}"), move || {
                log.lock().unwrap().push(i);
                Ok(())
            });
        }
        assert!(c.run().is_empty());
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);

        let mut d = Cleanup::default();
        let l2 = log.clone();
        d.push("never", move || {
            l2.lock().unwrap().push(99);
            Ok(())
        });
        d.disarm();
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
