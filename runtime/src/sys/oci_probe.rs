//! The start-up probe of a runtime handler's binary: it must exist and
//! `<binary> --version` must run; `<binary> features` (runc 1.1.3+, youki),
//! where it answers, is kept to show in verbose Status.

use std::process::Command;
use std::time::Duration;

use crate::host::{HandlerSpec, Probe};

/// How long one probe call may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most output kept of one probe call.
const MAX_PROBE_OUTPUT: u64 = 1 << 20;

/// Probes `spec`'s binary.
pub fn probe(spec: &HandlerSpec) -> Probe {
    let mut probe = Probe {
        usable: Ok(()),
        version: String::new(),
        features: None,
        user_namespaces: Ok(()),
    };
    if !spec.binary.is_file() {
        probe.usable = Err(format!(
            "{} not found (install it, or set runtimes.{}.binary to its path)",
            spec.binary.display(),
            spec.name
        ));
        return probe;
    }
    match run(spec, "--version") {
        Ok(out) => {
            probe.version = out.lines().next().unwrap_or("").trim().to_string();
            probe.user_namespaces = user_namespaces(&probe.version);
        }
        Err(why) => {
            probe.usable = Err(why);
            return probe;
        }
    }
    probe.features = run(spec, "features")
        .ok()
        .and_then(|out| serde_json::from_str(&out).ok());
    probe
}

/// Whether a runtime of this `--version` line can run user-namespaced
/// pods: youki's `exec` (0.7) leaves the process in the host's user
/// namespace, as real root, so it cannot.
fn user_namespaces(version: &str) -> Result<(), String> {
    if version.starts_with("youki") {
        return Err(format!(
            "{version}: its exec does not join the container's user namespace"
        ));
    }
    Ok(())
}

/// Runs `<binary> <options> <arg>`; its stdout, or why it failed.
fn run(spec: &HandlerSpec, arg: &str) -> Result<String, String> {
    let what = format!("{} {arg}", spec.binary.display());
    let out = crust_child::run(
        Command::new(&spec.binary).args(&spec.options).arg(arg),
        b"",
        PROBE_TIMEOUT,
        MAX_PROBE_OUTPUT,
    )
    .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            super::runc::runc_error(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(binary: &str) -> HandlerSpec {
        HandlerSpec {
            name: "x".into(),
            binary: binary.into(),
            root: "/nonexistent".into(),
            options: Vec::new(),
        }
    }

    #[test]
    fn a_missing_binary_is_unusable_with_the_reason() {
        let p = probe(&spec("/nonexistent/youki"));
        let why = p.usable.unwrap_err();
        assert!(why.contains("/nonexistent/youki not found"), "{why}");
        assert!(why.contains("runtimes.x.binary"), "{why}");
    }

    #[test]
    fn a_binary_that_fails_is_unusable() {
        let p = probe(&spec("/bin/false"));
        assert!(
            p.usable
                .unwrap_err()
                .contains("/bin/false --version failed")
        );
    }
}
