//! Registry host configuration in containerd's `certs.d` layout: which hosts
//! serve a registry's images, in which order, with which TLS settings.
//!
//! For an image on registry `<host>` (with port, e.g. `127.0.0.1:5000`;
//! `docker.io` for Docker Hub) the first directory that exists of
//! `<config_path>/<host-with-port-as-_port_>` (containerd's spelling for
//! `host:port`), `<config_path>/<host>` and `<config_path>/_default` holds the
//! configuration. Its `hosts.toml`:
//!
//! ```toml
//! server = "https://registry-1.docker.io"   # the upstream, tried last
//! ca = "upstream-ca.pem"                     # top-level keys apply to `server`
//!
//! [host."https://mirror.example.com"]        # mirrors, tried in file order
//!   capabilities = ["pull", "resolve"]       # default: pull, resolve, push
//!   ca = ["ca.pem", "/etc/ssl/other.pem"]    # relative to the directory
//!   skip_verify = false
//!   client = [["client.pem", "client.key"]]
//!   override_path = false                    # true: the URL path is the API root
//!   [host."https://mirror.example.com".header]
//!     x-custom = "value"
//! ```
//!
//! Only hosts with `pull` serve manifests by digest and blobs; a tag is
//! resolved only by hosts with both `pull` and `resolve`. A directory without
//! `hosts.toml` is read the way Docker reads `certs.d`: `*.crt` are CA
//! bundles and `*.cert` (with a `*.key` beside it) client certificates for
//! the upstream. Without any directory the upstream alone is used: plain HTTP
//! for loopback registries (unless TLS settings are given for them), HTTPS
//! otherwise.
//!
//! The file is read by serde (see the file module); a key it does not know
//! is ignored with a warning, as containerd ignores it. A value of the wrong
//! type is refused with its line, column and key.

mod file;

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::reference::DEFAULT_DOMAIN;
use crate::{Error, Result};
use file::{HostSettings, HostsFile};

/// Host that serves the `docker.io` registry API.
pub(crate) const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
/// The file in a host directory that configures it.
const HOSTS_FILE: &str = "hosts.toml";
/// The directory used for registries that have none of their own.
const DEFAULT_DIR: &str = "_default";

/// What a host may be asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capabilities(u8);

impl Capabilities {
    /// Fetching manifests by digest and blobs.
    pub(crate) const PULL: Capabilities = Capabilities(1);
    /// Resolving tags to digests.
    pub(crate) const RESOLVE: Capabilities = Capabilities(2);
    /// Pushing (never used by crust; accepted for containerd's files).
    pub(crate) const PUSH: Capabilities = Capabilities(4);
    /// All of them, the default.
    pub(crate) const ALL: Capabilities = Capabilities(7);

    /// Both sets together.
    pub(crate) const fn with(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    /// Whether every capability of `wanted` is in `self`.
    pub(crate) fn has(self, wanted: Capabilities) -> bool {
        self.0 & wanted.0 == wanted.0
    }
}

/// TLS settings of one host; hosts with equal settings share an HTTP client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsSettings {
    /// Extra CA bundles trusted besides the system roots.
    pub(crate) ca: Vec<PathBuf>,
    /// Accept any server certificate.
    pub(crate) skip_verify: bool,
    /// Client certificate and key files; an empty key means the certificate
    /// file holds the key too. Only the first pair is presented.
    pub(crate) client: Vec<(PathBuf, Option<PathBuf>)>,
}

/// One host to fetch from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RegistryHost {
    /// `http` or `https`.
    pub(crate) scheme: String,
    /// `host[:port]`.
    pub(crate) host: String,
    /// The API root path, `/v2` unless `override_path` said otherwise; no
    /// trailing slash (empty for the root).
    pub(crate) path: String,
    /// What the host may be asked for.
    pub(crate) capabilities: Capabilities,
    /// TLS settings.
    pub(crate) tls: TlsSettings,
    /// Extra headers sent with every request.
    pub(crate) headers: Vec<(String, String)>,
    /// Whether this is the registry's own server rather than a mirror.
    pub(crate) upstream: bool,
}

impl RegistryHost {
    /// `scheme://host`.
    pub(crate) fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    /// The base URL of `repository` on this host: API root plus the
    /// repository path the image has on its own registry.
    pub(crate) fn repository_url(&self, repository: &str) -> String {
        let mut url = self.origin();
        for part in self.path.split('/').chain(repository.split('/')) {
            if !part.is_empty() {
                url.push('/');
                url.push_str(part);
            }
        }
        url
    }
}

/// The hosts configured for one registry, mirrors first, upstream last.
#[derive(Clone, Debug)]
pub(crate) struct RegistryHosts {
    /// In the order they are tried.
    pub(crate) hosts: Vec<RegistryHost>,
    /// The file (or Docker-style directory) they come from, if any.
    pub(crate) source: Option<PathBuf>,
}

