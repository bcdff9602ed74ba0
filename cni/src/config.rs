//! Network configuration files: the first `.conflist`, `.conf` or `.json` file
//! in lexical order of the first config directory that has one, as libcni picks
//! it. A single-plugin `.conf` becomes a one-plugin list.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// One network: its list of plugins and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkList {
    /// `name` of the network.
    pub name: String,
    /// `cniVersion` of the network.
    pub cni_version: String,
    /// Skip CHECK.
    pub disable_check: bool,
    /// The plugin configurations, in order.
    pub plugins: Vec<Map<String, Value>>,
    /// The file it was read from.
    pub source: PathBuf,
}

impl NetworkList {
    /// The `type` of plugin `i`.
    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins[i]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The capabilities plugin `i` declares (`"capabilities": {"portMappings": true}`).
    pub fn capabilities(&self, i: usize) -> Vec<String> {
        self.plugins[i]
            .get("capabilities")
            .and_then(Value::as_object)
            .map(|caps| {
                caps.iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The list as JSON (for the attachment cache).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins,
        })
    }

    /// Parses a `.conflist` (or a cached list).
    pub fn from_list(v: &Value, source: &Path) -> Result<NetworkList, String> {
        let obj = v.as_object().ok_or("the file is not a JSON object")?;
        let name = text(obj, "name")?;
        let cni_version = text(obj, "cniVersion")?;
        let plugins: Vec<Map<String, Value>> = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or("it has no \"plugins\" list")?
            .iter()
            .map(|p| {
                p.as_object()
                    .cloned()
                    .ok_or_else(|| "a plugin entry is not an object".to_string())
            })
            .collect::<Result<_, _>>()?;
        let list = NetworkList {
            name,
            cni_version,
            disable_check: obj
                .get("disableCheck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            plugins,
            source: source.to_path_buf(),
        };
        list.validate()?;
        Ok(list)
    }

    /// Parses a single-plugin `.conf` / `.json` into a one-plugin list.
    pub fn from_single(v: &Value, source: &Path) -> Result<NetworkList, String> {
        let obj = v.as_object().ok_or("the file is not a JSON object")?;
        let list = NetworkList {
            name: text(obj, "name")?,
            cni_version: text(obj, "cniVersion")?,
            disable_check: false,
            plugins: vec![obj.clone()],
            source: source.to_path_buf(),
        };
        list.validate()?;
        Ok(list)
    }

    fn validate(&self) -> Result<(), String> {
        if self.plugins.is_empty() {
            return Err("its plugin list is empty".into());
        }
        if !crate::SUPPORTED_VERSIONS.contains(&self.cni_version.as_str()) {
            return Err(format!(
                "cniVersion {:?} is not supported (crust speaks {})",
                self.cni_version,
                crate::SUPPORTED_VERSIONS.join(", ")
            ));
        }
        for i in 0..self.plugins.len() {
            let t = self.plugin_type(i);
            if t.is_empty() {
                return Err(format!("plugin {} has no \"type\"", i + 1));
            }
            if t.contains('/') || t.starts_with('.') {
                return Err(format!("plugin type {t:?} is not a plain binary name"));
            }
        }
        Ok(())
    }
}

fn text(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(format!("it has no \"{key}\"")),
    }
}

/// The network config file libcni would pick from `dirs`: the first directory
/// holding any `.conflist`, `.conf` or `.json` file, then the first such file
/// in lexical order. None when there is none.
pub fn pick_file(dirs: &[PathBuf]) -> Option<PathBuf> {
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                ) && p.is_file()
            })
            .collect();
        files.sort();
        if let Some(first) = files.into_iter().next() {
            return Some(first);
        }
    }
    None
}

/// Loads a network config file.
pub fn load(path: &Path) -> Result<NetworkList, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so a FIFO dropped into the directory cannot hang Status
    // or RunPodSandbox; it is refused as not a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).bits())
        .open(path)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect it: {e}"))?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "it is {} bytes, more than the {MAX_CONFIG_BYTES} read",
            meta.len()
        ));
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("it is not valid JSON: {e}"))?;
    if path.extension().and_then(|e| e.to_str()) == Some("conflist") {
        NetworkList::from_list(&v, path)
    } else {
        NetworkList::from_single(&v, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("crust-cni-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tmp("fifo");
        let fifo = d.join("10-net.conflist");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(load(&fifo).unwrap_err(), "it is not a regular file");
        assert_eq!(pick_file(std::slice::from_ref(&d)), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn picks_first_file_in_lexical_order() {
        let d = tmp("pick");
        assert_eq!(pick_file(std::slice::from_ref(&d)), None);
        std::fs::write(d.join("20-b.conflist"), "{}").unwrap();
        std::fs::write(d.join("10-a.conf"), "{}").unwrap();
        std::fs::write(d.join("00-readme.txt"), "x").unwrap();
        assert_eq!(
            pick_file(std::slice::from_ref(&d)),
            Some(d.join("10-a.conf"))
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn loads_lists_and_single_configs() {
        let d = tmp("load");
        let list = d.join("10-net.conflist");
        std::fs::write(
            &list,
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[
                {"type":"bridge","bridge":"cni0"},
                {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let l = load(&list).unwrap();
        assert_eq!((l.name.as_str(), l.plugins.len()), ("pods", 2));
        assert_eq!(l.plugin_type(1), "portmap");
        assert_eq!(l.capabilities(1), vec!["portMappings".to_string()]);

        let single = d.join("10-one.conf");
        std::fs::write(
            &single,
            r#"{"cniVersion":"0.4.0","name":"one","type":"loopback"}"#,
        )
        .unwrap();
        let l = load(&single).unwrap();
        assert_eq!(l.plugin_type(0), "loopback");

        for (file, body, why) in [
            ("a.conflist", "not json", "valid JSON"),
            (
                "b.conflist",
                r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
                "empty",
            ),
            (
                "c.conflist",
                r#"{"cniVersion":"9.9.9","name":"x","plugins":[{"type":"a"}]}"#,
                "not supported",
            ),
            (
                "d.conf",
                r#"{"cniVersion":"1.0.0","name":"x","type":"../evil"}"#,
                "plain binary",
            ),
            ("e.conf", r#"{"cniVersion":"1.0.0","type":"a"}"#, "\"name\""),
        ] {
            let p = d.join(file);
            std::fs::write(&p, body).unwrap();
            let err = load(&p).unwrap_err();
            assert!(err.contains(why), "{file}: {err}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
