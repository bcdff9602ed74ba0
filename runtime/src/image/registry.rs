//! A client for the OCI distribution API: manifests and blobs by name, from
//! the hosts a registry's `hosts.toml` configures (see [`super::hosts`]), with
//! the Docker token flow for anonymous and authenticated pulls.
//!
//! Each request goes to the configured hosts in order (mirrors first, the
//! registry's own server last), skipping hosts without the needed capability
//! (`resolve` for tags, `pull` for everything), and falls through to the next
//! host when one cannot be reached, fails, or lacks the object. A host that
//! failed (unreachable, 5xx, TLS) is tried last for the rest of the pull.
//!
//! A request answered with 401 gets credentials from the `WWW-Authenticate`
//! challenge (a bearer token from the realm, or Basic credentials) and is
//! retried once; a second 401 means the credentials are wrong. Tokens are kept
//! across pulls per host, repository and credentials until they expire
//! ([`tokens`]). Credentials go only to the registry they belong to
//! ([`RegistryAuth::server_address`], else the image's registry): never to a
//! mirror on another host, and (reqwest drops `Authorization` there) not
//! over a redirect to another host.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::hosts::{self, Capabilities, DOCKER_HUB_HOST, RegistryHost};
use super::options::ImageOptions;
use super::reference::{DEFAULT_DOMAIN, Reference};
use crate::{Error, Result};

mod clients;
mod tokens;

use clients::HttpClients;
use tokens::{Grant, GrantCache, GrantKey, token_lifetime};

/// Longest token response read.
const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// Longest error body read for its message.
const MAX_ERROR_BODY: u64 = 64 << 10;

/// Credentials for one pull, as kubelet passes them in `AuthConfig`.
#[derive(Clone, Debug, Default)]
pub struct RegistryAuth {
    /// User name for Basic auth or the token request.
    pub username: String,
    /// Password for Basic auth or the token request.
    pub password: String,
    /// base64 of `user:password`, an alternative to the two fields above.
    pub auth: String,
    /// The registry the credentials belong to (`host[:port]`, optionally as a
    /// URL); empty means the image's registry.
    pub server_address: String,
    /// A refresh token for the token endpoint (`grant_type=refresh_token`).
    pub identity_token: String,
    /// A bearer token sent to the registry as it is.
    pub registry_token: String,
}

impl RegistryAuth {
    /// Refuses credentials that cannot be sent: `auth` and `registry_token`
    /// go into the Authorization header as they are, so a CR, LF or other
    /// control character would make every request to the registry fail
    /// (and count against the host) rather than the pull be refused.
    pub fn check(&self) -> Result<()> {
        for (field, value, scheme) in [
            ("auth", &self.auth, "Basic"),
            ("registry_token", &self.registry_token, "Bearer"),
        ] {
            if reqwest::header::HeaderValue::from_str(&format!("{scheme} {value}")).is_err() {
                return Err(Error::invalid(format!(
                    "the pull's credentials: {field} holds characters an HTTP header cannot carry (control characters such as CR or LF)"
                )));
            }
        }
        Ok(())
    }

    fn has_basic(&self) -> bool {
        !self.username.is_empty() || !self.auth.is_empty()
    }

    fn is_empty(&self) -> bool {
        !self.has_basic()
            && self.password.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
    }

    fn basic(&self, req: RequestBuilder) -> RequestBuilder {
        if !self.username.is_empty() {
            req.basic_auth(&self.username, Some(&self.password))
        } else {
            req.header(AUTHORIZATION, format!("Basic {}", self.auth))
        }
    }

    /// The registry (canonical `host[:port]`) these credentials belong to.
    fn registry(&self, image_domain: &str) -> String {
        let address = self.server_address.trim();
        if address.is_empty() {
            return canonical_host(image_domain);
        }
        let lower = address.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"))
            .unwrap_or(&lower);
        canonical_host(rest.split('/').next().unwrap_or(""))
    }

    /// Whether these credentials may be sent to `host` when pulling from
    /// `image_domain`: the host is their registry, or it is the configured
    /// server of the image's registry and they belong to that registry.
    fn applies_to(&self, host: &RegistryHost, image_domain: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        let theirs = self.registry(image_domain);
        canonical_host(&host.host) == theirs
            || (host.upstream && theirs == canonical_host(image_domain))
    }
}

