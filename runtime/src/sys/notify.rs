//! Waiting for a file to appear in a directory without polling it: inotify wakes
//! the waiter the moment the shim renames its exit file into place.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

pub use nix::sys::inotify::WatchDescriptor;

/// What a [`RenameWatch`] saw.
#[derive(Debug)]
pub enum Renamed {
    /// `name` was renamed into (or created in) the watched directory.
    Into(WatchDescriptor, OsString),
    /// The watched directory is gone; its watch ended.
    Gone(WatchDescriptor),
}

/// Many directories watched for files renamed into them, with one inotify
/// instance: one thread learns of every container's exit file the moment
/// its shim puts it in place.
pub struct RenameWatch {
    inotify: Inotify,
}

impl RenameWatch {
    /// A watch on nothing yet.
    pub fn new() -> io::Result<RenameWatch> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        Ok(RenameWatch { inotify })
    }

    /// Starts watching `dir`.
    pub fn add(&self, dir: &Path) -> io::Result<WatchDescriptor> {
        Ok(self
            .inotify
            .add_watch(dir, AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE)?)
    }

    /// Stops watching a directory (it may be gone already).
    pub fn remove(&self, wd: WatchDescriptor) {
        let _ = self.inotify.rm_watch(wd);
    }

    /// What happened within `timeout` (nothing when it passes quietly).
    pub fn wait(&self, timeout: Duration) -> Vec<Renamed> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => {}
            _ => return Vec::new(),
        }
        let Ok(events) = self.inotify.read_events() else {
            return Vec::new();
        };
        events
            .into_iter()
            .filter_map(|e| {
                if e.mask.contains(AddWatchFlags::IN_IGNORED) {
                    Some(Renamed::Gone(e.wd))
                } else {
                    e.name.map(|name| Renamed::Into(e.wd, name))
                }
            })
            .collect()
    }
}

/// Longest sleep between two looks at `done`, so a condition inotify cannot
/// see (a shim that died without writing the file) is still noticed.
const LONGEST_NAP: Duration = Duration::from_millis(100);

/// Calls `done` until it returns true or `deadline` passes, sleeping in between
/// until something is created in or renamed into `dir` (or a short nap ends).
/// Returns whether `done` returned true.
pub fn wait_in_dir(dir: &Path, deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    let watch = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .ok()
        .filter(|i| {
            i.add_watch(dir, AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE)
                .is_ok()
        });
    let mut nap = Duration::from_millis(5);
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let wait = (deadline - now).min(if watch.is_some() { LONGEST_NAP } else { nap });
        match &watch {
            Some(inotify) => {
                let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
                if let Ok(n) = poll(&mut fds, PollTimeout::from(ms))
                    && n > 0
                {
                    let _ = inotify.read_events();
                }
            }
            None => {
                std::thread::sleep(wait);
                nap = (nap * 2).min(LONGEST_NAP);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_watch_sees_files_renamed_in_and_directories_going() {
        let dir = std::env::temp_dir().join(format!("crust-renamewatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let watch = RenameWatch::new().unwrap();
        let wd = watch.add(&dir).unwrap();
        assert!(watch.wait(Duration::from_millis(10)).is_empty());
        std::fs::write(dir.join(".tmp"), b"x").unwrap();
        std::fs::rename(dir.join(".tmp"), dir.join("exit")).unwrap();
        let seen = watch.wait(Duration::from_secs(5));
        assert!(
            seen.iter()
                .any(|r| matches!(r, Renamed::Into(w, n) if *w == wd && n == "exit")),
            "{seen:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let mut gone = false;
        for _ in 0..10 {
            gone |= watch
                .wait(Duration::from_millis(500))
                .iter()
                .any(|r| matches!(r, Renamed::Gone(w) if *w == wd));
            if gone {
                break;
            }
        }
        assert!(gone, "removing the directory ends its watch");
    }

    #[test]
    fn wakes_when_a_file_is_renamed_in() {
        let dir = std::env::temp_dir().join(format!("crust-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("exit");
        let writer = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                std::fs::write(dir.join(".tmp"), b"x").unwrap();
                std::fs::rename(dir.join(".tmp"), dir.join("exit")).unwrap();
            })
        };
        let began = Instant::now();
        let found = wait_in_dir(&dir, Instant::now() + Duration::from_secs(5), || {
            target.exists()
        });
        assert!(found);
        assert!(began.elapsed() < Duration::from_secs(1));
        writer.join().unwrap();
        assert!(!wait_in_dir(
            &dir,
            Instant::now() + Duration::from_millis(20),
            || false
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