/// Reads the host configuration of registry `domain` (as in image
/// references: `docker.io`, `127.0.0.1:5000`) under `config_path`.
pub(crate) fn load(config_path: &Path, domain: &str) -> Result<RegistryHosts> {
    let Some(dir) = host_dir(config_path, domain)? else {
        return Ok(RegistryHosts {
            hosts: vec![default_upstream(domain, TlsSettings::default())],
            source: None,
        });
    };
    let file = dir.join(HOSTS_FILE);
    match read_hosts_file(&file) {
        Ok(text) => {
            let hosts = parse(&text, &dir, domain).map_err(|why| {
                Error::FailedPrecondition(format!(
                    "registry host configuration {} is invalid: {why}",
                    file.display()
                ))
            })?;
            Ok(RegistryHosts {
                hosts,
                source: Some(file),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistryHosts {
            hosts: vec![default_upstream(domain, docker_cert_files(&dir)?)],
            source: Some(dir),
        }),
        Err(e) => Err(Error::FailedPrecondition(format!(
            "reading registry host configuration {}: {e}",
            file.display()
        ))),
    }
}

/// Largest hosts.toml read.
const MAX_HOSTS_FILE: u64 = 1 << 20;

/// hosts.toml's text: without blocking on a FIFO, and only from a regular
/// file of at most [`MAX_HOSTS_FILE`] bytes.
fn read_hosts_file(file: &Path) -> std::io::Result<String> {
    let opened = crate::fsutil::open_nonblocking(file, false)?;
    let data = crate::fsutil::read_regular_capped(opened, MAX_HOSTS_FILE)
        .map_err(|why| std::io::Error::other(format!("it {why}")))?;
    String::from_utf8(data).map_err(|_| std::io::Error::other("it is not UTF-8 text"))
}

/// The first of containerd's candidate directories for `domain` that exists.
fn host_dir(config_path: &Path, domain: &str) -> Result<Option<PathBuf>> {
    if domain.is_empty() || domain.contains('/') || domain.starts_with('.') {
        return Err(Error::invalid(format!(
            "registry host {domain:?} cannot name a configuration directory"
        )));
    }
    let mut candidates = Vec::with_capacity(3);
    if let Some((host, port)) = domain.rsplit_once(':')
        && !host.is_empty()
        && !port.contains(']')
    {
        candidates.push(config_path.join(format!("{host}_{port}_")));
    }
    candidates.push(config_path.join(domain));
    candidates.push(config_path.join(DEFAULT_DIR));
    for dir in candidates {
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => return Ok(Some(dir)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::FailedPrecondition(format!(
                    "reading registry host configuration {}: {e}",
                    dir.display()
                )));
            }
        }
    }
    Ok(None)
}

/// The registry's own server when no configuration names one: HTTPS, but
/// plain HTTP for a loopback registry unless TLS settings were given for it.
fn default_upstream(domain: &str, tls: TlsSettings) -> RegistryHost {
    let (scheme, host) = if domain == DEFAULT_DOMAIN {
        ("https", DOCKER_HUB_HOST)
    } else if is_loopback(domain) && tls == TlsSettings::default() {
        ("http", domain)
    } else {
        ("https", domain)
    };
    RegistryHost {
        scheme: scheme.to_string(),
        host: host.to_string(),
        path: "/v2".to_string(),
        capabilities: Capabilities::ALL,
        tls,
        headers: Vec::new(),
        upstream: true,
    }
}