/// Lowercases a `host[:port]` and names Docker Hub's aliases `docker.io`.
fn canonical_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry.hub.docker.com" | DOCKER_HUB_HOST => DEFAULT_DOMAIN.into(),
        _ => host,
    }
}

/// The registry access shared by every pull of one image store.
#[derive(Debug)]
pub(crate) struct RegistryClient {
    config_path: PathBuf,
    clients: HttpClients,
    grants: Arc<GrantCache>,
}

impl RegistryClient {
    /// Builds the client; host configuration is read from
    /// `options.config_path` at each pull.
    pub(crate) fn new(options: &ImageOptions) -> Result<RegistryClient> {
        Ok(RegistryClient {
            config_path: options.config_path.clone(),
            clients: HttpClients::new(options.progress_timeout)?,
            grants: Arc::new(GrantCache::default()),
        })
    }

    /// A session for pulling from the repository `reference` names, through
    /// the hosts configured for its registry.
    pub(crate) fn repository(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<Repository> {
        let domain = reference.domain();
        let configured = hosts::load(&self.config_path, domain)?;
        let mut endpoints = Vec::with_capacity(configured.hosts.len());
        for host in &configured.hosts {
            let http = self.clients.get(&host.tls, configured.source.as_deref())?;
            let mut headers = HeaderMap::new();
            for (name, value) in &host.headers {
                // hosts.rs checked both; a failure here is skipped, not fatal.
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.append(n, v);
                }
            }
            let credentials = auth
                .applies_to(host, domain)
                .then(|| auth.clone())
                .filter(|a| !a.is_empty());
            let (grant, key) = match &credentials {
                Some(a) if !a.registry_token.is_empty() => {
                    (Some(Grant::Bearer(a.registry_token.clone())), None)
                }
                Some(a) => (
                    None,
                    Some(GrantKey::new(
                        &host.origin(),
                        reference.path(),
                        [&a.username, &a.password, &a.auth, &a.identity_token],
                    )),
                ),
                None => (
                    None,
                    Some(GrantKey::new(
                        &host.origin(),
                        reference.path(),
                        ["", "", "", ""],
                    )),
                ),
            };
            endpoints.push(Endpoint {
                http,
                host: host.host.clone(),
                base: host.repository_url(reference.path()),
                capabilities: host.capabilities,
                headers,
                path: reference.path().to_string(),
                credentials,
                grant: Mutex::new(grant),
                key,
                failed: AtomicBool::new(false),
            });
        }
        Ok(Repository {
            domain: domain.to_string(),
            source: configured.source,
            endpoints,
            grants: self.grants.clone(),
            served: AtomicUsize::new(usize::MAX),
        })
    }
}

/// One repository of one registry, as its configured hosts serve it, with
/// the credentials of one pull.
#[derive(Debug)]
pub(crate) struct Repository {
    /// The image's registry, as in the reference.
    domain: String,
    /// The hosts.toml (or directory) the hosts come from.
    source: Option<PathBuf>,
    /// The hosts, in the order they are tried.
    endpoints: Vec<Endpoint>,
    grants: Arc<GrantCache>,
    /// Index of the host that answered last.
    served: AtomicUsize,
}

/// One host serving the repository.
#[derive(Debug)]
struct Endpoint {
    http: reqwest::Client,
    /// `host[:port]`, for messages.
    host: String,
    /// URL of the repository on this host, without a trailing slash.
    base: String,
    capabilities: Capabilities,
    /// Extra headers from hosts.toml.
    headers: HeaderMap,
    /// Repository path, for the default token scope.
    path: String,
    /// The pull's credentials, if they belong to this host.
    credentials: Option<RegistryAuth>,
    /// What the next request authenticates with (`None`: nothing yet).
    grant: Mutex<Option<Grant>>,
    /// Where grants for this host are cached; `None` for a fixed registry token.
    key: Option<GrantKey>,
    /// Whether the host failed (unreachable, 5xx, TLS) during this pull.
    failed: AtomicBool,
}

/// A manifest as served.
pub(crate) struct FetchedManifest {
    /// The exact bytes.
    pub(crate) bytes: Vec<u8>,
    /// The `Content-Type` header.
    pub(crate) content_type: Option<String>,
}

