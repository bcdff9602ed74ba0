//! `crust-bench`: measures crustd against containerd and bare runc on this
//! machine and prints a table of ratios (see `crust_e2e::bench`). Needs root,
//! runc, docker-registry and busybox-static; containerd and skopeo are
//! optional.

use std::process::ExitCode;

use crust_e2e::bench::options::Options;
use crust_e2e::bench::results::Outcome;
use crust_e2e::bench::suite;
use crust_e2e::{TestImages, binaries, requirements};

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("crust-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("CRUST_E2E_LOG_LEVEL").is_none() {
        // SAFETY: no other thread exists yet. crustd logs at info, like containerd.
        unsafe { std::env::set_var("CRUST_E2E_LOG_LEVEL", "info") };
    }
    if let Some(reason) = requirements::skip_reason() {
        eprintln!("crust-bench: cannot run: {reason}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = binaries::locate() {
        eprintln!("crust-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let images = match TestImages::shared() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("crust-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crust-bench: building a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(suite::run(images, &options));
    drop(runtime);
    println!("{}", report.render());
    match report.write_json(&options.json) {
        Ok(()) => println!("JSON report: {}", options.json.display()),
        Err(e) => eprintln!("crust-bench: {e:#}"),
    }
    if let Some(path) = &options.markdown {
        let command = format!(
            "make bench BENCH_N={} BENCH_PULLS={} BENCH_BIG_PULLS={}",
            options.n, options.pulls, options.big_pulls
        );
        let date = jiff::Timestamp::now()
            .strftime("%Y-%m-%d %H:%M UTC")
            .to_string();
        let text = crust_e2e::bench::markdown::render(&report, &command, &date);
        match std::fs::write(path, text) {
            Ok(()) => println!("Markdown report: {}", path.display()),
            Err(e) => eprintln!("crust-bench: writing {}: {e}", path.display()),
        }
    }
    let broken = report
        .results
        .iter()
        .any(|r| matches!(r.name.as_str(), "crust" | "floor") && r.outcome != Outcome::Completed);
    if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
