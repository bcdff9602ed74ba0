//! `kill_all` in a process of its own: it kills every helper of the
//! process, which would cut short the unit tests running beside it.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn kill_all_ends_the_helpers_still_running() {
    let start = Instant::now();
    let helper = std::thread::spawn(|| {
        crust_child::run(
            Command::new("/bin/sh").args(["-c", "sleep 30 & wait"]),
            b"",
            Duration::from_secs(60),
            1024,
        )
    });
    // Until the helper has started (nothing else runs in this process).
    std::thread::sleep(Duration::from_millis(300));
    crust_child::kill_all();
    let done = helper.join().unwrap().unwrap();
    assert!(!done.status.success());
    assert!(start.elapsed() < Duration::from_secs(10));
}