impl Repository {
    /// Fetches a manifest by tag or digest; `what` names it in errors. Tags
    /// are resolved only by hosts that may resolve.
    pub(crate) async fn manifest(
        &self,
        tag_or_digest: &str,
        accept: &str,
        max: u64,
        what: &str,
    ) -> Result<FetchedManifest> {
        // Tags cannot contain ':'; digests always do.
        let wanted = if tag_or_digest.contains(':') {
            Capabilities::PULL
        } else {
            Capabilities::PULL.with(Capabilities::RESOLVE)
        };
        let (resp, host) = self
            .get(
                wanted,
                &format!("manifests/{tag_or_digest}"),
                Some(accept),
                what,
            )
            .await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let bytes = read_capped(resp, max, what, host).await?;
        Ok(FetchedManifest {
            bytes,
            content_type,
        })
    }

    /// Starts fetching a blob; the caller streams the body with
    /// [`Response::chunk`].
    pub(crate) async fn blob(&self, digest: &str, what: &str) -> Result<Response> {
        let (resp, _) = self
            .get(Capabilities::PULL, &format!("blobs/{digest}"), None, what)
            .await?;
        Ok(resp)
    }

    /// GETs `suffix` under the repository from the first host with `wanted`
    /// that serves it; returns the response and the host's name.
    async fn get(
        &self,
        wanted: Capabilities,
        suffix: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<(Response, &str)> {
        let eligible = || {
            self.endpoints
                .iter()
                .enumerate()
                .filter(|(_, ep)| ep.capabilities.has(wanted))
        };
        let order: Vec<(usize, &Endpoint)> = eligible()
            .filter(|(_, ep)| !ep.failed.load(Ordering::Relaxed))
            .chain(eligible().filter(|(_, ep)| ep.failed.load(Ordering::Relaxed)))
            .collect();
        if order.is_empty() {
            let source = self
                .source
                .as_ref()
                .map_or_else(String::new, |s| format!(" in {}", s.display()));
            let capability = if wanted.has(Capabilities::RESOLVE) {
                "\"pull\" and \"resolve\" capabilities (needed to resolve a tag)"
            } else {
                "the \"pull\" capability"
            };
            return Err(Error::FailedPrecondition(format!(
                "no host configured for registry {}{source} has {capability}; cannot fetch {what}",
                self.domain
            )));
        }
        let mut failures = Vec::new();
        for (i, ep) in order {
            let url = format!("{}/{suffix}", ep.base);
            match ep.get(&self.grants, &url, accept, what).await {
                Ok(resp) => {
                    self.served.store(i, Ordering::Relaxed);
                    return Ok((resp, ep.host.as_str()));
                }
                Err(e) => {
                    if matches!(e, Error::Unavailable(_) | Error::FailedPrecondition(_)) {
                        ep.failed.store(true, Ordering::Relaxed);
                    }
                    if self.endpoints.len() > 1 {
                        tracing::info!(host = %ep.host, %url, error = %e, "registry host did not serve; trying the next");
                    }
                    failures.push((ep.host.as_str(), e));
                }
            }
        }
        Err(combine(failures))
    }
}

/// One error for a request every host failed: the most telling one (refused
/// credentials, then TLS and other failures, then "not found"), naming the
/// others.
fn combine(mut failures: Vec<(&str, Error)>) -> Error {
    let rank = |e: &Error| match e {
        Error::Unauthenticated(_) | Error::PermissionDenied(_) => 0,
        Error::FailedPrecondition(_) => 1,
        Error::NotFound(_) => 3,
        _ => 2,
    };
    let Some(best) = (0..failures.len()).min_by_key(|&i| rank(&failures[i].1)) else {
        return Error::internal("no registry host was tried");
    };
    let (_, primary) = failures.remove(best);
    if failures.is_empty() {
        return primary;
    }
    let others: Vec<String> = failures
        .iter()
        .map(|(host, e)| format!("{host}: {e}"))
        .collect();
    let suffix = format!(" (other hosts tried: {})", others.join("; "));
    match primary {
        Error::NotFound(m) => Error::NotFound(m + &suffix),
        Error::InvalidArgument(m) => Error::InvalidArgument(m + &suffix),
        Error::AlreadyExists(m) => Error::AlreadyExists(m + &suffix),
        Error::FailedPrecondition(m) => Error::FailedPrecondition(m + &suffix),
        Error::DeadlineExceeded(m) => Error::DeadlineExceeded(m + &suffix),
        Error::Unimplemented(m) => Error::Unimplemented(m + &suffix),
        Error::Unavailable(m) => Error::Unavailable(m + &suffix),
        Error::ResourceExhausted(m) => Error::ResourceExhausted(m + &suffix),
        Error::PermissionDenied(m) => Error::PermissionDenied(m + &suffix),
        Error::Unauthenticated(m) => Error::Unauthenticated(m + &suffix),
        Error::Internal(e) => Error::Internal(e.context(suffix)),
    }
}

impl Endpoint {
    /// The grant to send: this pull's, else a cached one.
    fn current_grant(&self, grants: &GrantCache) -> Option<Grant> {
        let mut grant = self.grant.lock().unwrap_or_else(|e| e.into_inner());
        if grant.is_none()
            && let Some(key) = &self.key
        {
            *grant = grants.get(key);
        }
        grant.clone()
    }

