//! What the host must provide for the end-to-end tests, and why a test is skipped.

use std::path::{Path, PathBuf};

/// Directories searched for tools besides `$PATH` (root's sbin dirs are often
/// missing from a test runner's `PATH`).
const EXTRA_DIRS: [&str; 4] = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/sbin"];

/// Returns why the end-to-end tests cannot run on this host, or `None` if they can.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (crustd mounts overlays and creates namespaces)".into());
    }
    for tool in ["runc", "docker-registry", "busybox"] {
        if find_program(tool).is_none() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.lines().any(|l| l.ends_with("\toverlay")) {
        return Some("the kernel has no overlay filesystem".into());
    }
    None
}

/// Reports on stderr (uncaptured, so it shows in `cargo test` output) that test
/// `name` was skipped and why. Under CI (`CI` set to anything but `false`
/// or empty) a skip is a failure instead: a run that proved nothing must
/// not pass.
pub fn note_skip(name: &str, reason: &str) {
    use std::io::Write;
    assert!(
        !in_ci(),
        "{name} cannot run here ({reason}), and CI is set, where no test may be skipped"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {reason}");
}

/// True under CI, as CI services (and `.ci/run`) say: `CI` is set, and
/// neither empty nor `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Finds an executable by name in `$PATH` and the usual sbin directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

/// Returns `$PATH` with the sbin directories appended, for child processes that
/// must find runc.
pub fn child_path() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for extra in EXTRA_DIRS.iter().chain(["/usr/bin", "/bin"].iter()) {
        let extra = PathBuf::from(extra);
        if !dirs.contains(&extra) {
            dirs.push(extra);
        }
    }
    std::env::join_paths(dirs).unwrap_or(path)
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
