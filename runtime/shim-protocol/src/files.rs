//! The files a shim keeps in its container's bundle, and the crash-safe way
//! it replaces them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The control socket ([`crate::control`]).
pub const SHIM_SOCK: &str = "shim.sock";
/// The attach socket ([`crate::attach`]).
pub const ATTACH_SOCK: &str = "attach.sock";
/// The exit record ([`crate::ExitRecord`]), renamed into place once the
/// container's init has exited.
pub const EXIT_FILE: &str = "exit";
/// The detached shim's pid, written before it runs `runc create`, so a
/// create that is abandoned can find and kill it.
pub const SHIM_PID_FILE: &str = "shim.pid";

/// Replaces `path` with `data` atomically: writes `<path>.tmp`, fsyncs it,
/// renames it over `path`, then fsyncs the directory (best effort). A
/// reader sees the old file or the whole new one, never a torn one.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_file_atomically() {
        let dir = std::env::temp_dir().join(format!("crust-proto-files-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("tmp dir");
        let p = dir.join(EXIT_FILE);
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert!(!dir.join("exit.tmp").exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