    fn set_grant(&self, grant: Grant) {
        *self.grant.lock().unwrap_or_else(|e| e.into_inner()) = Some(grant);
    }

    async fn get(
        &self,
        grants: &GrantCache,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response> {
        let mut challenged = false;
        loop {
            let mut req = self.http.get(url).headers(self.headers.clone());
            if let Some(accept) = accept {
                req = req.header(ACCEPT, accept);
            }
            match self.current_grant(grants) {
                None => {}
                Some(Grant::Bearer(token)) => req = req.bearer_auth(token),
                Some(Grant::Basic) => {
                    if let Some(credentials) = &self.credentials {
                        req = credentials.basic(req);
                    }
                }
            }
            let resp = req
                .send()
                .await
                .map_err(|e| network_error(&self.host, what, e))?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && !challenged
                && let Some(key) = &self.key
            {
                challenged = true;
                // Whatever was sent (a cached token, perhaps expired) is stale.
                grants.forget(key);
                if self
                    .answer_challenge(grants, key, resp.headers(), what)
                    .await?
                {
                    continue;
                }
                return Err(status_error(resp, &self.host, what).await);
            }
            if !resp.status().is_success() {
                return Err(status_error(resp, &self.host, what).await);
            }
            return Ok(resp);
        }
    }

    /// Gets what a 401's challenge asks for; false if there is nothing to retry with.
    async fn answer_challenge(
        &self,
        grants: &GrantCache,
        key: &GrantKey,
        headers: &HeaderMap,
        what: &str,
    ) -> Result<bool> {
        let Some(challenge) = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) else {
            return Ok(false);
        };
        let Some((scheme, params)) = parse_challenge(challenge) else {
            return Ok(false);
        };
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let (token, lifetime) = self.fetch_token(&params, what).await?;
                self.set_grant(Grant::Bearer(token.clone()));
                grants.put(key.clone(), Grant::Bearer(token), lifetime);
                Ok(true)
            }
            "basic" if self.credentials.as_ref().is_some_and(|c| c.has_basic()) => {
                self.set_grant(Grant::Basic);
                grants.put_basic(key.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The Docker token flow: GET the realm (with Basic credentials if any),
    /// or POST a refresh token to it. Returns the token and how long it may
    /// be reused.
    async fn fetch_token(
        &self,
        params: &[(String, String)],
        what: &str,
    ) -> Result<(String, std::time::Duration)> {
        let param = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let realm = param("realm").ok_or_else(|| {
            Error::Unauthenticated(format!(
                "registry {} asked for a token but named no realm",
                self.host
            ))
        })?;
        let service = param("service").unwrap_or("");
        let default_scope = format!("repository:{}:pull", self.path);
        let scope = param("scope").unwrap_or(&default_scope);
        let token_what = format!("a pull token for {what} from {realm}");
        let anonymous = RegistryAuth::default();
        let auth = self.credentials.as_ref().unwrap_or(&anonymous);
        let req = if !auth.identity_token.is_empty() {
            self.http.post(realm).form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", auth.identity_token.as_str()),
                ("service", service),
                ("scope", scope),
                ("client_id", "crust"),
            ])
        } else {
            let mut query = vec![("scope", scope)];
            if !service.is_empty() {
                query.push(("service", service));
            }
            if !auth.username.is_empty() {
                query.push(("account", auth.username.as_str()));
            }
            let req = self.http.get(realm).query(&query);
            if auth.has_basic() {
                auth.basic(req)
            } else {
                req
            }
        };
        let resp = req
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| network_error(&self.host, &token_what, e))?;
        if !resp.status().is_success() {
            return Err(status_error(resp, &self.host, &token_what).await);
        }
        let body = read_capped(resp, MAX_TOKEN_BYTES, &token_what, &self.host).await?;
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
            #[serde(default)]
            issued_at: Option<String>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            Error::Unavailable(format!(
                "registry {} sent a malformed token response: {e}",
                self.host
            ))
        })?;
        let lifetime = token_lifetime(
            parsed.expires_in,
            parsed.issued_at.as_deref(),
            std::time::SystemTime::now(),
        );
        let token = if parsed.token.is_empty() {
            parsed.access_token
        } else {
            parsed.token
        };
        if token.is_empty() {
            return Err(Error::Unauthenticated(format!(
                "registry {} sent an empty token for {what}",
                self.host
            )));
        }
        Ok((token, lifetime))
    }
}

