//! A registry front end the tests script: it answers requests from rules (any
//! status, headers and body, delayed, cut short or stalled mid-body), can demand
//! Basic or bearer-token auth (serving its own token endpoint), records every
//! request, and forwards what no rule matches to an upstream registry such as
//! the shared `docker-registry`.
//!
//! It speaks plain HTTP/1.1 on a loopback port, one request per connection, so
//! it stays small and every byte it sends is the test's choice.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Largest request head or body accepted.
const MAX_REQUEST: usize = 1 << 20;

/// How a rule answers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Extra headers (Content-Length is added unless `declared_length` says otherwise).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Send only this many body bytes, then close the connection.
    pub cut_after: Option<usize>,
    /// Send this many body bytes, then go silent without closing.
    pub stall_after: Option<usize>,
    /// Content-Length to declare instead of the body's length.
    pub declared_length: Option<u64>,
}

impl Reply {
    /// A reply with `status` and `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
            cut_after: None,
            stall_after: None,
            declared_length: None,
        }
    }

    /// A 200 with a content type.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Reply::new(200, body).header("Content-Type", content_type)
    }

    /// A registry-style JSON error.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
        Reply::new(status, body.to_string()).header("Content-Type", "application/json")
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A request the fake registry saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the registry demands before it serves `/v2/` paths.
#[derive(Clone, Debug)]
enum AuthMode {
    /// Basic credentials on every request.
    Basic { user: String, password: String },
    /// Bearer tokens from `/token`, which itself wants these Basic
    /// credentials when given.
    Bearer {
        token_user: Option<(String, String)>,
    },
}

#[derive(Default)]
struct State {
    rules: Vec<(String, String, Reply)>,
    auth: Option<AuthMode>,
    tokens: HashSet<String>,
    seen: Vec<Seen>,
    issued: usize,
}

/// The running fake registry; stops when dropped.
pub struct FakeRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: JoinSet<()>,
}

impl FakeRegistry {
    /// Starts on a free loopback port, forwarding unmatched requests to
    /// `upstream` (`host:port` of a plain-HTTP registry) when given.
    pub async fn start(upstream: Option<String>) -> Result<FakeRegistry> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake registry")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the upstream client")?;
        let mut tasks = JoinSet::new();
        let shared = state.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let st = shared.clone();
                let up = upstream.clone();
                let http = http.clone();
                conns.spawn(async move {
                    let _ = serve(stream, addr, st, up, http).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(FakeRegistry { addr, state, tasks })
    }

    /// `127.0.0.1:<port>`, the registry host for image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers `method path` (path without query) with `reply`; a later rule for
    /// the same request replaces an earlier one.
    pub fn route(&self, method: &str, path: &str, reply: Reply) {
        let mut st = self.state();
        st.rules.retain(|(m, p, _)| !(m == method && p == path));
        st.rules.push((method.to_string(), path.to_string(), reply));
    }

    /// Demands Basic credentials on `/v2/` paths.
    pub fn require_basic(&self, user: &str, password: &str) {
        self.state().auth = Some(AuthMode::Basic {
            user: user.into(),
            password: password.into(),
        });
    }

    /// Demands bearer tokens from its `/token` endpoint on `/v2/` paths; the
    /// token endpoint wants these Basic credentials when given.
    pub fn require_bearer(&self, token_user: Option<(&str, &str)>) {
        self.state().auth = Some(AuthMode::Bearer {
            token_user: token_user.map(|(u, p)| (u.to_string(), p.to_string())),
        });
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// How many tokens the token endpoint handed out.
    pub fn tokens_issued(&self) -> usize {
        self.state().issued
    }

    /// Forgets the requests seen so far.
    pub fn clear_requests(&self) {
        self.state().seen.clear();
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

async fn read_request(stream: &mut TcpStream) -> Result<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            bail!("request head too large");
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the request head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if length > MAX_REQUEST {
        bail!("request body too large");
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn write_reply(stream: &mut TcpStream, reply: &Reply, head_only: bool) -> Result<()> {
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let length = reply.declared_length.unwrap_or(reply.body.len() as u64);
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (n, v) in &reply.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ));
    stream.write_all(head.as_bytes()).await?;
    if head_only {
        return stream.flush().await.map_err(Into::into);
    }
    let limit = reply
        .cut_after
        .or(reply.stall_after)
        .unwrap_or(reply.body.len())
        .min(reply.body.len());
    stream.write_all(&reply.body[..limit]).await?;
    stream.flush().await?;
    if reply.stall_after.is_some() {
        // Go silent with the connection open until the client gives up.
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    }
    Ok(())
}

fn repository_of(path: &str) -> String {
    let rest = path.trim_start_matches("/v2/");
    for marker in ["/manifests/", "/blobs/", "/tags/"] {
        if let Some(i) = rest.find(marker) {
            return rest[..i].to_string();
        }
    }
    rest.trim_end_matches('/').to_string()
}

fn basic_matches(header: Option<&str>, user: &str, password: &str) -> bool {
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    decode_base64(encoded.trim()).is_some_and(|d| d == format!("{user}:{password}").as_bytes())
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Checks auth; returns the challenge to answer with when it fails.
fn auth_challenge(st: &mut State, req: &Request, me: SocketAddr) -> Option<Reply> {
    match st.auth.clone()? {
        AuthMode::Basic { user, password } => {
            if basic_matches(req.header("authorization"), &user, &password) {
                None
            } else {
                Some(
                    Reply::error(401, "UNAUTHORIZED", "authentication required")
                        .header("WWW-Authenticate", "Basic realm=\"crust-fake\""),
                )
            }
        }
        AuthMode::Bearer { .. } => {
            let ok = req
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "))
                .is_some_and(|t| st.tokens.contains(t.trim()));
            if ok {
                return None;
            }
            let repo = repository_of(req.path_only());
            let challenge = format!(
                "Bearer realm=\"http://{me}/token\",service=\"crust-fake\",scope=\"repository:{repo}:pull\""
            );
            Some(
                Reply::error(401, "UNAUTHORIZED", "authentication required")
                    .header("WWW-Authenticate", &challenge),
            )
        }
    }
}

fn token_reply(st: &mut State, req: &Request) -> Reply {
    let Some(AuthMode::Bearer { token_user }) = st.auth.clone() else {
        return Reply::error(404, "NOT_FOUND", "no token endpoint");
    };
    if let Some((user, password)) = token_user {
        let basic_ok = basic_matches(req.header("authorization"), &user, &password);
        let form = String::from_utf8_lossy(&req.body).into_owned();
        let refresh_ok = form.contains("grant_type=refresh_token")
            && form.contains(&format!("refresh_token={password}"));
        if !basic_ok && !refresh_ok {
            return Reply::error(401, "UNAUTHORIZED", "bad credentials for the token");
        }
    }
    st.issued += 1;
    let token = format!("tok-{}-{}", st.issued, std::process::id());
    st.tokens.insert(token.clone());
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
    Reply::ok("application/json", body.to_string())
}

async fn forward(http: &reqwest::Client, upstream: &str, req: &Request) -> Result<Reply> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes())?;
    let mut out = http.request(method, format!("http://{upstream}{}", req.path));
    for (n, v) in &req.headers {
        if matches!(n.as_str(), "accept" | "content-type") {
            out = out.header(n.as_str(), v.as_str());
        }
    }
    if !req.body.is_empty() {
        out = out.body(req.body.clone());
    }
    let resp = out
        .send()
        .await
        .context("forwarding to the upstream registry")?;
    let mut reply = Reply::new(resp.status().as_u16(), Vec::new());
    for name in [
        "content-type",
        "docker-content-digest",
        "location",
        "docker-distribution-api-version",
    ] {
        if let Some(v) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
            reply = reply.header(name, v);
        }
    }
    reply.body = resp.bytes().await?.to_vec();
    Ok(reply)
}

