//! What one run measured: latency samples and memory figures by metric key,
//! with notes, for one column of the report (crust, containerd or the floor).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::memory::ProcessMemory;
use super::stats::Samples;

/// One measured value.
#[derive(Debug, Clone)]
pub enum Measured {
    /// Durations of repeated operations.
    Latency(Samples),
    /// A memory figure in KiB.
    Memory(f64),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step ran.
    Completed,
    /// The run could not start (e.g. containerd is not installed); the reason.
    Unavailable(String),
    /// A step failed; what failed. Figures taken before the failure are kept.
    Failed(String),
}

/// The figures of one column of the report.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Column name: `crust`, `containerd` or `floor`.
    pub name: String,
    /// Version or description of what ran.
    pub version: String,
    /// How the run ended.
    pub outcome: Outcome,
    /// Figures by metric key (see `super::metrics`).
    pub metrics: BTreeMap<&'static str, Measured>,
    /// Remarks worth reading next to the figures.
    pub notes: Vec<String>,
}

impl RunResult {
    /// An empty, completed result named `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            version: String::new(),
            outcome: Outcome::Completed,
            metrics: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// The samples of latency metric `key`, created empty on first use.
    pub fn samples(&mut self, key: &'static str) -> &mut Samples {
        let entry = self
            .metrics
            .entry(key)
            .or_insert_with(|| Measured::Latency(Samples::new()));
        if !matches!(entry, Measured::Latency(_)) {
            *entry = Measured::Latency(Samples::new());
        }
        match entry {
            Measured::Latency(samples) => samples,
            Measured::Memory(_) => unreachable!("replaced above"),
        }
    }

    /// Records memory figure `key` in KiB.
    pub fn memory(&mut self, key: &'static str, kib: f64) {
        self.metrics.insert(key, Measured::Memory(kib));
    }

    /// Records the RSS, PSS and USS of `memory` under three keys.
    pub fn process_memory(&mut self, keys: [&'static str; 3], memory: ProcessMemory) {
        self.memory(keys[0], memory.rss_kib);
        self.memory(keys[1], memory.pss_kib);
        self.memory(keys[2], memory.uss_kib);
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Marks the run failed with the error's whole cause chain.
    pub fn fail(&mut self, error: &anyhow::Error) {
        self.outcome = Outcome::Failed(format!("{error:#}"));
    }

    /// Whether the run produced figures worth comparing.
    pub fn has_figures(&self) -> bool {
        !matches!(self.outcome, Outcome::Unavailable(_)) && !self.metrics.is_empty()
    }

    /// The p50 (latency) or the value (memory) of `key`.
    pub fn headline(&self, key: &str) -> Option<f64> {
        match self.metrics.get(key)? {
            Measured::Latency(s) => s.p50(),
            Measured::Memory(v) => Some(*v),
        }
    }

    /// The p99 of latency metric `key`.
    pub fn p99(&self, key: &str) -> Option<f64> {
        match self.metrics.get(key)? {
            Measured::Latency(s) => s.p99(),
            Measured::Memory(_) => None,
        }
    }

    /// The result as JSON.
    pub fn to_json(&self) -> Value {
        let metrics: Map<String, Value> = self
            .metrics
            .iter()
            .map(|(k, m)| {
                let v = match m {
                    Measured::Latency(s) => s.to_json(),
                    Measured::Memory(kib) => json!({ "unit": "KiB", "value": kib }),
                };
                (k.to_string(), v)
            })
            .collect();
        let (outcome, reason) = match &self.outcome {
            Outcome::Completed => ("completed", None),
            Outcome::Unavailable(r) => ("unavailable", Some(r.clone())),
            Outcome::Failed(r) => ("failed", Some(r.clone())),
        };
        json!({
            "version": self.version,
            "outcome": outcome,
            "reason": reason,
            "metrics": metrics,
            "notes": self.notes,
        })
    }
}