/// Splits `Bearer realm="..",service=".."` into the scheme and its parameters.
fn parse_challenge(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut s = rest.trim_start();
    while !s.is_empty() {
        let eq = s.find('=')?;
        let key = s[..eq].trim().trim_start_matches(',').trim().to_string();
        s = &s[eq + 1..];
        let value;
        if let Some(quoted) = s.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let end = end?;
            value = out;
            s = &quoted[end + 1..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_string();
            s = &s[end..];
        }
        params.push((key, value));
        s = s.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_string(), params))
}

/// Reads a whole body, refusing more than `max` bytes.
async fn read_capped(mut resp: Response, max: u64, what: &str, host: &str) -> Result<Vec<u8>> {
    let too_big = || Error::invalid(format!("{what} is larger than {max} bytes; refusing it"));
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_big());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| network_error(host, what, e))?
    {
        if (out.len() + chunk.len()) as u64 > max {
            return Err(too_big());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn network_error(host: &str, what: &str, e: reqwest::Error) -> Error {
    let mut msg = format!("fetching {what} from registry {host} failed");
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        msg.push_str(" (the registry sent nothing for the pull progress timeout)");
        return Error::DeadlineExceeded(msg);
    }
    let lower = msg.to_ascii_lowercase();
    if lower.contains("certificate") {
        // Not transient: one side does not accept the other's certificate.
        msg.push_str(if lower.contains("invalid peer certificate") {
            " (the registry's TLS certificate is not trusted: add its CA with `ca`, or set \
             `skip_verify = true`, in its hosts.toml under the image config_path)"
        } else if lower.contains("fatal alert") {
            " (the registry refused the node's TLS client certificate, or the lack of one: \
             set `client` in its hosts.toml under the image config_path)"
        } else {
            " (check the TLS certificate settings in its hosts.toml under the image config_path)"
        });
        return Error::FailedPrecondition(msg);
    }
    Error::Unavailable(msg)
}

/// The registry's own words from an error body (`errors[].message`).
fn registry_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let parsed: Errors = serde_json::from_slice(body).ok()?;
    let msgs: Vec<String> = parsed
        .errors
        .into_iter()
        .map(|e| {
            if e.message.is_empty() {
                e.code.to_lowercase()
            } else {
                e.message
            }
        })
        .filter(|m| !m.is_empty())
        .collect();
    (!msgs.is_empty()).then(|| msgs.join("; "))
}

async fn status_error(resp: Response, host: &str, what: &str) -> Error {
    let status = resp.status();
    let body = read_capped(resp, MAX_ERROR_BODY, "an error response", host)
        .await
        .unwrap_or_default();
    let detail = registry_message(&body).unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("unexpected status")
            .to_lowercase()
    });
    let code = status.as_u16();
    match status {
        StatusCode::UNAUTHORIZED => Error::Unauthenticated(format!(
            "registry {host} refused {what} without valid credentials (HTTP {code}): {detail}"
        )),
        StatusCode::FORBIDDEN => Error::PermissionDenied(format!(
            "registry {host} denied access to {what} (HTTP {code}): {detail}"
        )),
        StatusCode::NOT_FOUND => Error::NotFound(format!("{what} not found in registry: {detail}")),
        StatusCode::TOO_MANY_REQUESTS => Error::Unavailable(format!(
            "registry {host} is rate-limiting requests for {what} (HTTP {code}): {detail}"
        )),
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => Error::Unavailable(
            format!("registry {host} failed to serve {what} (HTTP {code}): {detail}"),
        ),
        _ => Error::invalid(format!(
            "registry {host} rejected the request for {what} (HTTP {code}): {detail}"
        )),
    }
}

#[cfg(test)]
mod tests;
