//! Waiting for a file to appear in a directory without polling it: inotify wakes
//! the waiter the moment the shim renames its exit file into place.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

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
