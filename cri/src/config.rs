//! crustd's configuration: a TOML file whose defaults are embedded in the binary
//! (`default_config.toml`), with flags for the common overrides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The default configuration file, as printed by `crustd config default`.
pub const DEFAULT_CONFIG: &str = include_str!("default_config.toml");

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// CRI socket path.
    pub socket: PathBuf,
    /// Persistent state directory.
    pub root: PathBuf,
    /// Volatile state directory.
    pub state: PathBuf,
    /// Log level.
    pub log_level: String,
    /// Image pull settings.
    pub image: ImageSection,
    /// Pod network settings.
    pub cni: CniSection,
    /// Container runtime settings.
    pub runtime: RuntimeSection,
    /// Runtime handlers (RuntimeClass) by name.
    pub runtimes: BTreeMap<String, HandlerSection>,
    /// Exec, attach and port-forward streaming server settings.
    pub stream: StreamSection,
    /// crustd's own Prometheus metrics.
    pub metrics: MetricsSection,
}

/// `[metrics]`: where crustd serves its Prometheus metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `ip:port` of the `/metrics` endpoint; empty serves none.
    pub address: String,
}

/// `[stream]`: the server kubelet and crictl connect to for exec, attach and
/// port-forward sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// IP address to listen on.
    pub address: String,
    /// TCP port; 0 picks any free port.
    pub port: u16,
    /// PEM certificate chain; serves HTTPS when set (with `tls_key`).
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
    /// Seconds a URL from Exec, Attach or PortForward stays usable.
    pub token_timeout: u64,
    /// Seconds a session may carry no data before it is closed.
    pub idle_timeout: u64,
    /// Exec, attach and port-forward streams served at the same time.
    pub max_streams: usize,
}

/// `[cni]`: where the pod network's config and plugins are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniSection {
    /// Network config directories.
    pub conf_dirs: Vec<PathBuf>,
    /// Plugin binary directories.
    pub plugin_dirs: Vec<PathBuf>,
}

/// `[image]`: how images are pulled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// Per-registry host configuration directory.
    pub config_path: PathBuf,
    /// Seconds a layer download may receive nothing.
    pub pull_progress_timeout: u64,
    /// Layers one pull downloads at the same time.
    pub max_concurrent_downloads: usize,
    /// Images reported as pinned.
    pub pinned_images: Vec<String>,
}

impl ImageSection {
    /// The runtime's image options.
    pub fn options(&self) -> crust_runtime::image::ImageOptions {
        crust_runtime::image::ImageOptions {
            config_path: self.config_path.clone(),
            progress_timeout: std::time::Duration::from_secs(self.pull_progress_timeout),
            max_concurrent_downloads: self.max_concurrent_downloads,
            pinned_images: self.pinned_images.clone(),
        }
    }
}

/// `[runtimes.<name>]`: one runtime handler's OCI runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSection {
    /// The OCI runtime binary (name or path).
    pub binary: String,
    /// Its state directory; empty means the default (see [`Config::handlers`]).
    #[serde(default)]
    pub root: String,
    /// Global arguments given before every subcommand.
    #[serde(default)]
    pub options: Vec<String>,
}

/// `[runtime]`: how containers are run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// The handler of pods that name none: a key of `[runtimes]`.
    pub default_runtime: String,
    /// crust-shim binary; empty means next to crustd.
    pub shim: String,
    /// Size of each pod's /dev/shm in bytes.
    pub shm_size: u64,
    /// Default cgroup parent.
    pub cgroup_parent: String,
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str(DEFAULT_CONFIG).expect("the embedded default config is valid")
    }
}

