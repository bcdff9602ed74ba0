//! OCI runtime invocations crustd makes itself (the shim makes `create`):
//! the real [`crate::host::Runc`], for runc and runtimes with its command
//! line (youki).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::host::ExecCommand;

/// The longest crustd waits for one runc call (start, kill, delete, state,
/// list); each takes milliseconds when the host is well.
pub const RUNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The most of runc's stdout or stderr kept (`runc list` of many
/// containers is the largest).
const MAX_RUNC_OUTPUT: u64 = 4 << 20;

/// One OCI runtime binary with its state directory.
#[derive(Clone, Debug)]
pub struct RuncBinary {
    /// The runtime's executable.
    pub binary: PathBuf,
    /// Its `--root`: where it keeps container state.
    pub root: PathBuf,
    /// Global arguments given before every subcommand.
    pub options: Vec<String>,
}

/// The status runc reports for a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuncStatus {
    /// Created, not started.
    Created,
    /// Running (or paused).
    Running,
    /// Its init has exited.
    Stopped,
    /// runc does not know the container.
    Missing,
}

impl crate::host::Runc for RuncBinary {
    fn start(&self, id: &str) -> Result<()> {
        RuncBinary::start(self, id)
    }

    fn kill(&self, id: &str, signal: i32) -> Result<bool> {
        RuncBinary::kill(self, id, signal)
    }

    fn delete(&self, id: &str) -> Result<()> {
        RuncBinary::delete(self, id)
    }

    fn status(&self, id: &str) -> Result<RuncStatus> {
        RuncBinary::status(self, id)
    }

    fn list(&self) -> Result<Vec<String>> {
        RuncBinary::list(self)
    }

    fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        let out = crust_child::run(
            self.command().args(["update", "--resources", "-", id]),
            resources,
            RUNC_TIMEOUT,
            MAX_RUNC_OUTPUT,
        )
        .with_context(|| format!("running {} update {id}", self.binary.display()))?;
        check(&out, "runc update")
    }

    fn spawn_exec(&self, exec: ExecCommand<'_>) -> std::io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).args(&self.options);
        if let Some(log) = exec.log {
            cmd.arg("--log").arg(log).arg("--log-format").arg("json");
        }
        cmd.arg("exec");
        if exec.tty {
            cmd.args(["--tty", "--env", "TERM=xterm"]);
        }
        cmd.arg("--pid-file")
            .arg(exec.pid_file)
            .arg(exec.id)
            .args(exec.cmd)
            .stdin(exec.stdin)
            .stdout(exec.stdout)
            .stderr(exec.stderr);
        // The command (and the copies of a terminal's slave end it holds)
        // goes away on return: the master reads end of file only once
        // runc's copies are the last ones.
        cmd.spawn()
    }
}

impl RuncBinary {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root).args(&self.options);
        c
    }

    /// Runs runc with `args`, at most [`RUNC_TIMEOUT`]: a runc that hangs
    /// (on a frozen cgroup, a process stuck in the kernel) is killed rather
    /// than holding the container's lifecycle lock for good.
    fn run(&self, args: &[&str]) -> Result<crust_child::Finished> {
        crust_child::run(
            self.command().args(args),
            b"",
            RUNC_TIMEOUT,
            MAX_RUNC_OUTPUT,
        )
        .with_context(|| format!("running {} {}", self.binary.display(), args.join(" ")))
    }

    /// `runc start`: lets a created container's process run.
    pub fn start(&self, id: &str) -> Result<()> {
        let out = self.run(&["start", id])?;
        check(&out, "runc start")
    }

    /// `runc kill`: sends `signal` (a number) to the container's init.
    /// Returns false when the container is already stopped or gone.
    pub fn kill(&self, id: &str, signal: i32) -> Result<bool> {
        let sig = signal.to_string();
        let out = self.run(&["kill", id, &sig])?;
        if out.status.success() {
            return Ok(true);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("not running")
            || stderr.contains("does not exist")
            || stderr.contains("no such process")
        {
            return Ok(false);
        }
        bail!("runc kill {sig} failed: {}", stderr.trim())
    }

    /// `runc delete --force`: removes the container's runc state and cgroup,
    /// killing what is left. A container runc does not know is fine.
    pub fn delete(&self, id: &str) -> Result<()> {
        let out = self.run(&["delete", "--force", id])?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("does not exist") || stderr.contains("not exist") {
            return Ok(());
        }
        bail!("runc delete failed: {}", stderr.trim())
    }

    /// `runc state`: what runc thinks of the container.
    pub fn status(&self, id: &str) -> Result<RuncStatus> {
        let out = self.run(&["state", id])?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("does not exist") || stderr.contains("not exist") {
                return Ok(RuncStatus::Missing);
            }
            bail!("runc state failed: {}", stderr.trim());
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("decoding runc state")?;
        Ok(match v.get("status").and_then(|s| s.as_str()) {
            Some("created") => RuncStatus::Created,
            Some("running") | Some("paused") | Some("pausing") => RuncStatus::Running,
            _ => RuncStatus::Stopped,
        })
    }

    /// Ids of every container in runc's state directory.
    pub fn list(&self) -> Result<Vec<String>> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let out = self.run(&["list", "--quiet"])?;
        check(&out, "runc list")?;
        Ok(listed_ids(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// The container ids in `list --quiet` output: runc prints one per line;
/// youki ignores `--quiet` and prints a table whose first column is the id
/// under an `ID` header (never a crust id, which is 64 hex digits).
fn listed_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| *id != "ID")
        .map(String::from)
        .collect()
}

fn check(out: &crust_child::Finished, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!("{what} failed: {}", runc_error(&out.stderr))
}

/// The useful part of an OCI runtime's stderr: youki's `Error: ` line
/// (before its backtrace), else the last non-empty line without runc's
/// log prefix.
pub fn runc_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    if let Some(e) = text.lines().find_map(|l| l.strip_prefix("Error: ")) {
        return e.trim().to_string();
    }
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    match line.find("msg=") {
        Some(i) => line[i + 4..].trim_matches('"').to_string(),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::listed_ids;

    #[test]
    fn list_output_of_runc_and_youki() {
        assert_eq!(listed_ids("a1\n\nb2\n"), ["a1", "b2"]);
        let youki = "ID   PID  STATUS   BUNDLE  CREATED  CREATOR\nc3   12   running  /b      now      root\n";
        assert_eq!(listed_ids(youki), ["c3"]);
        assert!(listed_ids("ID PID STATUS BUNDLE CREATED CREATOR\n").is_empty());
    }

    #[test]
    fn errors_of_runc_and_youki() {
        assert_eq!(
            super::runc_error(b"time=\"x\" level=error msg=\"container not running\"\n"),
            "container not running"
        );
        let youki = b"ERROR youki: boom\n\nStack backtrace:\n  0: x\nError: container c does not exist.\n\nStack backtrace:\n   0: <unknown>\n";
        assert_eq!(super::runc_error(youki), "container c does not exist.");
    }
}
