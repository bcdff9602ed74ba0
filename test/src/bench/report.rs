//! The report: a table of every metric for crust, containerd and the floor
//! with the ratios crust/containerd and crust/floor, the big-image pulls next
//! to `skopeo copy`, and the same as JSON.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use super::machine::Machine;
use super::metrics::{self, Kind, MetricDef};
use super::options::Options;
use super::results::{Outcome, RunResult};

/// Column names, in table order.
pub const CRUST: &str = "crust";
/// The peer's column.
pub const CONTAINERD: &str = "containerd";
/// The floor's column.
pub const FLOOR: &str = "floor";
/// The reference point of the big-image pulls.
pub const SKOPEO: &str = super::skopeo::SKOPEO;
/// The metrics `skopeo copy` is a reference point for.
const SKOPEO_METRICS: [&str; 2] = [metrics::PULL_BIG_COLD, metrics::PULL_BIG_SHARED];

/// Everything the benchmark found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The machine it ran on.
    pub machine: Machine,
    /// The knobs it ran with.
    pub options: Options,
    /// One result per column (crust, containerd, floor, skopeo), in any order.
    pub results: Vec<RunResult>,
    /// Remarks on the whole run (e.g. what the big images are).
    pub notes: Vec<String>,
    /// How long the whole benchmark took.
    pub elapsed: Duration,
    /// `/proc/loadavg` at the end.
    pub load_at_end: String,
}

impl Report {
    fn column(&self, name: &str) -> Option<&RunResult> {
        self.results.iter().find(|r| r.name == name)
    }

    /// Column `name`'s p50 (or p99) of latency `key` in ms, or its memory
    /// figure `key` in KiB; None when that column has no such figure.
    pub fn figure(&self, name: &str, key: &str, p99: bool) -> Option<f64> {
        self.value(name, key, p99)
    }

    fn value(&self, name: &str, key: &str, p99: bool) -> Option<f64> {
        let result = self.column(name).filter(|r| r.has_figures())?;
        if p99 {
            result.p99(key)
        } else {
            result.headline(key)
        }
    }

