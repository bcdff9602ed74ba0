//! Running critest, the CRI validation suite, against a crustd and reading
//! its verdict from ginkgo's JSON report.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// What critest concluded about each spec it ran.
#[derive(Debug, Default)]
pub struct CritestReport {
    /// Full names of the specs that passed.
    pub passed: Vec<String>,
    /// Full names of the specs that failed, with critest's failure message.
    pub failed: Vec<(String, String)>,
    /// Full names of the specs skipped (by name, or by the spec itself).
    pub skipped: Vec<String>,
}

impl CritestReport {
    /// `N passed, M failed, K skipped`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed.len(),
            self.failed.len(),
            self.skipped.len()
        )
    }
}

/// How to run critest.
#[derive(Debug)]
pub struct CritestRun<'a> {
    /// The critest binary.
    pub critest: &'a Path,
    /// crustd's CRI socket.
    pub socket: &'a Path,
    /// Where critest runs and writes its output (`critest.log`) and report
    /// (`critest.json`).
    pub workdir: &'a Path,
    /// Ginkgo `--skip` regular expressions (specs not run at all).
    pub skip: &'a [String],
    /// How long the whole suite may take before it is killed.
    pub limit: Duration,
}

impl CritestRun<'_> {
    /// Where critest's console output goes.
    pub fn log_path(&self) -> PathBuf {
        self.workdir.join("critest.log")
    }

    /// Runs the suite to its end and reads the report. A failing spec is not
    /// an error here; critest crashing, hanging or writing no report is.
    pub fn run(&self) -> Result<CritestReport> {
        let report_path = self.workdir.join("critest.json");
        let log = File::create(self.log_path())
            .with_context(|| format!("creating {}", self.log_path().display()))?;
        let endpoint = format!("unix://{}", self.socket.display());
        let mut command = Command::new(self.critest);
        command
            .current_dir(self.workdir)
            .arg(format!("--runtime-endpoint={endpoint}"))
            .arg(format!("--image-endpoint={endpoint}"))
            .arg(format!(
                "--config={}",
                self.workdir.join("crictl.yaml").display()
            ))
            .arg(format!("--ginkgo.json-report={}", report_path.display()))
            .arg("--ginkgo.no-color")
            .arg(format!("--ginkgo.timeout={}s", self.limit.as_secs()));
        for pattern in self.skip {
            command.arg(format!("--ginkgo.skip={pattern}"));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.critest.display()))?;
        let deadline = Instant::now() + self.limit + Duration::from_secs(60);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "critest did not finish within {:?}; its output is in {}",
                    self.limit,
                    self.log_path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let text = std::fs::read_to_string(&report_path).with_context(|| {
            format!(
                "critest wrote no report at {}; its output is in {}",
                report_path.display(),
                self.log_path().display()
            )
        })?;
        parse_report(&text)
    }
}

/// Reads ginkgo's JSON report: an array of suite reports, each with its
/// `SpecReports`. Only `It` specs count; setup and report nodes that fail are
/// reported as failures under their node type.
pub fn parse_report(text: &str) -> Result<CritestReport> {
    let suites: Value = serde_json::from_str(text).context("critest's report is not JSON")?;
    let mut report = CritestReport::default();
    for spec in suites
        .as_array()
        .context("critest's report is not a list of suites")?
        .iter()
        .flat_map(|suite| suite["SpecReports"].as_array().into_iter().flatten())
    {
        let kind = spec["LeafNodeType"].as_str().unwrap_or_default();
        let state = spec["State"].as_str().unwrap_or_default();
        let name = spec_name(spec);
        match (kind, state) {
            ("It", "passed") => report.passed.push(name),
            ("It", "skipped" | "pending") => report.skipped.push(name),
            (_, "passed" | "skipped" | "pending") => {}
            _ => {
                let message = spec["Failure"]["Message"]
                    .as_str()
                    .unwrap_or(state)
                    .to_string();
                let name = if kind == "It" {
                    name
                } else {
                    format!("[{kind}] {name}").trim_end().to_string()
                };
                report.failed.push((name, message));
            }
        }
    }
    Ok(report)
}

/// A spec's full name: its containers' texts and its own, space-separated,
/// as ginkgo prints it.
fn spec_name(spec: &Value) -> String {
    let mut parts: Vec<&str> = spec["ContainerHierarchyTexts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    parts.push(spec["LeafNodeText"].as_str().unwrap_or_default());
    parts.retain(|p| !p.is_empty());
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ginkgo_reports() {
        let text = r#"[{"SpecReports":[
            {"LeafNodeType":"It","State":"passed","ContainerHierarchyTexts":["[k8s.io] Image Manager"],"LeafNodeText":"pulls"},
            {"LeafNodeType":"It","State":"failed","ContainerHierarchyTexts":["[k8s.io] Streaming","exec"],"LeafNodeText":"works","Failure":{"Message":"Unimplemented"}},
            {"LeafNodeType":"It","State":"skipped","ContainerHierarchyTexts":null,"LeafNodeText":"digest"},
            {"LeafNodeType":"ReportAfterSuite","State":"passed","LeafNodeText":"json"},
            {"LeafNodeType":"BeforeSuite","State":"panicked","LeafNodeText":"","Failure":{"Message":"boom"}}
        ]}]"#;
        let report = parse_report(text).unwrap();
        assert_eq!(report.passed, vec!["[k8s.io] Image Manager pulls"]);
        let failed: Vec<(&str, &str)> = report
            .failed
            .iter()
            .map(|(n, m)| (n.as_str(), m.as_str()))
            .collect();
        assert_eq!(
            failed,
            [
                ("[k8s.io] Streaming exec works", "Unimplemented"),
                ("[BeforeSuite]", "boom"),
            ]
        );
        assert_eq!(report.skipped, vec!["digest"]);
        assert_eq!(report.summary(), "1 passed, 2 failed, 1 skipped");
    }
}