impl Config {
    /// Loads `path`, or the embedded defaults when `path` does not exist. Keys the
    /// file leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses a config file's text over the defaults.
    pub fn parse(text: &str) -> Result<Config> {
        let mut merged: toml::Table =
            toml::from_str(DEFAULT_CONFIG).context("embedded defaults")?;
        let user: toml::Table = toml::from_str(text).context("parsing TOML")?;
        // A file's handlers replace the defaults whole, so one can be dropped.
        if user.contains_key("runtimes") {
            merged.remove("runtimes");
        }
        merge(&mut merged, user);
        let cfg: Config = toml::Value::Table(merged)
            .try_into()
            .context("checking the configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        for (key, p) in [
            ("socket", &self.socket),
            ("root", &self.root),
            ("state", &self.state),
        ] {
            if !p.is_absolute() {
                bail!("{key} must be an absolute path, got {}", p.display());
            }
        }
        if !self.image.config_path.is_absolute() {
            bail!("image.config_path must be an absolute path");
        }
        if self.image.pull_progress_timeout == 0 {
            bail!("image.pull_progress_timeout must be at least 1 second");
        }
        if !(1..=64).contains(&self.image.max_concurrent_downloads) {
            bail!("image.max_concurrent_downloads must be between 1 and 64");
        }
        if self.cni.conf_dirs.is_empty() || self.cni.plugin_dirs.is_empty() {
            bail!("cni.conf_dirs and cni.plugin_dirs must each name at least one directory");
        }
        if self.stream.address.parse::<std::net::IpAddr>().is_err() {
            bail!(
                "stream.address must be an IP address, got {:?}",
                self.stream.address
            );
        }
        if self.stream.tls_cert.is_empty() != self.stream.tls_key.is_empty() {
            bail!("stream.tls_cert and stream.tls_key must be set together");
        }
        if self.stream.token_timeout == 0 || self.stream.idle_timeout == 0 {
            bail!("stream.token_timeout and stream.idle_timeout must be at least 1 second");
        }
        // Deadlines are instants from now: keep them representable.
        const YEAR: u64 = 365 * 24 * 3600;
        if self.stream.token_timeout > YEAR || self.stream.idle_timeout > YEAR {
            bail!(
                "stream.token_timeout and stream.idle_timeout must be at most a year ({YEAR} seconds)"
            );
        }
        if !self.metrics.address.is_empty()
            && self
                .metrics
                .address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            bail!(
                "metrics.address must be an IP address and port such as 127.0.0.1:1338, got {:?}",
                self.metrics.address
            );
        }
        if self.stream.max_streams == 0 {
            bail!("stream.max_streams must be at least 1");
        }
        if self.runtime.shm_size < 4096 {
            bail!("runtime.shm_size must be at least 4096 bytes");
        }
        self.validate_handlers()
    }

    fn validate_handlers(&self) -> Result<()> {
        for (name, h) in &self.runtimes {
            // RuntimeClass handlers are DNS labels.
            if name.is_empty()
                || name.len() > 63
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                || name.starts_with('-')
                || name.ends_with('-')
            {
                bail!(
                    "runtimes.{name:?}: a handler name must be a DNS label (lowercase letters, digits and '-', at most 63)"
                );
            }
            if h.binary.is_empty() {
                bail!("runtimes.{name}.binary must name the OCI runtime");
            }
            if !h.root.is_empty() && !Path::new(&h.root).is_absolute() {
                bail!(
                    "runtimes.{name}.root must be an absolute path, got {:?}",
                    h.root
                );
            }
        }
        if !self.runtimes.contains_key(&self.runtime.default_runtime) {
            bail!(
                "runtime.default_runtime {:?} is not among the handlers [runtimes.*]: {}",
                self.runtime.default_runtime,
                self.runtimes
                    .keys()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }

    /// The runtime handlers: each binary found as runc is (kept as written
    /// when it is not found: the start-up probe says so), each root
    /// defaulted to `<state>/runc` for `runc` (where crust kept runc's
    /// state before it had handlers) and `<state>/runtimes/<name>` else.
    pub fn handlers(&self) -> Vec<crust_runtime::host::HandlerSpec> {
        self.runtimes
            .iter()
            .map(|(name, h)| crust_runtime::host::HandlerSpec {
                name: name.clone(),
                binary: find_binary(&h.binary).unwrap_or_else(|| PathBuf::from(&h.binary)),
                root: match (h.root.as_str(), name.as_str()) {
                    ("", "runc") => self.state.join("runc"),
                    ("", _) => self.state.join("runtimes").join(name),
                    (root, _) => PathBuf::from(root),
                },
                options: h.options.clone(),
            })
            .collect()
    }

    /// Finds the crust-shim binary.
    pub fn shim_path(&self) -> Result<PathBuf> {
        if !self.runtime.shim.is_empty() {
            return find_binary(&self.runtime.shim)
                .with_context(|| format!("runtime.shim: {:?} not found", self.runtime.shim));
        }
        let exe = std::env::current_exe().context("locating crustd")?;
        let shim = exe.with_file_name("crust-shim");
        if !shim.is_file() {
            bail!(
                "crust-shim not found next to crustd at {}; install it there or set runtime.shim",
                shim.display()
            );
        }
        Ok(shim)
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain([
            "/usr/local/sbin",
            "/usr/sbin",
            "/sbin",
            "/usr/local/bin",
            "/usr/bin",
        ])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_round_trip() {
        let c = Config::default();
        assert_eq!(c.socket, PathBuf::from("/run/crust/crust.sock"));
        assert_eq!(c.runtime.shm_size, 64 << 20);
        assert_eq!(Config::parse("").unwrap(), c);
    }

    #[test]
    fn shipped_example_matches_defaults_but_serves_metrics() {
        let example = include_str!("../../manifests/config.toml");
        let mut expected = Config::default();
        expected.metrics.address = "127.0.0.1:1338".into();
        assert_eq!(Config::parse(example).unwrap(), expected);
    }

    #[test]
    fn partial_file_overrides_defaults() {
        let c =
            Config::parse("root = \"/srv/crust\"\n[runtime]\ncgroup_parent = \"/pods\"\n").unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/crust"));
        assert_eq!(c.runtime.cgroup_parent, "/pods");
        assert_eq!(c.runtime.default_runtime, "runc");
    }

    #[test]
    fn default_handlers_are_runc_and_youki() {
        let c = Config::parse("state = \"/run/x\"").unwrap();
        let h = c.handlers();
        let names: Vec<_> = h.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["runc", "youki"]);
        assert_eq!(h[0].root, PathBuf::from("/run/x/runc"));
        assert_eq!(h[1].root, PathBuf::from("/run/x/runtimes/youki"));
        assert!(h.iter().all(|h| h.options.is_empty()));
    }

    #[test]
    fn a_files_handlers_replace_the_defaults() {
        let c = Config::parse(
            "[runtime]\ndefault_runtime = \"fast\"\n\
             [runtimes.fast]\nbinary = \"/opt/fast/bin/fast\"\noptions = [\"--debug\"]\n\
             [runtimes.runc]\nbinary = \"runc\"\nroot = \"/srv/runc\"\n",
        )
        .unwrap();
        let h = c.handlers();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].name, "fast");
        assert_eq!(h[0].binary, PathBuf::from("/opt/fast/bin/fast"));
        assert_eq!(h[0].options, ["--debug"]);
        assert_eq!(h[0].root, PathBuf::from("/run/crust/runtimes/fast"));
        assert_eq!(h[1].root, PathBuf::from("/srv/runc"));
        assert_eq!(c.runtime.default_runtime, "fast");
    }

    #[test]
    fn bad_handlers_are_refused() {
        for (text, says) in [
            (
                "[runtime]\ndefault_runtime = \"kata\"",
                "not among the handlers",
            ),
            ("[runtimes.Big]\nbinary = \"x\"", "DNS label"),
            (
                "[runtimes.runc]\nbinary = \"\"",
                "must name the OCI runtime",
            ),
            (
                "[runtimes.runc]\nbinary = \"runc\"\nroot = \"rel\"",
                "absolute",
            ),
            ("[runtimes.runc]\nbinary = \"runc\"\nbogus = 1", "bogus"),
            ("[runtime]\nrunc = \"runc\"", "runc"),
        ] {
            let err = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(Config::parse("nonsense = 1").is_err());
        assert!(Config::parse("root = \"relative\"").is_err());
        assert!(Config::parse("[runtime]\nshm_size = \"big\"").is_err());
        assert!(Config::parse("[stream]\naddress = \"localhost\"").is_err());
        assert!(Config::parse("[metrics]\naddress = \"localhost:1338\"").is_err());
        assert!(Config::parse("[stream]\nidle_timeout = 18446744073709551615").is_err());
        assert_eq!(
            Config::parse("[metrics]\naddress = \"127.0.0.1:1338\"")
                .unwrap()
                .metrics
                .address,
            "127.0.0.1:1338"
        );
        assert!(Config::parse("[stream]\ntls_cert = \"/etc/crust/cert.pem\"").is_err());
    }
}
