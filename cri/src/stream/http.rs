//! HTTP/1.1 (optionally over TLS) in front of the sessions: routes
//! `/exec|attach|portforward/<token>`, refuses unknown or used tokens with 404,
//! negotiates the subprotocol and upgrades the connection to SPDY/3.1.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Shared;
use super::over_spdy;
use super::over_websocket;
use super::portforward;
use super::remotecommand::SPDY_PROTOCOLS;
use super::tokens::Pending;
use crate::config::StreamSection;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The header carrying SPDY subprotocol offers and the server's choice.
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// A TLS acceptor when `tls_cert` and `tls_key` are configured.
pub fn tls_acceptor(cfg: &StreamSection) -> Result<Option<TlsAcceptor>> {
    if cfg.tls_cert.is_empty() {
        return Ok(None);
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.tls_cert)
        .with_context(|| format!("reading stream.tls_cert {}", cfg.tls_cert))?
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("parsing stream.tls_cert {}", cfg.tls_cert))?;
    if certs.is_empty() {
        bail!("stream.tls_cert {} holds no certificate", cfg.tls_cert);
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.tls_key)
        .with_context(|| format!("reading stream.tls_key {}", cfg.tls_key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("stream.tls_cert and stream.tls_key do not make a usable TLS identity")?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Accepts connections until crustd exits.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(tcp, shared).await,
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, shared).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve_http1(io, move |req| route(req, shared.clone())).await;
}

/// Serves one HTTP/1.1 connection, answering each request with `route`
/// (which may upgrade the connection); the streaming and the metrics
/// servers share it.
pub(crate) async fn serve_http1<IO, R>(io: IO, route: R)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    R: Fn(Request<Incoming>) -> Reply + Send + Sync + 'static,
{
    let route = Arc::new(route);
    let service = hyper::service::service_fn(move |req| {
        let route = route.clone();
        async move { Ok::<_, Infallible>(route(req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// A complete HTTP response.
pub(crate) type Reply = Response<Full<Bytes>>;

/// A plain-text response.
pub(crate) fn plain(status: StatusCode, text: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn route(mut req: Request<Incoming>, shared: Arc<Shared>) -> Reply {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if !matches!(kind, "exec" | "attach" | "portforward") {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
    }
    let Some(pending) = shared.tokens.take(token) else {
        tracing::info!(
            kind,
            "refusing a streaming request with an unknown, used or expired token"
        );
        return plain(
            StatusCode::NOT_FOUND,
            "unknown, used or expired token: ask the runtime for a new URL",
        );
    };
    let matches_kind = matches!(
        (kind, &pending),
        ("exec", Pending::Exec { .. })
            | ("attach", Pending::Attach { .. })
            | ("portforward", Pending::PortForward { .. })
    );
    if !matches_kind {
        return plain(
            StatusCode::NOT_FOUND,
            "this token is not for this kind of session",
        );
    }
    let label = session_label(&pending);
    if over_websocket::is_websocket(&req) {
        return over_websocket::upgrade(&mut req, pending, label, shared);
    }
    if !header_has(&req, UPGRADE.as_str(), "spdy/3.1")
        || !header_has(&req, CONNECTION.as_str(), "upgrade")
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "expected an upgrade to SPDY/3.1 or websocket (Connection: Upgrade)",
        );
    }
    let supported: &[&str] = match pending {
        Pending::PortForward { .. } => &[portforward::SPDY_PROTOCOL],
        _ => SPDY_PROTOCOLS,
    };
    let offered = offered_protocols(&req);
    let protocol = if offered.is_empty() {
        String::new()
    } else if let Some(p) = offered.iter().find(|p| supported.contains(&p.as_str())) {
        p.clone()
    } else {
        let mut r = plain(
            StatusCode::FORBIDDEN,
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&supported.join(", ")) {
            r.headers_mut()
                .insert("x-accepted-stream-protocol-versions", v);
        }
        return r;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let chosen = protocol.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                over_spdy::serve(TokioIo::new(upgraded), pending, chosen, label, shared).await
            }
            Err(e) => {
                tracing::info!(session = %label, error = %e, "the client did not complete the upgrade")
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(&protocol)
        && !protocol.is_empty()
    {
        h.insert(PROTOCOL_HEADER, v);
    }
    r
}

/// Names a session in logs by what it serves and its object's short id.
fn session_label(p: &Pending) -> String {
    let short = |id: &str| id.chars().take(12).collect::<String>();
    match p {
        Pending::Exec { container_id, .. } => format!("exec {}", short(container_id)),
        Pending::Attach { container_id, .. } => format!("attach {}", short(container_id)),
        Pending::PortForward { sandbox_id, .. } => format!("port-forward {}", short(sandbox_id)),
    }
}

/// Whether a comma-separated header holds `token` (case-insensitively).
pub(super) fn header_has(req: &Request<Incoming>, name: &str, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The subprotocols the client offers, in its order of preference.
fn offered_protocols(req: &Request<Incoming>) -> Vec<String> {
    req.headers()
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}
