//! The pod network: the current network configuration (picked up again when the
//! config directory changes, without a restart) and ADD, DEL, CHECK and STATUS
//! across its plugin chain, with each plugin's result handed to the next as
//! `prevResult`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::cache::{Cache, Record};
use crate::capabilities::Capabilities;
use crate::config::{self, NetworkList};
use crate::invoke::{self, Call};
use crate::{Error, Result, result};

/// How long one plugin call that changes a pod's network (ADD, DEL, CHECK)
/// may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a STATUS or VERSION query may take: it answers kubelet's Status
/// RPC, which must say "network not ready" before kubelet's own deadline
/// rather than time out as if the whole runtime were down.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The CNI error code a plugin's STATUS uses for "not available".
const PLUGIN_NOT_AVAILABLE: u32 = 50;

/// Where CNI's configuration and plugins live, and where attachments are recorded.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Config directories, searched in order.
    pub conf_dirs: Vec<PathBuf>,
    /// Plugin directories, searched in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// Attachment record directory.
    pub cache_dir: PathBuf,
}

/// One pod to attach: who it is, its netns, and what plugins may ask for.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The sandbox id.
    pub container_id: String,
    /// The pod's pinned network namespace.
    pub netns: PathBuf,
    /// Pod name, namespace and uid (for CNI_ARGS).
    pub pod_name: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod uid.
    pub pod_uid: String,
    /// runtimeConfig inputs.
    pub capabilities: Capabilities,
}

/// What ADD gave the pod.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    /// Addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// The final result, as the last plugin printed it.
    pub result: Value,
}

/// Identity of a config file version: path, inode, mtime, length (the inode
/// catches a file replaced by rename with the same size and timestamp).
type Signature = (PathBuf, u64, Option<SystemTime>, u64);

/// A plugin binary as it was when asked for its versions: path and mtime.
type BinaryStamp = (PathBuf, Option<SystemTime>);

/// The last config file read and what came of it.
type Loaded = Option<(Signature, Result<Arc<NetworkList>, String>)>;

/// The CNI front end `runtime/` uses.
pub struct Cni {
    settings: Settings,
    cache: Cache,
    loaded: Mutex<Loaded>,
    /// The versions each plugin binary said it speaks (VERSION), by path and mtime.
    versions: Mutex<HashMap<BinaryStamp, Option<Vec<String>>>>,
}

/// The interface name every pod gets.
pub const IFNAME: &str = "eth0";

impl Cni {
    /// Opens the attachment cache; configuration is read lazily.
    pub fn new(settings: Settings) -> anyhow::Result<Cni> {
        let cache = Cache::open(&settings.cache_dir)?;
        Ok(Cni {
            settings,
            cache,
            loaded: Mutex::new(None),
            versions: Mutex::new(HashMap::new()),
        })
    }

