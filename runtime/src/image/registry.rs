//! A client for the OCI distribution API: manifests and blobs by name, with
//! the Docker token flow for anonymous and authenticated pulls.
//!
//! `docker.io` is served by `registry-1.docker.io`; registries on loopback
//! (`localhost`, `127.0.0.0/8`, `[::1]`) are spoken to over plain HTTP, all
//! others over HTTPS. A request answered with 401 gets credentials from the
//! `WWW-Authenticate` challenge (a bearer token from the realm, or Basic
//! credentials) and is retried once.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::reference::{DEFAULT_DOMAIN, Reference};
use crate::{Error, Result};

/// Host that serves the `docker.io` registry API.
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a registry may stay silent in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
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
    /// A refresh token for the token endpoint (`grant_type=refresh_token`).
    pub identity_token: String,
    /// A bearer token sent to the registry as it is.
    pub registry_token: String,
}

impl RegistryAuth {
    fn has_basic(&self) -> bool {
        !self.username.is_empty() || !self.auth.is_empty()
    }

    fn basic(&self, req: RequestBuilder) -> RequestBuilder {
        if !self.username.is_empty() {
            req.basic_auth(&self.username, Some(&self.password))
        } else {
            req.header(AUTHORIZATION, format!("Basic {}", self.auth))
        }
    }
}

/// The HTTP client shared by every pull.
#[derive(Debug)]
pub(crate) struct RegistryClient {
    http: reqwest::Client,
}

impl RegistryClient {
    /// Builds the client.
    pub(crate) fn new() -> Result<RegistryClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("crust/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the registry HTTP client")?;
        Ok(RegistryClient { http })
    }

    /// A session for pulling from the repository `reference` names.
    pub(crate) fn repository(&self, reference: &Reference, auth: &RegistryAuth) -> Repository {
        let domain = reference.domain();
        let host = if domain == DEFAULT_DOMAIN {
            DOCKER_HUB_HOST
        } else {
            domain
        };
        let scheme = if is_loopback(host) { "http" } else { "https" };
        let initial = if auth.registry_token.is_empty() {
            AuthState::Anonymous
        } else {
            AuthState::Bearer(auth.registry_token.clone())
        };
        Repository {
            http: self.http.clone(),
            base: format!("{scheme}://{host}/v2/{}", reference.path()),
            host: domain.to_string(),
            path: reference.path().to_string(),
            auth: auth.clone(),
            authorization: Mutex::new(initial),
        }
    }
}

