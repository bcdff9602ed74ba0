//! Switching kubelet over to crust (`crustd install --switch-kubelet`): its
//! runtime endpoint is set in its KubeletConfiguration file and in kubeadm's
//! flags file (a flag there wins over the file), each kept first as
//! `<file>.before-crust`, and kubelet is restarted. A kubelet that already
//! points at crust is left alone, so the installer pod, once kubelet runs it
//! on crust, changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::files::{self, HostRoot};
use super::systemd::Systemd;

/// Where kubelet's settings are on the host (kubeadm's places by default).
#[derive(Clone, Debug)]
pub struct KubeletFiles {
    /// The KubeletConfiguration file (`kubelet --config`).
    pub config: PathBuf,
    /// kubeadm's environment file holding `KUBELET_KUBEADM_ARGS`.
    pub flags: PathBuf,
}

/// The suffix of the copy kept of each file before it is switched.
pub const BACKUP_SUFFIX: &str = ".before-crust";

/// The config keys and flags that name kubelet's runtime and image service.
const CONFIG_KEYS: [(&str, bool); 2] = [
    ("containerRuntimeEndpoint", true),
    ("imageServiceEndpoint", false),
];
const FLAGS: [&str; 2] = ["--container-runtime-endpoint", "--image-service-endpoint"];

/// kubelet's endpoint for a socket path (`unix:///run/crust/crust.sock`).
pub fn endpoint(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

/// Points kubelet at `endpoint` (crust's socket, `socket` on the host),
/// once crust answers there; restarts kubelet when a file changed.
pub fn switch(
    host: &HostRoot,
    files: &KubeletFiles,
    endpoint: &str,
    socket: &Path,
    systemd: &Systemd,
) -> Result<()> {
    let found = read_files(host, files)?;
    let mut rewrites = Vec::new();
    for (path, text, is_config) in &found {
        let new = if *is_config {
            point_config(text, endpoint).with_context(|| format!("in {}", path.display()))?
        } else {
            point_flags(text, endpoint)
        };
        if let Some(new) = new {
            rewrites.push((path.clone(), text.clone(), new));
        }
    }
    let after: Vec<(String, bool)> = found
        .iter()
        .map(|(path, text, is_config)| {
            let text = rewrites
                .iter()
                .find(|(p, _, _)| p == path)
                .map_or(text, |(_, _, new)| new);
            (text.clone(), *is_config)
        })
        .collect();
    if !after
        .iter()
        .any(|(text, is_config)| names(text, *is_config, endpoint))
    {
        bail!(
            "kubelet's config file {} is missing and its flags file {} sets no              --container-runtime-endpoint: point kubelet at {endpoint} by hand, or name its              config file with --kubelet-config",
            files.config.display(),
            files.flags.display()
        );
    }
    if rewrites.is_empty() {
        println!("kubelet already uses crust ({endpoint}): left as it is");
        return Ok(());
    }
    super::wait_serving(&host.path(socket))?;
    for (path, old, new) in &rewrites {
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        let backup = backup_path(path);
        let is_config = *path == host.path(&files.config);
        // A file that already names crust (only its image endpoint
        // changes) is not what kubelet had before crust: keep an older copy.
        if !(backup.exists() && names(old, is_config, endpoint)) {
            files::write_atomically(&backup, old.as_bytes(), mode)?;
        }
        files::write_atomically(path, new.as_bytes(), mode)?;
        println!(
            "pointed kubelet at {endpoint} in {} (the previous file is {})",
            path.display(),
            backup.display()
        );
    }
    systemd.systemctl(&["restart", "kubelet.service"])?;
    println!("restarted kubelet.service");
    Ok(())
}

/// True when kubelet's files (those that exist) point it at `endpoint`.
pub fn uses(host: &HostRoot, files: &KubeletFiles, endpoint: &str) -> bool {
    let Ok(found) = read_files(host, files) else {
        return false;
    };
    found
        .iter()
        .any(|(_, text, is_config)| names(text, *is_config, endpoint))
}

/// Whether a config file's (or flags file's) `text` sets kubelet's runtime
/// endpoint to `endpoint`.
fn names(text: &str, is_config: bool, endpoint: &str) -> bool {
    if !is_config {
        return flag_values(text, FLAGS[0]).any(|v| same_endpoint(v, endpoint));
    }
    if text.trim_start().starts_with('{') {
        return serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| {
            v["containerRuntimeEndpoint"]
                .as_str()
                .is_some_and(|v| same_endpoint(v, endpoint))
        });
    }
    config_value(text, "containerRuntimeEndpoint").is_some_and(|v| same_endpoint(&v, endpoint))
}

/// Where the copy of `path` from before the switch is kept.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(BACKUP_SUFFIX);
    PathBuf::from(name)
}

