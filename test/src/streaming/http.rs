//! Just enough HTTP/1.1 for the SPDY upgrade: parse a streaming URL, send the
//! upgrade request the way Go's `http.Request.Write` lays it out, and read the
//! response head, keeping any bytes that arrived after it.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// How long connecting and the upgrade exchange may take.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// The parts of an `http://host:port/path?query` URL a client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` to connect to and to send as `Host`.
    pub authority: String,
    /// `/path?query`.
    pub path: String,
}

/// Parses a streaming server URL. Only `http` is supported: the CRI streaming
/// server in these tests listens on loopback without TLS.
pub fn parse_url(url: &str) -> Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    ensure!(!authority.is_empty(), "{url:?} has no host");
    let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        authority,
        path: path.to_string(),
    })
}

/// Appends `key=value` pairs to a URL's query.
pub fn with_query(url: &str, pairs: &[(&str, String)]) -> String {
    let mut out = url.to_string();
    for (key, value) in pairs {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(key);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// A parsed response status line and headers.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// Every value of `name` (case-insensitive).
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values(name).into_iter().next()
    }
}

/// Connects to the target and sends an upgrade request with the given extra
/// headers (in order); returns the stream, the response head and the bytes
/// read past it.
pub async fn upgrade(
    method: &str,
    target: &Target,
    headers: &[(&str, String)],
) -> Result<(TcpStream, ResponseHead, Vec<u8>)> {
    let exchange = async {
        let mut stream = TcpStream::connect(&target.authority)
            .await
            .with_context(|| format!("connecting to {}", target.authority))?;
        stream.set_nodelay(true)?;
        let mut request = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: crust-e2e\r\n",
            target.path, target.authority
        );
        if method == "POST" || method == "PUT" {
            request.push_str("Content-Length: 0\r\n");
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let (head, rest) = read_head(&mut stream).await?;
        Ok::<_, anyhow::Error>((stream, head, rest))
    };
    tokio::time::timeout(UPGRADE_TIMEOUT, exchange)
        .await
        .context("the upgrade request timed out")?
}

/// Reads a response head; returns it and whatever followed it.
pub async fn read_head(stream: &mut TcpStream) -> Result<(ResponseHead, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        ensure!(
            buf.len() < MAX_HEAD,
            "response head larger than {MAX_HEAD} bytes"
        );
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before a complete response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end + 4);
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    Ok((parse_head(&text)?, rest))
}

/// Parses `HTTP/1.1 101 Switching Protocols\r\nName: value...`.
pub fn parse_head(text: &str) -> Result<ResponseHead> {
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 response: {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(ResponseHead { status, headers })
}

/// Best-effort body of a refused upgrade, for the error message: up to
/// `Content-Length` (or until the server closes), at most 64 KiB, within a
/// second.
pub async fn read_error_body(
    stream: &mut TcpStream,
    head: &ResponseHead,
    mut body: Vec<u8>,
) -> String {
    let want = head
        .value("Content-Length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(MAX_HEAD)
        .min(MAX_HEAD);
    let read = async {
        let mut chunk = [0u8; 4096];
        while body.len() < want {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    body.truncate(want);
    String::from_utf8_lossy(&body).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_streaming_urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:10010/exec/abc").unwrap(),
            Target {
                authority: "127.0.0.1:10010".into(),
                path: "/exec/abc".into()
            }
        );
        assert_eq!(
            parse_url("http://[::1]:8080/attach/x?y=1")
                .unwrap()
                .authority,
            "[::1]:8080"
        );
        assert_eq!(parse_url("http://localhost").unwrap().path, "/");
        assert_eq!(
            parse_url("http://localhost").unwrap().authority,
            "localhost:80"
        );
        assert!(parse_url("https://127.0.0.1:1/exec/a").is_err());
    }

    #[test]
    fn appends_query_pairs() {
        assert_eq!(
            with_query(
                "http://h:1/portforward/t",
                &[("port", "80".into()), ("port", "81".into())]
            ),
            "http://h:1/portforward/t?port=80&port=81"
        );
        assert_eq!(
            with_query("http://h:1/p?a=b", &[("c", "d".into())]),
            "http://h:1/p?a=b&c=d"
        );
    }

    #[test]
    fn parses_a_response_head() {
        let head = parse_head(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io",
        )
        .unwrap();
        assert_eq!(head.status, 101);
        assert_eq!(head.value("upgrade"), Some("SPDY/3.1"));
        assert_eq!(
            head.values("x-stream-protocol-version"),
            ["v4.channel.k8s.io"]
        );
        assert!(parse_head("SSH-2.0").is_err());
    }
}
