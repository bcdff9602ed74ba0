//! Finding and stopping processes by pid: crust-shims that belong to a test's
//! state directory, and children the harness itself started.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The last `lines` lines of a child's captured output file (empty when it
/// cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Returns whether a process with this pid exists (zombies included).
pub fn is_alive(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None).is_ok()
}

/// The command line of `pid`, split into arguments.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Returns whether `pid` runs the program named `program` (its argv[0] or exe).
pub fn runs_program(pid: i32, program: &str) -> bool {
    let by_exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|exe| exe.file_name().is_some_and(|n| n == program))
        .unwrap_or(false);
    let by_argv0 = cmdline(pid)
        .and_then(|args| args.into_iter().next())
        .is_some_and(|a0| Path::new(&a0).file_name().is_some_and(|n| n == program));
    by_exe || by_argv0
}

/// Pids of `program` processes tied to `dir`: their command line mentions it or
/// their working directory is inside it.
pub fn find_program_using(program: &str, dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = dir.to_string_lossy().into_owned();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| runs_program(*pid, program))
        .filter(|pid| {
            let in_args =
                cmdline(*pid).is_some_and(|args| args.iter().any(|a| a.contains(&needle)));
            let in_cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .map(|cwd: PathBuf| cwd.starts_with(dir))
                .unwrap_or(false);
            in_args || in_cwd
        })
        .collect()
}

/// Stops a child we started: SIGTERM, up to `grace` to exit, then SIGKILL;
/// always reaps it.
pub fn stop_child(mut child: std::process::Child, grace: Duration) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends SIGKILL to `pid` and waits up to `limit` for it to disappear (it must
/// not be our child, or it lingers as a zombie until reaped).
pub fn kill_and_wait(pid: i32, limit: Duration) -> bool {
    if !is_alive(pid) {
        return true;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !is_alive(pid) || is_zombie(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_comm = stat.rsplit_once(')')?.1.trim_start().to_string();
            after_comm.chars().next()
        })
        .is_some_and(|state| state == 'Z' || state == 'X')
}
