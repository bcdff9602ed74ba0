//! The whole benchmark in order: the big images pushed, the floor, then crust,
//! then containerd, then skopeo (the big-image reference point), one after the
//! other on the same registry and images.

use std::time::Instant;

use super::big_image::BigImages;
use super::machine::{self, Machine};
use super::options::Options;
use super::report::Report;
use super::results::{Outcome, RunResult};
use super::{containerd, crust, floor, skopeo};
use crate::fixtures::TestImages;

/// Runs every column and gathers the report.
pub async fn run(images: &TestImages, options: &Options) -> Report {
    let started = Instant::now();
    let machine = Machine::describe();
    let mut results = Vec::new();
    let mut notes = Vec::new();

    let big = if options.big_pulls == 0 {
        notes.push("big-image pulls skipped (--big-pulls 0)".to_string());
        None
    } else {
        eprintln!("crust-bench: building and pushing the big images...");
        match BigImages::push(images).await {
            Ok(big) => {
                notes.push(big.describe());
                Some(big)
            }
            Err(e) => {
                notes.push(format!("big-image pulls not run: {e:#}"));
                None
            }
        }
    };
    let big = big.as_ref();

    eprintln!("crust-bench: floor (bare runc, namespaces, registry fetch)...");
    results.push(floor::run(images, big, options).await);
    eprintln!("crust-bench: crust...");
    results.push(crust::run(images, big, options).await);
    if options.containerd {
        eprintln!("crust-bench: containerd...");
        results.push(containerd::run(images, big, options).await);
    } else {
        let mut skipped = RunResult::new("containerd");
        skipped.outcome = Outcome::Unavailable("skipped (--no-containerd)".into());
        results.push(skipped);
    }
    eprintln!("crust-bench: skopeo (big-image reference point)...");
    results.push(skopeo::run(big, options).await);
    let order = |name: &str| match name {
        "crust" => 0,
        "containerd" => 1,
        "floor" => 2,
        _ => 3,
    };
    results.sort_by_key(|r| order(&r.name));
    Report {
        machine,
        options: options.clone(),
        results,
        notes,
        elapsed: started.elapsed(),
        load_at_end: machine::load_average(),
    }
}
