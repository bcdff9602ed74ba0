//! `BENCHMARKS.md`: the report as the repository keeps it. The targets of
//! issue 14 come first, each ratio next to its target and whether it is
//! met; then every measurement; then the machine, the date and the command
//! that reproduces it. What is not measured yet is said, not left out.

use std::fmt::Write as _;

use super::metrics::{self, Kind};
use super::report::{CONTAINERD, CRUST, FLOOR, Report, number};

/// The RPCs of one pod's whole lifecycle, summed (p50s) for the lifecycle
/// targets.
const LIFECYCLE: [&str; 6] = [
    metrics::RUN_POD,
    metrics::CREATE,
    metrics::START,
    metrics::STOP_CONTAINER,
    metrics::REMOVE_CONTAINER,
    metrics::STOP_REMOVE_POD,
];

/// One target row: what, crust's figure, the figure it is compared with,
/// the ratio (or value), the target and whether it is met.
struct Target {
    what: &'static str,
    crust: Option<f64>,
    other: Option<f64>,
    value: Option<f64>,
    target: String,
    met: Option<bool>,
}

/// The sum of the lifecycle p50s of column `name`, if it has all of them.
fn lifecycle(report: &Report, name: &str) -> Option<f64> {
    LIFECYCLE
        .iter()
        .map(|k| report.figure(name, k, false))
        .sum()
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn targets(report: &Report) -> Vec<Target> {
    let at_most = |what, crust, other, limit: f64| {
        let value = ratio(crust, other);
        Target {
            what,
            crust,
            other,
            value,
            target: format!("≤ {limit:.2}x"),
            met: value.map(|v| v <= limit),
        }
    };
    let mib = |key| report.figure(CRUST, key, false).map(|kib| kib / 1024.0);
    let absolute = |what, value: Option<f64>, limit: f64| Target {
        what,
        crust: value,
        other: None,
        value,
        target: format!("≤ {limit:.1} MiB"),
        met: value.map(|v| v <= limit),
    };
    vec![
        at_most(
            "whole lifecycle (sum of p50s, ms) vs containerd",
            lifecycle(report, CRUST),
            lifecycle(report, CONTAINERD),
            0.5,
        ),
        at_most(
            "whole lifecycle (sum of p50s, ms) vs the floor",
            lifecycle(report, CRUST),
            lifecycle(report, FLOOR),
            1.15,
        ),
        at_most(
            "RemoveContainer p50 (ms) vs containerd",
            report.figure(CRUST, metrics::REMOVE_CONTAINER, false),
            report.figure(CONTAINERD, metrics::REMOVE_CONTAINER, false),
            1.0,
        ),
        absolute(
            "crustd RSS, idle after start (MiB)",
            mib(metrics::DAEMON_RSS_IDLE),
            10.0,
        ),
        absolute(
            "PSS per running container (shim, MiB)",
            mib(metrics::PER_CONTAINER_PSS),
            0.5,
        ),
    ]
}

fn cell(value: Option<f64>) -> String {
    number(value, 1.0)
}

/// The whole file: `command` reproduces it, `date` is when it ran.
pub fn render(report: &Report, command: &str, date: &str) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(out, "# crust benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `{command}` on {date}. Figures are p50 and p99 over the runs of one \
         benchmark on one machine, side by side with containerd (the peer) and the bare-runc \
         floor: compare ratios, not milliseconds across machines.\n"
    );
    let _ = writeln!(
        out,
        "Machine: {} CPUs ({}), {} MiB, kernel {}, cgroups {}; {}; containerd {}. \
         N = {} pods per runtime, {} cold pulls per image; load average {} at the start, {} at \
         the end; the run took {:.0} s.\n",
        m.cpus,
        m.cpu_model,
        m.memory_mib,
        m.kernel,
        m.cgroups,
        m.runc,
        m.containerd.as_deref().unwrap_or("not installed"),
        report.options.n,
        report.options.pulls,
        m.load_at_start,
        report.load_at_end,
        report.elapsed.as_secs_f64()
    );
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(
        out,
        "The whole lifecycle is RunPodSandbox + CreateContainer + StartContainer + \
         StopContainer + RemoveContainer + StopPodSandbox + RemovePodSandbox.\n"
    );
    let _ = writeln!(
        out,
        "| target | crust | compared with | ratio or value | target | met |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- | --- |");
    for t in targets(report) {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {met} |",
            t.what,
            cell(t.crust),
            cell(t.other),
            cell(t.value),
            t.target
        );
    }
    let _ = writeln!(
        out,
        "\nNot measured yet (issue 14): 20 pods driven concurrently and 10 parallel clients; \
         the steady-state calls with 100 running containers; crustd's memory with 1, 10, 50 \
         and 100 pods and after 100 pulls; both over a 30-minute churn.\n"
    );
    let _ = writeln!(out, "## Latency, ms\n");
    let _ = writeln!(
        out,
        "| operation | | crust | containerd | floor | crust/containerd | crust/floor |"
    );
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for def in metrics::ALL.iter().filter(|d| d.kind == Kind::Latency) {
        for (stat, p99) in [("p50", false), ("p99", true)] {
            let [c, d, f] = [CRUST, CONTAINERD, FLOOR].map(|n| report.figure(n, def.key, p99));
            if c.is_none() && d.is_none() && f.is_none() {
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | {stat} | {} | {} | {} | {} | {} |",
                def.label.trim(),
                cell(c),
                cell(d),
                cell(f),
                cell(ratio(c, d)),
                cell(ratio(c, f))
            );
        }
    }
    let _ = writeln!(out, "\n## Memory, MiB\n");
    let _ = writeln!(out, "| figure | crust | containerd | crust/containerd |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
    for def in metrics::ALL.iter().filter(|d| d.kind == Kind::Memory) {
        let [c, d] =
            [CRUST, CONTAINERD].map(|n| report.figure(n, def.key, false).map(|k| k / 1024.0));
        if c.is_none() && d.is_none() {
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            def.label,
            cell(c),
            cell(d),
            cell(ratio(c, d))
        );
    }
    let _ = writeln!(out, "\n## What each column ran\n");
    for r in &report.results {
        for note in &r.notes {
            let _ = writeln!(out, "- {}: {note}", r.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_cells() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(cell(None), "-");
        assert_eq!(cell(Some(1.234)), "1.23");
    }
}