async fn serve(
    mut stream: TcpStream,
    me: SocketAddr,
    state: Arc<Mutex<State>>,
    upstream: Option<String>,
    http: reqwest::Client,
) -> Result<()> {
    let req = read_request(&mut stream).await?;
    let head_only = req.method == "HEAD";
    let decided = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.seen.push(Seen {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
        });
        if req.path_only() == "/token" {
            Some(token_reply(&mut st, &req))
        } else if let Some(challenge) = auth_challenge(&mut st, &req, me) {
            Some(challenge)
        } else {
            st.rules
                .iter()
                .find(|(m, p, _)| *m == req.method && p == req.path_only())
                .map(|(_, _, r)| r.clone())
        }
    };
    let reply = match (decided, upstream) {
        (Some(r), _) => r,
        (None, Some(up)) => forward(&http, &up, &req).await?,
        (None, None) => Reply::error(404, "NOT_FOUND", "no rule for this path"),
    };
    write_reply(&mut stream, &reply, head_only).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_repository_names() {
        assert_eq!(decode_base64("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(
            repository_of("/v2/library/busybox/manifests/1.0"),
            "library/busybox"
        );
        assert_eq!(repository_of("/v2/a/b/c/blobs/sha256:00"), "a/b/c");
    }

    #[tokio::test]
    async fn routes_auth_and_log() {
        let fake = FakeRegistry::start(None).await.unwrap();
        fake.route("GET", "/v2/x/manifests/1", Reply::ok("text/plain", "hello"));
        let http = reqwest::Client::new();
        let url = format!("http://{}/v2/x/manifests/1", fake.host());
        let got = http.get(&url).send().await.unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.text().await.unwrap(), "hello");

        fake.require_bearer(Some(("u", "p")));
        let got = http.get(&url).send().await.unwrap();
        assert_eq!(got.status(), 401);
        let token_url = format!("http://{}/token?scope=repository:x:pull", fake.host());
        assert_eq!(http.get(&token_url).send().await.unwrap().status(), 401);
        let body = http
            .get(&token_url)
            .basic_auth("u", Some("p"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let token: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let t = token["token"].as_str().unwrap().to_string();
        let got = http.get(&url).bearer_auth(&t).send().await.unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(fake.tokens_issued(), 1);
        assert!(fake.requests().len() >= 4);
    }
}
