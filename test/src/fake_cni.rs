//! CNI plugins a test scripts itself, installed in the test's own plugin
//! directory (`DaemonPaths::cni_bin`, one of crustd's `plugin_dirs`):
//!
//! - [`FakePlugin`]: answers VERSION, STATUS, ADD, DEL and CHECK, logging every
//!   call's environment and stdin so a test can check what crustd sent; its ADD
//!   prints a result the test chose, its STATUS fails while the test says so;
//! - [`SlowPlugin`]: a chained plugin that sleeps during ADD (to hold crustd
//!   between ADD and recording the sandbox) and then passes the previous result
//!   through by handing over to the reference `tuning` plugin, which does
//!   nothing else when it is given no settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::TestEnv;
use crate::network::REFERENCE_PLUGINS;

/// The CNI versions the fake plugin claims to speak.
const FAKE_VERSIONS: &str = r#"["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]"#;

/// One logged plugin call.
#[derive(Clone, Debug)]
pub struct FakeCall {
    /// When it was made: nanoseconds since the epoch, then the plugin's pid
    /// (calls of all fake plugins sort by it).
    pub stamp: String,
    /// CNI_COMMAND.
    pub command: String,
    /// The `CNI_*` environment variables the plugin saw.
    pub env: BTreeMap<String, String>,
    /// The config on its stdin.
    pub stdin: Value,
}

impl FakeCall {
    /// The environment variable `key` (empty when unset).
    pub fn var(&self, key: &str) -> &str {
        self.env.get(key).map(String::as_str).unwrap_or("")
    }
}

/// A scripted plugin named `name` whose calls are logged under `dir`.
#[derive(Debug)]
pub struct FakePlugin {
    /// The plugin's `type`.
    pub name: String,
    dir: PathBuf,
}

impl FakePlugin {
    /// Installs plugin `name` in `env`'s plugin directory; its ADD prints
    /// `result`.
    pub fn install(env: &TestEnv, name: &str, result: &Value) -> Result<FakePlugin> {
        let paths = env.daemon.paths();
        let dir = paths.base.join("fake-cni").join(name);
        std::fs::create_dir_all(dir.join("calls"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let plugin = FakePlugin {
            name: name.to_string(),
            dir,
        };
        plugin.set_result(result)?;
        let script = format!(
            r#"#!/bin/sh
# crust-e2e fake CNI plugin {name}: logs each call, answers as the test says.
dir='{dir}'
stdin=$(cat)
call="$dir/calls/$(date +%s%N)-$$"
{{
  printf 'CNI_COMMAND=%s\n' "$CNI_COMMAND"
  printf 'CNI_CONTAINERID=%s\n' "$CNI_CONTAINERID"
  printf 'CNI_NETNS=%s\n' "$CNI_NETNS"
  printf 'CNI_IFNAME=%s\n' "$CNI_IFNAME"
  printf 'CNI_ARGS=%s\n' "$CNI_ARGS"
  printf 'CNI_PATH=%s\n' "$CNI_PATH"
  printf 'STDIN=%s\n' "$stdin"
}} > "$call.tmp" && mv "$call.tmp" "$call"
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":{FAKE_VERSIONS}}}' ;;
STATUS)
  if [ -e "$dir/status-failing" ]; then
    echo '{{"cniVersion":"1.1.0","code":50,"msg":"{name} is switched off by the test"}}'
    exit 1
  fi ;;
ADD) cat "$dir/result.json" ;;
esac
exit 0
"#,
            dir = plugin.dir.display(),
        );
        write_executable(&paths.cni_bin.join(name), &script)?;
        Ok(plugin)
    }

    /// What the plugin's ADD prints from now on.
    pub fn set_result(&self, result: &Value) -> Result<()> {
        std::fs::write(self.dir.join("result.json"), serde_json::to_vec(result)?)
            .context("writing the fake plugin's result")
    }

    /// Makes STATUS fail with CNI error 50 ("plugin not available"), or succeed.
    pub fn set_status_failing(&self, failing: bool) -> Result<()> {
        let marker = self.dir.join("status-failing");
        if failing {
            std::fs::write(&marker, "")?;
        } else if marker.exists() {
            std::fs::remove_file(&marker)?;
        }
        Ok(())
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Result<Vec<FakeCall>> {
        let dir = self.dir.join("calls");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_none())
            .collect();
        files.sort();
        files.iter().map(|f| parse_call(f)).collect()
    }

    /// The calls with CNI_COMMAND `command`, oldest first.
    pub fn calls_of(&self, command: &str) -> Result<Vec<FakeCall>> {
        Ok(self
            .calls()?
            .into_iter()
            .filter(|c| c.command == command)
            .collect())
    }
}

fn parse_call(file: &Path) -> Result<FakeCall> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut env = BTreeMap::new();
    let mut stdin = Value::Null;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "STDIN" {
            stdin = serde_json::from_str(value)
                .with_context(|| format!("plugin stdin is not JSON: {value}"))?;
        } else {
            env.insert(key.to_string(), value.to_string());
        }
    }
    Ok(FakeCall {
        stamp: file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        command: env.get("CNI_COMMAND").cloned().unwrap_or_default(),
        env,
        stdin,
    })
}

/// A chained plugin that sleeps `seconds` in ADD before passing the previous
/// result through; it leaves a `started-<id>` marker when the sleep begins and
/// a `done-<id>` marker when it ends.
#[derive(Debug)]
pub struct SlowPlugin {
    /// The plugin's `type`.
    pub name: String,
    dir: PathBuf,
}

impl SlowPlugin {
    /// Installs plugin `name` in `env`'s plugin directory.
    pub fn install(env: &TestEnv, name: &str, seconds: u32) -> Result<SlowPlugin> {
        let paths = env.daemon.paths();
        let dir = paths.base.join("slow-cni").join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let script = format!(
            r#"#!/bin/sh
# crust-e2e slow CNI plugin {name}: ADD sleeps, then tuning passes prevResult on.
if [ "$CNI_COMMAND" = ADD ]; then
  touch '{dir}/started-'"$CNI_CONTAINERID"
  sleep {seconds}
  touch '{dir}/done-'"$CNI_CONTAINERID"
fi
exec {REFERENCE_PLUGINS}/tuning
"#,
            dir = dir.display(),
        );
        write_executable(&paths.cni_bin.join(name), &script)?;
        Ok(SlowPlugin {
            name: name.to_string(),
            dir,
        })
    }

    /// Ids of the pods whose ADD reached this plugin's sleep.
    pub fn started(&self) -> Vec<String> {
        self.markers("started-")
    }

    /// Ids of the pods whose ADD finished sleeping.
    pub fn done(&self) -> Vec<String> {
        self.markers("done-")
    }

    fn markers(&self, prefix: &str) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_prefix(prefix)
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
