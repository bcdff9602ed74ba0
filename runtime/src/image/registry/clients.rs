//! HTTP clients per TLS setting: the system roots for most hosts, plus
//! clients that also trust a host's CA bundles, skip verification, or present
//! a client certificate. Each distinct setting (including the files' sizes
//! and modification times, so an edited CA is picked up) builds one client,
//! kept for later pulls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use super::super::hosts::TlsSettings;
use crate::{Error, Result};

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much later than the pull's progress deadline the HTTP read timeout fires.
const READ_TIMEOUT_SLACK: Duration = Duration::from_secs(5);
/// Clients kept; beyond that the cache starts over.
const MAX_CLIENTS: usize = 64;

/// A file as it was when a client was built from it.
type FileStamp = (PathBuf, u64, Option<SystemTime>);

/// The clients of one image store.
#[derive(Debug)]
pub(crate) struct HttpClients {
    /// How long a registry may stay silent in the middle of a response (the
    /// pull's progress timeout, so the two agree).
    read_timeout: Duration,
    default: reqwest::Client,
    by_tls: Mutex<HashMap<(TlsSettings, Vec<FileStamp>), reqwest::Client>>,
}

impl HttpClients {
    /// Builds the default client (system roots); `progress_timeout` bounds
    /// silence in the middle of any response. The pull's own deadline on the
    /// same timeout fires first with a more precise message; this one is the
    /// backstop for requests outside it (tokens).
    pub(crate) fn new(progress_timeout: Duration) -> Result<HttpClients> {
        let read_timeout = progress_timeout + READ_TIMEOUT_SLACK;
        let default = builder(read_timeout)
            .build()
            .context("building the registry HTTP client")?;
        Ok(HttpClients {
            read_timeout,
            default,
            by_tls: Mutex::new(HashMap::new()),
        })
    }

    /// The client for `tls`; `source` (the hosts.toml) names the setting in errors.
    pub(crate) fn get(&self, tls: &TlsSettings, source: Option<&Path>) -> Result<reqwest::Client> {
        if *tls == TlsSettings::default() {
            return Ok(self.default.clone());
        }
        let files = tls
            .ca
            .iter()
            .chain(tls.client.iter().map(|(cert, _)| cert))
            .chain(tls.client.iter().filter_map(|(_, key)| key.as_ref()));
        let stamps: Vec<FileStamp> = files
            .map(|p| {
                let meta = std::fs::metadata(p).map_err(|e| file_error(p, source, &e))?;
                Ok((p.clone(), meta.len(), meta.modified().ok()))
            })
            .collect::<Result<_>>()?;
        let key = (tls.clone(), stamps);
        if let Some(client) = self
            .by_tls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(client.clone());
        }
        let client = build(tls, source, self.read_timeout)?;
        let mut clients = self.by_tls.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn builder(read_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(read_timeout)
        .user_agent(concat!("crust/", env!("CARGO_PKG_VERSION")))
}

fn named(source: Option<&Path>) -> String {
    source
        .map(|s| format!(" (named in {})", s.display()))
        .unwrap_or_default()
}

fn file_error(path: &Path, source: Option<&Path>, e: &std::io::Error) -> Error {
    Error::FailedPrecondition(format!(
        "reading TLS file {}{}: {e}",
        path.display(),
        named(source)
    ))
}

fn build(
    tls: &TlsSettings,
    source: Option<&Path>,
    read_timeout: Duration,
) -> Result<reqwest::Client> {
    let mut b = builder(read_timeout);
    for path in &tls.ca {
        let pem = std::fs::read(path).map_err(|e| file_error(path, source, &e))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "CA file {}{} holds no PEM certificate",
                    path.display(),
                    named(source)
                ))
            })?;
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    if tls.skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    if let Some((cert, key)) = tls.client.first() {
        let mut pem = std::fs::read(cert).map_err(|e| file_error(cert, source, &e))?;
        if let Some(key) = key {
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| file_error(key, source, &e))?);
        }
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            Error::FailedPrecondition(format!(
                "client certificate {}{} is not a PEM certificate with its private key: {e}",
                cert.display(),
                named(source)
            ))
        })?;
        b = b.identity(identity);
    }
    b.build().map_err(|e| {
        Error::FailedPrecondition(format!(
            "building an HTTP client for the TLS settings{}: {e}",
            named(source)
        ))
    })
}