/// Docker's `certs.d` layout: `*.crt` CA bundles, `*.cert` client
/// certificates with an optional `*.key` beside them.
fn docker_cert_files(dir: &Path) -> Result<TlsSettings> {
    let read_err = |e: std::io::Error| {
        Error::FailedPrecondition(format!(
            "reading registry certificates in {}: {e}",
            dir.display()
        ))
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut tls = TlsSettings::default();
    for name in names {
        if name.ends_with(".crt") {
            tls.ca.push(dir.join(&name));
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            let key = key.exists().then_some(key);
            tls.client.push((dir.join(&name), key));
        }
    }
    Ok(tls)
}

/// Whether `host[:port]` is a loopback address or `localhost`.
pub(crate) fn is_loopback(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_loopback(),
        Ok(std::net::IpAddr::V6(a)) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Parses a `hosts.toml` of directory `dir` for registry `domain`.
pub(crate) fn parse(
    text: &str,
    dir: &Path,
    domain: &str,
) -> std::result::Result<Vec<RegistryHost>, String> {
    let mut file: HostsFile = toml::from_str(text).map_err(|e| located(text, &e))?;
    let mut hosts = Vec::with_capacity(file.host.0.len() + 1);
    for (url, settings) in &file.host.0 {
        let what = format!("[host.{url:?}]");
        hosts.push(host_from(url, settings, dir, &what, false)?);
    }
    let settings = file.take_upstream_settings();
    let upstream = match file.server.as_deref() {
        Some(server) if !server.is_empty() => {
            host_from(server, &settings, dir, "the top level", true)?
        }
        _ => {
            // containerd keeps the top-level TLS settings and headers for the
            // default server but gives it every capability.
            let fields = fields_of(&settings, dir, "the top level")?;
            let mut host = default_upstream(domain, fields.tls);
            host.headers = fields.headers;
            host
        }
    };
    hosts.push(upstream);
    for key in unknown_keys(&file) {
        tracing::warn!(key = %key, dir = %dir.display(), "ignoring an unknown key in a registry hosts.toml");
    }
    Ok(hosts)
}

/// The keys of `file` that are not hosts.toml keys, as dotted paths:
/// ignored, as containerd ignores them, but worth a warning (a typo such as
/// `capabilites` would otherwise go unnoticed).
fn unknown_keys(file: &HostsFile) -> Vec<String> {
    let top = file.unknown.keys().map(|key| toml_key(key));
    let mirrors = file.host.0.iter().flat_map(|(url, settings)| {
        settings
            .unknown
            .keys()
            .map(move |key| format!("host.{}.{}", toml_key(url), toml_key(key)))
    });
    top.chain(mirrors).collect()
}

/// A TOML error with where it is: line, column and the key it is under.
fn located(text: &str, e: &toml::de::Error) -> String {
    let reason = e.message().trim_end_matches('.');
    let Some(span) = e.span() else {
        return reason.to_string();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    match key_at(text, span.start) {
        Some(key) => format!("line {line}, column {column} (`{key}`): {reason}"),
        None => format!("line {line}, column {column}: {reason}"),
    }
}

/// The dotted path of the innermost key whose value holds byte `at` of a
/// well-formed TOML `text`, such as `host."https://m".ca`.
fn key_at(text: &str, at: usize) -> Option<String> {
    fn walk(table: &DeTable<'_>, at: usize, path: &mut Vec<String>) -> bool {
        for (key, value) in table {
            path.push(toml_key(key.get_ref()));
            if let DeValue::Table(inner) = value.get_ref()
                && walk(inner, at, path)
            {
                return true;
            }
            if value.span().contains(&at) {
                return true;
            }
            path.pop();
        }
        false
    }
    let document = DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    walk(document.get_ref(), at, &mut path).then(|| path.join("."))
}

/// A key as TOML writes it: bare if it can be, quoted otherwise.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// A host's settings other than its URL.
struct Fields {
    capabilities: Capabilities,
    tls: TlsSettings,
    headers: Vec<(String, String)>,
    override_path: bool,
}

/// A host from its URL (`server` or a `[host]` key) and settings.
fn host_from(
    url: &str,
    settings: &HostSettings,
    dir: &Path,
    what: &str,
    upstream: bool,
) -> std::result::Result<RegistryHost, String> {
    let f = fields_of(settings, dir, what)?;
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let parsed =
        reqwest::Url::parse(&full).map_err(|e| format!("{what}: bad host URL {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{what}: host URL {url:?} must be http or https"));
    }
    let name = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{what}: host URL {url:?} names no host"))?;
    let host = match parsed.port() {
        Some(port) => format!("{name}:{port}"),
        None => name.to_string(),
    };
    let mut path = parsed.path().trim_end_matches('/').to_string();
    if !f.override_path && !path.ends_with("/v2") {
        path.push_str("/v2");
    }
    Ok(RegistryHost {
        scheme: parsed.scheme().to_string(),
        host,
        path,
        capabilities: f.capabilities,
        tls: f.tls,
        headers: f.headers,
        upstream,
    })
}

/// What a host's settings mean: capability names, paths relative to `dir`,
/// valid header names and values.
fn fields_of(
    settings: &HostSettings,
    dir: &Path,
    what: &str,
) -> std::result::Result<Fields, String> {
    let capabilities = match settings.capabilities.as_ref().map(|c| c.0.as_slice()) {
        None | Some([]) => Capabilities::ALL,
        Some(names) => {
            let mut caps = Capabilities(0);
            for name in names {
                caps = caps.with(match name.to_ascii_lowercase().as_str() {
                    "pull" => Capabilities::PULL,
                    "resolve" => Capabilities::RESOLVE,
                    "push" => Capabilities::PUSH,
                    _ => {
                        return Err(format!(
                            "{what}: unknown capability {name:?} (known: pull, resolve, push)"
                        ));
                    }
                });
            }
            caps
        }
    };
    let path_of = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let ca = settings
        .ca
        .iter()
        .flat_map(|ca| &ca.0)
        .map(|p| path_of(p))
        .collect();
    let client = settings
        .client
        .iter()
        .flat_map(|c| &c.0)
        .map(|c| (path_of(&c.cert), c.key.as_deref().map(path_of)))
        .collect();
    let mut headers = Vec::new();
    for (name, values) in &settings.header.0 {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("{what}: {name:?} is not a valid header name"));
        }
        for v in &values.0 {
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                return Err(format!(
                    "{what}: the value of header {name} is not a valid header value"
                ));
            }
            headers.push((name.clone(), v.clone()));
        }
    }
    Ok(Fields {
        capabilities,
        tls: TlsSettings {
            ca,
            skip_verify: settings.skip_verify,
            client,
        },
        headers,
        override_path: settings.override_path,
    })
}

#[cfg(test)]
mod tests;