/// The kubelet files that exist: (where, text, whether it is the config file).
fn read_files(host: &HostRoot, files: &KubeletFiles) -> Result<Vec<(PathBuf, String, bool)>> {
    let mut found = Vec::new();
    for (host_path, is_config) in [(&files.config, true), (&files.flags, false)] {
        let path = host.path(host_path);
        match std::fs::read_to_string(&path) {
            Ok(text) => found.push((path, text, is_config)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    if found.is_empty() {
        bail!(
            "found neither kubelet's config file {} nor kubeadm's flags file {} on the host: \
             name kubelet's files with --kubelet-config and --kubelet-flags",
            files.config.display(),
            files.flags.display()
        );
    }
    Ok(found)
}

/// A KubeletConfiguration (YAML or JSON) pointed at `endpoint`; None when it
/// already is.
pub fn point_config(text: &str, endpoint: &str) -> Result<Option<String>> {
    if text.trim_start().starts_with('{') {
        return point_json_config(text, endpoint);
    }
    if config_value(text, "kind").as_deref() != Some("KubeletConfiguration") {
        bail!("not a KubeletConfiguration (no top-level `kind: KubeletConfiguration`)");
    }
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut changed = false;
    for (key, add_when_missing) in CONFIG_KEYS {
        let wanted = format!("{key}: {endpoint}");
        let at = lines.iter().position(|l| top_level_value(l, key).is_some());
        let current = at.and_then(|i| top_level_value(&lines[i], key));
        if let (Some(i), Some("")) = (at, current.as_deref())
            && lines
                .get(i + 1)
                .is_some_and(|next| next.starts_with([' ', '\t', '-']))
        {
            bail!("{key}'s value is on the lines after it: set it to {endpoint} by hand");
        }
        if !needs_pointing(current.as_deref(), endpoint, add_when_missing) {
            continue;
        }
        match at {
            Some(i) => lines[i] = wanted,
            None => lines.push(wanted),
        }
        changed = true;
    }
    if !changed {
        return Ok(None);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    if config_value(&out, "kind").as_deref() != Some("KubeletConfiguration")
        || !names(&out, true, endpoint)
    {
        bail!("the rewritten file would not point kubelet at {endpoint}: set it by hand");
    }
    Ok(Some(out))
}

fn point_json_config(text: &str, endpoint: &str) -> Result<Option<String>> {
    let mut v: serde_json::Value = serde_json::from_str(text).context("parsing JSON")?;
    let Some(obj) = v.as_object_mut() else {
        bail!("not a KubeletConfiguration object");
    };
    if obj.get("kind").and_then(|k| k.as_str()) != Some("KubeletConfiguration") {
        bail!("not a KubeletConfiguration (no \"kind\": \"KubeletConfiguration\")");
    }
    let mut changed = false;
    for (key, add_when_missing) in CONFIG_KEYS {
        let current = obj.get(key).and_then(|k| k.as_str());
        if needs_pointing(current, endpoint, add_when_missing) {
            obj.insert(key.to_string(), endpoint.into());
            changed = true;
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut out = serde_json::to_string_pretty(&v).context("writing JSON")?;
    out.push('\n');
    Ok(Some(out))
}

/// Whether a setting whose value is `current` must be set to `endpoint`: an
/// empty or missing one only when kubelet would otherwise use its default.
fn needs_pointing(current: Option<&str>, endpoint: &str, add_when_missing: bool) -> bool {
    match current {
        None | Some("") => add_when_missing,
        Some(v) => !same_endpoint(v, endpoint),
    }
}

/// The value of a top-level `key: value` line of a YAML document.
fn config_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| top_level_value(l, key))
}

/// `value` when `line` is the top-level `key: value` (quotes and a trailing
/// comment taken off).
fn top_level_value(line: &str, key: &str) -> Option<String> {
    let rest = line.strip_prefix(key)?.strip_prefix(':')?;
    let rest = rest.split(" #").next().unwrap_or("").trim();
    Some(rest.trim_matches(|c| c == '"' || c == '\'').to_string())
}

/// kubeadm's flags file with every runtime and image endpoint flag pointed
/// at `endpoint`; None when there is none to change. A file without the
/// flags is left to the config file.
pub fn point_flags(text: &str, endpoint: &str) -> Option<String> {
    let mut out = text.to_string();
    let mut changed = false;
    for flag in FLAGS {
        let mut from = 0;
        while let Some((start, end)) = flag_value_span(&out, flag, from) {
            if same_endpoint(&out[start..end], endpoint) {
                from = end;
            } else {
                out.replace_range(start..end, endpoint);
                from = start + endpoint.len();
                changed = true;
            }
        }
    }
    changed.then_some(out)
}

/// The values given to `flag` in `text`.
fn flag_values<'a>(text: &'a str, flag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let mut from = 0;
    std::iter::from_fn(move || {
        let (start, end) = flag_value_span(text, flag, from)?;
        from = end;
        Some(&text[start..end])
    })
}

/// Where the value of the next `flag=value` or `flag value` (any run of
/// blanks between) at or after `from` is; the value ends at whitespace or a
/// quote.
fn flag_value_span(text: &str, flag: &str, from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    loop {
        let i = at + text.get(at..)?.find(flag)?;
        let after = i + flag.len();
        let starts_word = i == 0 || matches!(text.as_bytes()[i - 1], b' ' | b'\t' | b'"' | b'\'');
        let sep = text.as_bytes().get(after).copied();
        if starts_word && matches!(sep, Some(b'=') | Some(b' ') | Some(b'\t')) {
            let start = match sep {
                Some(b'=') => after + 1,
                _ => {
                    after + text[after..].len()
                        - text[after..].trim_start_matches([' ', '\t']).len()
                }
            };
            let len = text[start..]
                .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .unwrap_or(text.len() - start);
            return Some((start, start + len));
        }
        at = after;
    }
}

/// Whether two endpoints name the same socket (`unix://` is optional).
fn same_endpoint(a: &str, b: &str) -> bool {
    let path = |s: &str| s.strip_prefix("unix://").unwrap_or(s).to_string();
    path(a) == path(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRUST: &str = "unix:///run/crust/crust.sock";

    const KUBEADM_CONFIG: &str = "\
apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
# the runtime
containerRuntimeEndpoint: unix:///var/run/containerd/containerd.sock
cgroupDriver: systemd
kind: KubeletConfiguration
";

    #[test]
    fn a_kubelet_configuration_is_pointed_at_crust_once() {
        let new = point_config(KUBEADM_CONFIG, CRUST).unwrap().unwrap();
        assert_eq!(
            new,
            KUBEADM_CONFIG.replace("unix:///var/run/containerd/containerd.sock", CRUST),
            "only the endpoint line changes"
        );
        assert_eq!(point_config(&new, CRUST).unwrap(), None);
        assert_eq!(
            config_value(&new, "containerRuntimeEndpoint").unwrap(),
            CRUST
        );
    }

    #[test]
    fn a_configuration_without_an_endpoint_gets_one() {
        let text = "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n";
        let new = point_config(text, CRUST).unwrap().unwrap();
        assert!(new.ends_with(&format!("containerRuntimeEndpoint: {CRUST}\n")));
        assert!(!new.contains("imageServiceEndpoint"));
    }

    #[test]
    fn an_image_endpoint_elsewhere_is_pointed_too() {
        let text = format!(
            "kind: KubeletConfiguration\ncontainerRuntimeEndpoint: \"{CRUST}\"\nimageServiceEndpoint: unix:///run/other.sock # images\n"
        );
        let new = point_config(&text, CRUST).unwrap().unwrap();
        assert!(new.contains(&format!("imageServiceEndpoint: {CRUST}\n")));
        assert_eq!(point_config(&new, CRUST).unwrap(), None);
    }

    #[test]
    fn a_value_on_its_own_line_is_refused() {
        let text = "kind: KubeletConfiguration\ncontainerRuntimeEndpoint:\n  unix:///run/containerd/containerd.sock\n";
        let err = point_config(text, CRUST).unwrap_err();
        assert!(err.to_string().contains("by hand"), "{err}");
    }

    #[test]
    fn json_configurations_and_other_documents() {
        let json = r#"{"kind": "KubeletConfiguration", "containerRuntimeEndpoint": "/run/containerd/containerd.sock"}"#;
        let new = point_config(json, CRUST).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&new).unwrap();
        assert_eq!(v["containerRuntimeEndpoint"], CRUST);
        assert_eq!(point_config(&new, CRUST).unwrap(), None);
        assert!(point_config("kind: Pod\n", CRUST).is_err());
        assert!(point_config("{\"kind\": \"Pod\"}", CRUST).is_err());
    }

    #[test]
    fn kubeadm_flags_are_pointed_at_crust_once() {
        let text = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.10\"\n";
        let new = point_flags(text, CRUST).unwrap();
        assert_eq!(
            new,
            format!(
                "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint={CRUST} --pod-infra-container-image=registry.k8s.io/pause:3.10\"\n"
            )
        );
        assert_eq!(point_flags(&new, CRUST), None);
        assert_eq!(flag_values(&new, FLAGS[0]).collect::<Vec<_>>(), vec![CRUST]);
        let spaced = "KUBELET_KUBEADM_ARGS=\"--image-service-endpoint /run/x.sock --container-runtime-endpoint=/run/x.sock\"";
        let new = point_flags(spaced, CRUST).unwrap();
        assert_eq!(
            new,
            format!(
                "KUBELET_KUBEADM_ARGS=\"--image-service-endpoint {CRUST} --container-runtime-endpoint={CRUST}\""
            )
        );
        assert_eq!(point_flags("KUBELET_KUBEADM_ARGS=\"--v=2\"\n", CRUST), None);
        assert_eq!(
            point_flags(
                "ARGS=\"--container-runtime-endpoint  \t/run/x.sock --v=2\"",
                CRUST
            )
            .unwrap(),
            format!("ARGS=\"--container-runtime-endpoint  \t{CRUST} --v=2\"")
        );
    }

    #[test]
    fn endpoints_compare_with_or_without_the_scheme() {
        assert!(same_endpoint("/run/crust/crust.sock", CRUST));
        assert!(!same_endpoint("/run/containerd/containerd.sock", CRUST));
        assert_eq!(
            backup_path(Path::new("/var/lib/kubelet/config.yaml")),
            PathBuf::from("/var/lib/kubelet/config.yaml.before-crust")
        );
    }
}
