//! Running one CNI plugin binary: the environment, the config on stdin, the
//! result or the CNI error JSON on stdout, and a time limit.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde_json::Value;

use crate::{Error, Result};

/// Longest output read from a plugin.
const MAX_OUTPUT: u64 = 4 << 20;

/// One plugin call.
pub struct Call<'a> {
    /// ADD, DEL, CHECK, STATUS or VERSION.
    pub command: &'a str,
    /// The plugin's `type`.
    pub plugin: &'a str,
    /// Directories searched for the binary (also passed as CNI_PATH).
    pub plugin_dirs: &'a [PathBuf],
    /// CNI_CONTAINERID.
    pub container_id: &'a str,
    /// CNI_NETNS (may be empty for DEL of a namespace that is gone).
    pub netns: &'a str,
    /// CNI_IFNAME.
    pub ifname: &'a str,
    /// CNI_ARGS.
    pub args: &'a str,
    /// The plugin's config, as written to its stdin.
    pub config: &'a Value,
    /// How long the plugin may run.
    pub timeout: Duration,
}

/// Finds plugin `name` in `dirs`.
pub fn find_plugin(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Runs the plugin; returns its stdout parsed as JSON (Null when empty).
pub fn run(call: &Call<'_>) -> Result<Value> {
    let binary = find_plugin(call.plugin, call.plugin_dirs).ok_or_else(|| {
        Error::NotReady(format!(
            "CNI plugin {:?} not found in {}",
            call.plugin,
            join_paths(call.plugin_dirs)
        ))
    })?;
    let input = serde_json::to_vec(call.config).context("encoding the plugin config")?;
    let mut command = Command::new(&binary);
    command
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", join_paths(call.plugin_dirs));
    let finished =
        crust_child::run(&mut command, &input, call.timeout, MAX_OUTPUT).map_err(|e| {
            Error::Other(anyhow!(
                "CNI plugin {} {} ({}): {e}",
                call.plugin,
                call.command,
                binary.display()
            ))
        })?;
    let (status, out, err) = (finished.status, finished.stdout, finished.stderr);
    if status.success() {
        if out.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(&out).map_err(|e| {
            Error::Other(anyhow!(
                "CNI plugin {} {} printed a result that is not JSON: {e}",
                call.plugin,
                call.command
            ))
        });
    }
    Err(plugin_error(call, &out, &err, status.code()))
}

/// The CNI error a failed plugin printed (or what we know when it printed none).
fn plugin_error(call: &Call<'_>, out: &[u8], err: &[u8], exit: Option<i32>) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(out).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_u64)
        .unwrap_or(999) as u32;
    let mut msg = field("msg");
    if msg.is_empty() {
        let text = String::from_utf8_lossy(if out.is_empty() { err } else { out });
        msg = format!(
            "exited with {} and no CNI error: {}",
            exit.map_or("a signal".to_string(), |c| format!("status {c}")),
            text.trim()
        );
    }
    Error::Plugin {
        plugin: call.plugin.to_string(),
        command: call.command.to_string(),
        code,
        msg,
        details: field("details"),
    }
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn plugin_dir(script: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "crust-cni-invoke-{}-{}",
            std::process::id(),
            script.len()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("fake");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn call<'a>(dirs: &'a [PathBuf], config: &'a Value) -> Call<'a> {
        Call {
            command: "ADD",
            plugin: "fake",
            plugin_dirs: dirs,
            container_id: "c1",
            netns: "/run/netns/x",
            ifname: "eth0",
            args: "IgnoreUnknown=1",
            config,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn passes_env_and_stdin_and_reads_result() {
        let dirs = vec![plugin_dir(
            "#!/bin/sh\nread -r cfg\necho \"{\\\"cmd\\\":\\\"$CNI_COMMAND\\\",\\\"if\\\":\\\"$CNI_IFNAME\\\",\\\"cfg\\\":$cfg}\"\n",
        )];
        let config = serde_json::json!({"name": "n"});
        let out = run(&call(&dirs, &config)).unwrap();
        assert_eq!(out["cmd"], "ADD");
        assert_eq!(out["if"], "eth0");
        assert_eq!(out["cfg"]["name"], "n");
        std::fs::remove_dir_all(&dirs[0]).unwrap();
    }

    #[test]
    fn reports_cni_errors() {
        let dirs = vec![plugin_dir(
            "#!/bin/sh\necho '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"no more addresses\",\"details\":\"pool full\"}'\nexit 1\n",
        )];
        let config = serde_json::json!({});
        match run(&call(&dirs, &config)) {
            Err(Error::Plugin {
                code, msg, details, ..
            }) => {
                assert_eq!(
                    (code, msg.as_str(), details.as_str()),
                    (11, "no more addresses", "pool full")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        std::fs::remove_dir_all(&dirs[0]).unwrap();
    }

    #[test]
    fn a_plugin_that_forks_or_hangs_does_not_hold_crustd() {
        let dirs = vec![plugin_dir(
            "#!/bin/sh\nsleep 30 &\necho '{\"cniVersion\":\"1.0.0\"}'\n",
        )];
        let config = serde_json::json!({});
        let start = std::time::Instant::now();
        let out = run(&call(&dirs, &config)).unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(start.elapsed() < Duration::from_secs(3));
        std::fs::remove_dir_all(&dirs[0]).unwrap();

        let dirs = vec![plugin_dir("#!/bin/sh\nsleep 30 & wait\n")];
        let mut hanging = call(&dirs, &config);
        hanging.timeout = Duration::from_millis(300);
        let start = std::time::Instant::now();
        let err = run(&hanging).unwrap_err().to_string();
        assert!(err.contains("did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
        std::fs::remove_dir_all(&dirs[0]).unwrap();
    }

    #[test]
    fn missing_plugin_is_not_ready() {
        let config = serde_json::json!({});
        let dirs = vec![PathBuf::from("/nonexistent-crust-cni")];
        assert!(matches!(
            run(&call(&dirs, &config)),
            Err(Error::NotReady(_))
        ));
    }
}
