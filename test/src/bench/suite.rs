//! The whole benchmark in order: the floor, then crust, then containerd, one
//! after the other on the same registry and images.

use std::time::Instant;

use super::machine::{self, Machine};
use super::options::Options;
use super::report::Report;
use super::{containerd, crust, floor};
use crate::fixtures::TestImages;

/// Runs every column and gathers the report.
pub async fn run(images: &TestImages, options: &Options) -> Report {
    let started = Instant::now();
    let machine = Machine::describe();
    let mut results = Vec::new();

    eprintln!("crust-bench: floor (bare runc, namespaces, registry fetch)...");
    results.push(floor::run(images, options).await);
    eprintln!("crust-bench: crust...");
    results.push(crust::run(images, options).await);
    if options.containerd {
        eprintln!("crust-bench: containerd...");
        results.push(containerd::run(images, options).await);
    } else {
        let mut skipped = super::results::RunResult::new("containerd");
        skipped.outcome = super::results::Outcome::Unavailable("skipped (--no-containerd)".into());
        results.push(skipped);
    }
    let order = |name: &str| match name {
        "crust" => 0,
        "containerd" => 1,
        _ => 2,
    };
    results.sort_by_key(|r| order(&r.name));
    Report {
        machine,
        options: options.clone(),
        results,
        elapsed: started.elapsed(),
        load_at_end: machine::load_average(),
    }
}
