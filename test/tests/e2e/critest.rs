//! `make conformance`, part one: critest, the CRI validation suite, against
//! crustd (see `crust_e2e::conformance`). Ignored by `make test`: it needs
//! critest from `../shared/tools`, which the Makefile unpacks and names in
//! `CRUST_CRITEST`.

use std::time::Duration;

use anyhow::{Result, ensure};
use crust_e2e::conformance::critest::CritestRun;
use crust_e2e::conformance::{self, CRITEST_ENV, sysv_shm};
use crust_e2e::network::TestNetwork;
use crust_e2e::{TestEnv, run_with_timeout};

/// How long critest may run, and the whole test with image builds around it.
const CRITEST_LIMIT: Duration = Duration::from_secs(12 * 60);

/// critest specs that fail today because crust lacks what they test, each
/// with the issue that adds it. The list only shrinks: a spec on it that
/// passes is reported so it can be struck off.
const EXPECTED_FAILURES: &[(&str, &str)] = &[];

/// Environment variable holding a ginkgo regular expression of specs to skip
/// by name (the Makefile's `CRITEST_SKIP`, which says why for each).
const SKIP_ENV: &str = "CRUST_CRITEST_SKIP";

#[test]
#[ignore = "needs critest from ../shared/tools: run by `make conformance`"]
fn critest_validation_suite() {
    run_with_timeout(
        "critest_validation_suite",
        CRITEST_LIMIT + Duration::from_secs(180),
        critest_suite,
    );
}

async fn critest_suite(env: &mut TestEnv) -> Result<()> {
    let critest = conformance::tool(CRITEST_ENV)?;
    conformance::serve_images(env).await?;
    let network = TestNetwork::claim(env)?;
    network.install(&network.standard_conflist("1.0.0"))?;

    let workdir = env.daemon.paths().base.join("critest");
    std::fs::create_dir_all(&workdir)?;
    let skip: Vec<String> = std::env::var(SKIP_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .into_iter()
        .collect();
    let socket = env.daemon.paths().socket.clone();
    let shm_before = sysv_shm::segments();
    let log = workdir.join("critest.log");
    let report = tokio::task::spawn_blocking(move || {
        CritestRun {
            critest: &critest,
            socket: &socket,
            workdir: &workdir,
            skip: &skip,
            limit: CRITEST_LIMIT,
        }
        .run()
    })
    .await;
    for problem in sysv_shm::remove_new(&shm_before) {
        eprintln!("critest cleanup: {problem}");
    }
    drop(network);
    let report = report??;

    println!("critest: {}", report.summary());
    for name in &report.skipped {
        println!("critest: skipped: {name}");
    }
    let mut unexpected = Vec::new();
    for (name, message) in &report.failed {
        match EXPECTED_FAILURES.iter().find(|(n, _)| n == name) {
            Some((_, why)) => println!("critest: expected failure ({why}): {name}"),
            None => {
                println!("critest: FAILED: {name}\n{message}\n");
                unexpected.push(name.clone());
            }
        }
    }
    for (name, why) in EXPECTED_FAILURES {
        if report.passed.iter().any(|p| p == name) {
            println!("critest: now passes, strike it off EXPECTED_FAILURES ({why}): {name}");
        }
    }
    if !unexpected.is_empty() {
        let _ = std::fs::copy(&log, std::env::temp_dir().join("crust-critest.log"));
    }
    ensure!(
        unexpected.is_empty(),
        "{} critest specs failed that must pass ({}); critest's output is kept at {}:\n{}",
        unexpected.len(),
        report.summary(),
        std::env::temp_dir().join("crust-critest.log").display(),
        unexpected.join("\n")
    );
    Ok(())
}