    /// The network pods are attached to, read again when the chosen file (or the
    /// choice) changed; NotReady, saying what is missing, when there is none.
    pub fn network(&self) -> Result<Arc<NetworkList>> {
        let Some(file) = config::pick_file(&self.settings.conf_dirs) else {
            return Err(Error::NotReady(format!(
                "no CNI network config (*.conflist, *.conf, *.json) in {}",
                join(&self.settings.conf_dirs)
            )));
        };
        let meta = std::fs::metadata(&file).ok();
        let sig: Signature = (
            file.clone(),
            meta.as_ref().map_or(0, std::os::unix::fs::MetadataExt::ino),
            meta.as_ref().and_then(|m| m.modified().ok()),
            meta.as_ref().map_or(0, |m| m.len()),
        );
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = match &*loaded {
            Some((s, _)) => *s != sig,
            None => true,
        };
        if fresh {
            let parsed = config::load(&file).map(Arc::new);
            match &parsed {
                Ok(n) => {
                    tracing::info!(file = %file.display(), network = %n.name, "CNI network config loaded")
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "CNI network config is not usable")
                }
            }
            *loaded = Some((sig, parsed));
        }
        match loaded.as_ref().map(|(_, r)| r.clone()) {
            Some(Ok(n)) => Ok(n),
            Some(Err(e)) => Err(Error::NotReady(format!(
                "CNI network config {} is not usable: {e}",
                file.display()
            ))),
            None => Err(Error::NotReady("no CNI network config loaded".into())),
        }
    }

    /// Whether pods can be networked: a usable config whose plugins are all
    /// installed, and (for CNI 1.1.0 networks) every plugin's STATUS succeeds.
    pub fn status(&self) -> Result<()> {
        let net = self.network()?;
        for i in 0..net.plugins.len() {
            let t = net.plugin_type(i);
            let Some(binary) = invoke::find_plugin(t, &self.settings.plugin_dirs) else {
                return Err(Error::NotReady(format!(
                    "CNI plugin {t:?} of network {:?} is not installed in {}",
                    net.name,
                    join(&self.settings.plugin_dirs)
                )));
            };
            if let Some(supported) = self.supported_versions(&net, i, &binary)
                && !supported.iter().any(|v| *v == net.cni_version)
            {
                return Err(Error::NotReady(format!(
                    "CNI plugin {t:?} speaks CNI {}, but network {:?} asks for {}",
                    supported.join(", "),
                    net.name,
                    net.cni_version
                )));
            }
        }
        if version_at_least(&net.cni_version, "1.1.0") {
            for i in 0..net.plugins.len() {
                let conf = plugin_config(&net, i, &Map::new(), None);
                let call = self.call("STATUS", &net, i, "", "", "", &conf);
                match invoke::run(&call) {
                    Ok(_) => {}
                    Err(Error::Plugin { code, msg, .. }) if code == PLUGIN_NOT_AVAILABLE => {
                        return Err(Error::NotReady(format!(
                            "CNI plugin {} is not available: {msg}",
                            net.plugin_type(i)
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// The versions plugin `i` reports with VERSION (asked once per binary
    /// version); None when it does not say.
    fn supported_versions(
        &self,
        net: &NetworkList,
        i: usize,
        binary: &Path,
    ) -> Option<Vec<String>> {
        let key = (
            binary.to_path_buf(),
            std::fs::metadata(binary).and_then(|m| m.modified()).ok(),
        );
        if let Some(known) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return known.clone();
        }
        let conf = serde_json::json!({ "cniVersion": net.cni_version });
        let call = self.call("VERSION", net, i, "", "", "", &conf);
        let reported = invoke::run(&call).ok().and_then(|v| {
            v.get("supportedVersions")?
                .as_array()?
                .iter()
                .map(|s| s.as_str().map(String::from))
                .collect::<Option<Vec<String>>>()
        });
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, reported.clone());
        reported
    }

    #[allow(clippy::too_many_arguments)]
    fn call<'a>(
        &'a self,
        command: &'a str,
        net: &'a NetworkList,
        i: usize,
        container_id: &'a str,
        netns: &'a str,
        args: &'a str,
        config: &'a Value,
    ) -> Call<'a> {
        Call {
            command,
            plugin: net.plugin_type(i),
            plugin_dirs: &self.settings.plugin_dirs,
            container_id,
            netns,
            ifname: IFNAME,
            args,
            config,
            timeout: match command {
                "STATUS" | "VERSION" => QUERY_TIMEOUT,
                _ => PLUGIN_TIMEOUT,
            },
        }
    }

    /// ADD: attaches the pod to the network. The attachment is recorded before
    /// the first plugin runs, so [`Cni::del`] can undo a partial ADD even after
    /// a crash; on failure the caller runs [`Cni::del`].
    pub fn add(&self, att: &Attachment) -> Result<PodNetwork> {
        let net = self.network()?;
        let args = cni_args(att);
        let netns = att.netns.to_string_lossy().into_owned();
        let mut rec = Record {
            container_id: att.container_id.clone(),
            netns: att.netns.clone(),
            ifname: IFNAME.to_string(),
            args: args.clone(),
            network: net.to_json(),
            capabilities: att.capabilities.clone(),
            result: None,
        };
        self.cache.save(&rec)?;
        let mut prev: Option<Value> = None;
        for i in 0..net.plugins.len() {
            let rc = att.capabilities.runtime_config(&net.capabilities(i));
            let conf = plugin_config(&net, i, &rc, prev.as_ref());
            let call = self.call("ADD", &net, i, &att.container_id, &netns, &args, &conf);
            let out = invoke::run(&call)?;
            if !out.is_null() {
                prev = Some(out);
            }
        }
        let result = prev.unwrap_or(Value::Null);
        rec.result = Some(result.clone());
        self.cache.save(&rec)?;
        Ok(PodNetwork {
            ips: result::pod_ips(&result),
            result,
        })
    }

    /// DEL: detaches the pod, with the config, arguments and result recorded at
    /// ADD. Nothing recorded means nothing attached: success. The record goes
    /// only once every plugin's DEL succeeded, so a failed DEL can be retried.
    pub fn del(&self, container_id: &str) -> Result<()> {
        let Some(rec) = self.cache.load(container_id)? else {
            return Ok(());
        };
        let net =
            NetworkList::from_list(&rec.network, Path::new("attachment record")).map_err(|e| {
                Error::Other(anyhow::anyhow!("attachment record of {container_id}: {e}"))
            })?;
        let netns = if rec.netns.exists() {
            rec.netns.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let prev = if version_at_least(&net.cni_version, "0.4.0") {
            rec.result.clone().filter(|r| !r.is_null())
        } else {
            None
        };
        for i in (0..net.plugins.len()).rev() {
            let rc = rec.capabilities.runtime_config(&net.capabilities(i));
            let conf = plugin_config(&net, i, &rc, prev.as_ref());
            let call = self.call("DEL", &net, i, container_id, &netns, &rec.args, &conf);
            invoke::run(&call)?;
        }
        self.cache.delete(container_id)?;
        Ok(())
    }

    /// CHECK: asks the plugins whether the pod's attachment is still as ADD left
    /// it (CNI 0.4.0 and later, unless the network disables it).
    pub fn check(&self, container_id: &str) -> Result<()> {
        let Some(rec) = self.cache.load(container_id)? else {
            return Err(Error::Other(anyhow::anyhow!(
                "pod {container_id} has no network attachment"
            )));
        };
        let net =
            NetworkList::from_list(&rec.network, Path::new("attachment record")).map_err(|e| {
                Error::Other(anyhow::anyhow!("attachment record of {container_id}: {e}"))
            })?;
        if net.disable_check || !version_at_least(&net.cni_version, "0.4.0") {
            return Ok(());
        }
        let netns = rec.netns.to_string_lossy().into_owned();
        let prev = rec.result.clone().filter(|r| !r.is_null());
        for i in 0..net.plugins.len() {
            let rc = rec.capabilities.runtime_config(&net.capabilities(i));
            let conf = plugin_config(&net, i, &rc, prev.as_ref());
            let call = self.call("CHECK", &net, i, container_id, &netns, &rec.args, &conf);
            invoke::run(&call)?;
        }
        Ok(())
    }

    /// Ids of every pod with a recorded attachment (for garbage collection of
    /// attachments whose sandbox is gone).
    pub fn attached_ids(&self) -> Vec<String> {
        self.cache.ids()
    }
}

/// The config one plugin gets on stdin: its own object plus the network's name
/// and cniVersion, its runtimeConfig and the previous result.
fn plugin_config(
    net: &NetworkList,
    i: usize,
    runtime_config: &Map<String, Value>,
    prev: Option<&Value>,
) -> Value {
    let mut obj = net.plugins[i].clone();
    obj.insert("name".into(), Value::String(net.name.clone()));
    obj.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
    obj.remove("runtimeConfig");
    if !runtime_config.is_empty() {
        obj.insert(
            "runtimeConfig".into(),
            Value::Object(runtime_config.clone()),
        );
    }
    if let Some(p) = prev {
        obj.insert("prevResult".into(), p.clone());
    }
    Value::Object(obj)
}

/// CNI_ARGS as kubelet-era runtimes pass them.
fn cni_args(att: &Attachment) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        att.pod_namespace, att.pod_name, att.container_id, att.pod_uid
    )
}

/// Compares dotted versions ("0.4.0" >= "0.3.1").
fn version_at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(v) >= parse(min)
}

fn join(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Dirs {
        base: PathBuf,
    }

    impl Dirs {
        fn new(name: &str) -> Dirs {
            let base =
                std::env::temp_dir().join(format!("crust-cni-net-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            for d in ["conf", "bin", "cache", "log"] {
                std::fs::create_dir_all(base.join(d)).unwrap();
            }
            Dirs { base }
        }

        fn settings(&self) -> Settings {
            Settings {
                conf_dirs: vec![self.base.join("conf")],
                plugin_dirs: vec![self.base.join("bin")],
                cache_dir: self.base.join("cache"),
            }
        }

        /// A plugin that logs its command and stdin, and answers with a result
        /// naming itself (or fails when `fail` is its command).
        fn plugin(&self, name: &str, fail: &str) {
            let log = self.base.join("log");
            let script = format!(
                "#!/bin/sh\ncfg=$(cat)\necho \"$CNI_COMMAND $cfg\" >> {log}/{name}\n\
                 if [ \"$CNI_COMMAND\" = \"{fail}\" ]; then echo '{{\"code\":7,\"msg\":\"{name} refuses\"}}'; exit 1; fi\n\
                 if [ \"$CNI_COMMAND\" = ADD ]; then echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.0.{n}/24\"}}],\"from\":\"{name}\"}}'; fi\n",
                log = log.display(),
                n = name.len()
            );
            let p = self.base.join("bin").join(name);
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn log(&self, name: &str) -> String {
            std::fs::read_to_string(self.base.join("log").join(name)).unwrap_or_default()
        }
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    fn attachment() -> Attachment {
        Attachment {
            container_id: "sb1".into(),
            netns: PathBuf::from("/run/crust/x/net"),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "u1".into(),
            capabilities: Capabilities {
                port_mappings: vec![crate::capabilities::PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: String::new(),
                }],
                ..Default::default()
            },
        }
    }

    #[test]
    fn not_ready_until_a_config_appears() {
        let d = Dirs::new("ready");
        let cni = Cni::new(d.settings()).unwrap();
        assert!(
            matches!(cni.status(), Err(Error::NotReady(m)) if m.contains("no CNI network config"))
        );
        std::fs::write(
            d.base.join("conf/10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"first"}]}"#,
        )
        .unwrap();
        assert!(matches!(cni.status(), Err(Error::NotReady(m)) if m.contains("not installed")));
        d.plugin("first", "");
        cni.status().unwrap();
    }

    #[test]
    fn add_chains_prev_result_and_del_replays_in_reverse() {
        let d = Dirs::new("chain");
        d.plugin("first", "");
        d.plugin("second", "");
        std::fs::write(
            d.base.join("conf/10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[
                {"type":"first"},
                {"type":"second","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let cni = Cni::new(d.settings()).unwrap();
        let att = attachment();
        let got = cni.add(&att).unwrap();
        assert_eq!(got.result["from"], "second");
        assert_eq!(got.ips, vec!["10.9.0.6".parse::<IpAddr>().unwrap()]);
        let second = d.log("second");
        assert!(second.contains("\"prevResult\":{"), "{second}");
        assert!(second.contains("\"hostPort\":8080"), "{second}");
        assert!(!d.log("first").contains("runtimeConfig"));
        assert_eq!(cni.attached_ids(), vec!["sb1".to_string()]);

        // The config changes; DEL still replays what ADD used.
        std::fs::write(
            d.base.join("conf/10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"first"}]}"#,
        )
        .unwrap();
        cni.del("sb1").unwrap();
        assert!(d.log("second").contains("DEL "));
        assert!(
            d.log("second")
                .lines()
                .last()
                .unwrap()
                .contains("\"name\":\"n\"")
        );
        assert!(cni.attached_ids().is_empty());
        cni.del("sb1").unwrap();
    }

    #[test]
    fn failed_del_keeps_the_record_for_a_retry() {
        let d = Dirs::new("retry");
        d.plugin("first", "DEL");
        std::fs::write(
            d.base.join("conf/10-a.conflist"),
            r#"{"cniVersion":"0.4.0","name":"n","plugins":[{"type":"first"}]}"#,
        )
        .unwrap();
        let cni = Cni::new(d.settings()).unwrap();
        cni.add(&attachment()).unwrap();
        match cni.del("sb1") {
            Err(Error::Plugin { code: 7, msg, .. }) => assert!(msg.contains("refuses")),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(cni.attached_ids(), vec!["sb1".to_string()]);
        d.plugin("first", "");
        cni.del("sb1").unwrap();
        assert!(cni.attached_ids().is_empty());
    }

    #[test]
    fn status_of_a_1_1_network_asks_the_plugins() {
        let d = Dirs::new("status");
        d.plugin("first", "STATUS");
        std::fs::write(
            d.base.join("conf/10-a.conflist"),
            r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"first"}]}"#,
        )
        .unwrap();
        let cni = Cni::new(d.settings()).unwrap();
        assert!(matches!(cni.status(), Err(Error::Plugin { code: 7, .. })));
        d.plugin("first", "");
        cni.status().unwrap();
        assert!(d.log("first").contains("STATUS "));
    }

    #[test]
    fn plugins_that_do_not_speak_the_version_make_the_network_not_ready() {
        let d = Dirs::new("version");
        let p = d.base.join("bin").join("old");
        std::fs::write(
            &p,
            "#!/bin/sh\n[ \"$CNI_COMMAND\" = VERSION ] && echo '{\"cniVersion\":\"0.4.0\",\"supportedVersions\":[\"0.3.1\",\"0.4.0\"]}'\nexit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            d.base.join("conf/10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"old"}]}"#,
        )
        .unwrap();
        let cni = Cni::new(d.settings()).unwrap();
        assert!(
            matches!(cni.status(), Err(Error::NotReady(m)) if m.contains("speaks CNI 0.3.1, 0.4.0"))
        );
        std::fs::write(
            d.base.join("conf/10-a.conflist"),
            r#"{"cniVersion":"0.4.0","name":"n","plugins":[{"type":"old"}]}"#,
        )
        .unwrap();
        cni.status().unwrap();
    }

    #[test]
    fn versions_compare() {
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("1.1.0", "1.1.0"));
    }
}