    /// The report as the table printed on stdout.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "crust-bench: crust vs containerd vs the bare-runc floor (ratios, not assertions)"
        );
        let _ = writeln!(
            out,
            "machine: {} CPUs ({}), {} MiB, kernel {}, cgroups {}",
            m.cpus, m.cpu_model, m.memory_mib, m.kernel, m.cgroups
        );
        let _ = writeln!(
            out,
            "runc: {}; containerd: {}",
            m.runc,
            m.containerd.as_deref().unwrap_or("not installed")
        );
        let _ = writeln!(
            out,
            "N = {} pods per runtime (one `sleep 3600` container each, all kept running until the last started), {} cold pulls per image, {} rounds of the big-image pulls, one warm-up round each; runtimes run one after the other",
            self.options.n, self.options.pulls, self.options.big_pulls
        );
        let _ = writeln!(
            out,
            "load average at start: {}; at end: {}; took {:.0}s",
            m.load_at_start,
            self.load_at_end,
            self.elapsed.as_secs_f64()
        );
        for note in &self.notes {
            let _ = writeln!(out, "{note}");
        }
        for r in &self.results {
            let status = match &r.outcome {
                Outcome::Completed => "completed".to_string(),
                Outcome::Unavailable(why) => format!("NOT RUN: {why}"),
                Outcome::Failed(why) => format!("FAILED (figures so far kept): {why}"),
            };
            let _ = writeln!(out, "{:<10} {}: {status}", r.name, r.version);
        }
        let _ = writeln!(out);
        let header = |out: &mut String, title: &str| {
            let _ = writeln!(
                out,
                "{title:<44} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11}",
                CRUST, CONTAINERD, FLOOR, "crust/ctrd", "crust/floor", "crust-floor"
            );
        };
        header(&mut out, "latency, ms");
        for def in metrics::ALL.iter().filter(|d| d.kind == Kind::Latency) {
            for (stat, p99) in [("p50", false), ("p99", true)] {
                self.latency_row(&mut out, def, stat, p99);
            }
        }
        let _ = writeln!(out);
        header(&mut out, "memory, MiB (KiB / 1024)");
        for def in metrics::ALL.iter().filter(|d| d.kind == Kind::Memory) {
            self.memory_row(&mut out, def);
        }
        self.skopeo_rows(&mut out);
        for r in &self.results {
            if r.notes.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\nnotes, {}:", r.name);
            for note in &r.notes {
                let _ = writeln!(out, "  - {note}");
            }
        }
        out
    }

    fn latency_row(&self, out: &mut String, def: &MetricDef, stat: &str, p99: bool) {
        let [c, d, f] = [CRUST, CONTAINERD, FLOOR].map(|n| self.value(n, def.key, p99));
        if c.is_none() && d.is_none() && f.is_none() {
            return;
        }
        let label = if p99 {
            String::new()
        } else {
            def.label.to_string()
        };
        let delta = match (c, f) {
            (Some(c), Some(f)) => format!("{:+.2}", c - f),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{label:<39} {stat:>4} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11}",
            number(c, 1.0),
            number(d, 1.0),
            number(f, 1.0),
            ratio(c, d),
            ratio(c, f),
            delta
        );
    }

    fn memory_row(&self, out: &mut String, def: &MetricDef) {
        let [c, d, f] = [CRUST, CONTAINERD, FLOOR].map(|n| self.value(n, def.key, false));
        if c.is_none() && d.is_none() {
            return;
        }
        let _ = writeln!(
            out,
            "{:<44} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11}",
            def.label,
            number(c, 1024.0),
            number(d, 1024.0),
            number(f, 1024.0),
            ratio(c, d),
            ratio(c, f),
            "-"
        );
    }

    /// The big-image pulls next to `skopeo copy` of the same images.
    fn skopeo_rows(&self, out: &mut String) {
        if SKOPEO_METRICS
            .iter()
            .all(|k| self.value(SKOPEO, k, false).is_none())
        {
            return;
        }
        let _ = writeln!(
            out,
            "\nreference point: skopeo copy of the same image (fetch + digest check + write, no unpack), ms"
        );
        let _ = writeln!(
            out,
            "{:<39} {:>4} {:>10} {:>10} {:>10} {:>12} {:>11}",
            "", "", CRUST, CONTAINERD, SKOPEO, "crust/skopeo", "ctrd/skopeo"
        );
        for def in metrics::ALL
            .iter()
            .filter(|d| SKOPEO_METRICS.contains(&d.key))
        {
            for (stat, p99) in [("p50", false), ("p99", true)] {
                let [c, d, s] = [CRUST, CONTAINERD, SKOPEO].map(|n| self.value(n, def.key, p99));
                let label = if p99 { "" } else { def.label };
                let _ = writeln!(
                    out,
                    "{label:<39} {stat:>4} {:>10} {:>10} {:>10} {:>12} {:>11}",
                    number(c, 1.0),
                    number(d, 1.0),
                    number(s, 1.0),
                    ratio(c, s),
                    ratio(d, s)
                );
            }
        }
    }

    /// The report as JSON: machine, options, each column's figures and notes,
    /// and the ratios per metric.
    pub fn to_json(&self) -> Value {
        let columns: Map<String, Value> = self
            .results
            .iter()
            .map(|r| (r.name.clone(), r.to_json()))
            .collect();
        let mut ratios = Map::new();
        for def in metrics::ALL {
            let mut entry = Map::new();
            let stats: &[(&str, bool)] = match def.kind {
                Kind::Latency => &[("p50", false), ("p99", true)],
                Kind::Memory => &[("value", false)],
            };
            for (stat, p99) in stats {
                let c = self.value(CRUST, def.key, *p99);
                for (other, name) in [
                    (CONTAINERD, "containerd"),
                    (FLOOR, "floor"),
                    (SKOPEO, "skopeo"),
                ] {
                    if let (Some(c), Some(o)) = (c, self.value(other, def.key, *p99))
                        && o > 0.0
                    {
                        entry.insert(format!("crust_over_{name}_{stat}"), json!(c / o));
                    }
                }
            }
            if !entry.is_empty() {
                ratios.insert(def.key.to_string(), Value::Object(entry));
            }
        }
        json!({
            "machine": self.machine.to_json(),
            "n": self.options.n,
            "pulls": self.options.pulls,
            "big_pulls": self.options.big_pulls,
            "notes": self.notes,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "load_at_end": self.load_at_end,
            "runtimes": columns,
            "ratios": ratios,
        })
    }

    /// Writes [`Report::to_json`] to `path`, making its directory.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&self.to_json())?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// `value / divisor` with two decimals, or `-` when there is none.
pub fn number(value: Option<f64>, divisor: f64) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{:.2}", v / divisor))
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> String {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.2}x", n / d),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_numbers() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25x");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "-");
        assert_eq!(ratio(None, Some(1.0)), "-");
        assert_eq!(number(Some(2048.0), 1024.0), "2.00");
        assert_eq!(number(None, 1.0), "-");
    }
}