/// Whether `host[:port]` is a loopback address or `localhost`.
fn is_loopback(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.is_loopback(),
        Ok(IpAddr::V6(a)) => {
            a.is_loopback()
                || a.to_ipv4_mapped()
                    .is_some_and(|v4: Ipv4Addr| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// One repository on one registry, with the credentials of one pull.
#[derive(Debug)]
pub(crate) struct Repository {
    http: reqwest::Client,
    base: String,
    host: String,
    path: String,
    auth: RegistryAuth,
    /// What to authenticate the next request with.
    authorization: Mutex<AuthState>,
}

/// How requests to a repository authenticate.
#[derive(Clone, Debug)]
enum AuthState {
    /// Not at all (until a 401 says otherwise).
    Anonymous,
    /// With this bearer token.
    Bearer(String),
    /// With the pull's Basic credentials.
    Basic,
}

/// A manifest as served.
pub(crate) struct FetchedManifest {
    /// The exact bytes.
    pub(crate) bytes: Vec<u8>,
    /// The `Content-Type` header.
    pub(crate) content_type: Option<String>,
}

impl Repository {
    /// Fetches a manifest by tag or digest; `what` names it in errors.
    pub(crate) async fn manifest(
        &self,
        tag_or_digest: &str,
        accept: &str,
        max: u64,
        what: &str,
    ) -> Result<FetchedManifest> {
        let url = format!("{}/manifests/{tag_or_digest}", self.base);
        let resp = self.get(&url, Some(accept), what).await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let bytes = read_capped(resp, max, what, &self.host).await?;
        Ok(FetchedManifest {
            bytes,
            content_type,
        })
    }

    /// Starts fetching a blob; the caller streams the body with
    /// [`Response::chunk`].
    pub(crate) async fn blob(&self, digest: &str, what: &str) -> Result<Response> {
        let url = format!("{}/blobs/{digest}", self.base);
        self.get(&url, None, what).await
    }

    async fn get(&self, url: &str, accept: Option<&str>, what: &str) -> Result<Response> {
        let mut challenged = false;
        loop {
            let mut req = self.http.get(url);
            if let Some(accept) = accept {
                req = req.header(ACCEPT, accept);
            }
            let current = self
                .authorization
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match current {
                AuthState::Anonymous => {}
                AuthState::Bearer(token) => req = req.bearer_auth(token),
                AuthState::Basic => req = self.auth.basic(req),
            }
            let resp = req
                .send()
                .await
                .map_err(|e| network_error(&self.host, what, e))?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && !challenged
                && self.auth.registry_token.is_empty()
            {
                challenged = true;
                if self.answer_challenge(resp.headers(), what).await? {
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
    async fn answer_challenge(&self, headers: &HeaderMap, what: &str) -> Result<bool> {
        let Some(challenge) = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) else {
            return Ok(false);
        };
        let Some((scheme, params)) = parse_challenge(challenge) else {
            return Ok(false);
        };
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let token = self.fetch_token(&params, what).await?;
                *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) =
                    AuthState::Bearer(token);
                Ok(true)
            }
            "basic" if self.auth.has_basic() => {
                *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = AuthState::Basic;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The Docker token flow: GET the realm (with Basic credentials if any),
    /// or POST a refresh token to it.
    async fn fetch_token(&self, params: &[(String, String)], what: &str) -> Result<String> {
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
        let req = if !self.auth.identity_token.is_empty() {
            self.http.post(realm).form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", self.auth.identity_token.as_str()),
                ("service", service),
                ("scope", scope),
                ("client_id", "crust"),
            ])
        } else {
            let mut query = vec![("scope", scope)];
            if !service.is_empty() {
                query.push(("service", service));
            }
            if !self.auth.username.is_empty() {
                query.push(("account", self.auth.username.as_str()));
            }
            let req = self.http.get(realm).query(&query);
            if self.auth.has_basic() {
                self.auth.basic(req)
            } else {
                req
            }
        };
        let resp = req
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
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            Error::Unavailable(format!(
                "registry {} sent a malformed token response: {e}",
                self.host
            ))
        })?;
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
        Ok(token)
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
        msg.push_str(" (timed out)");
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

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn loopback_hosts_use_http() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "registry-1.docker.io",
            "10.0.0.1:5000",
            "quay.io",
            "[fe80::1]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn repository_urls() {
        let c = RegistryClient::new().unwrap();
        let auth = RegistryAuth::default();
        let r = c.repository(&Reference::parse("busybox").unwrap(), &auth);
        assert_eq!(r.base, "https://registry-1.docker.io/v2/library/busybox");
        let r = c.repository(&Reference::parse("127.0.0.1:5000/a/b:1").unwrap(), &auth);
        assert_eq!(r.base, "http://127.0.0.1:5000/v2/a/b");
        let r = c.repository(&Reference::parse("quay.io/x/y").unwrap(), &auth);
        assert_eq!(r.base, "https://quay.io/v2/x/y");
    }

    #[test]
    fn parses_challenges() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            vec![
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:library/busybox:pull".into()),
            ]
        );
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(scheme, "Basic");
        assert_eq!(params, vec![("realm".into(), "Registry Realm".into())]);
        let (_, params) =
            parse_challenge(r#"Bearer realm=x, error="insufficient_scope", scope="a:b:pull,push""#)
                .unwrap();
        assert_eq!(params[2], ("scope".into(), "a:b:pull,push".into()));
    }

    #[test]
    fn registry_error_messages() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(registry_message(body).unwrap(), "manifest unknown");
        assert_eq!(
            registry_message(br#"{"errors":[{"code":"DENIED"}]}"#).unwrap(),
            "denied"
        );
        assert!(registry_message(b"<html>").is_none());
    }
}
