//! Reading a blob's HTTP body with a progress deadline: a transfer that
//! receives nothing for `progress_timeout` (see [`super::ImageOptions`])
//! fails with [`Error::DeadlineExceeded`] naming the blob and the host that
//! went silent. Long transfers log their progress now and then.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Response;

use crate::{Error, Result};

/// How often a long transfer logs how far it got.
pub(crate) const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// `host[:port]` of a URL, for messages.
pub(crate) fn host_of(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Runs `request` (a request up to its response head, or a whole small
/// fetch), failing if it takes longer than `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    host: &str,
    what: &str,
    request: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => result,
        Err(_) => Err(Error::DeadlineExceeded(format!(
            "registry {host} did not answer the request for {what} within {}s (pull_progress_timeout)",
            limit.as_secs_f64()
        ))),
    }
}

/// A response body being read.
pub(crate) struct Transfer {
    resp: Response,
    host: String,
    what: String,
    limit: Duration,
    expected: Option<u64>,
    received: u64,
    started: Instant,
    last_data: Instant,
    last_log: Instant,
}

impl Transfer {
    /// Starts reading `resp`, the body of `what`, which should be
    /// `expected` bytes when that is known.
    pub(crate) fn new(resp: Response, what: &str, limit: Duration, expected: Option<u64>) -> Self {
        let now = Instant::now();
        Transfer {
            host: host_of(resp.url()),
            resp,
            what: what.to_string(),
            limit,
            expected,
            received: 0,
            started: now,
            last_data: now,
            last_log: now,
        }
    }

    /// The host serving the body.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The body length the server declared.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.resp.content_length()
    }

    /// Bytes received so far.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// The next chunk of the body, `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>> {
        let chunk = match tokio::time::timeout(self.limit, self.resp.chunk()).await {
            Err(_) => return Err(self.stalled()),
            Ok(Err(e)) if e.is_timeout() => return Err(self.stalled()),
            Ok(Err(e)) => return Err(self.broken(&e)),
            Ok(Ok(chunk)) => chunk,
        };
        if let Some(c) = &chunk {
            self.received += c.len() as u64;
            self.last_data = Instant::now();
            if self.last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
                self.last_log = Instant::now();
                self.log_progress();
            }
        }
        Ok(chunk)
    }

    /// Reads the whole body, refusing more than `max` bytes.
    pub(crate) async fn read_all(mut self, max: u64) -> Result<Vec<u8>> {
        let too_big = |what: &str| {
            Error::invalid(format!(
                "{what} is larger than the {max} bytes accepted; refusing it"
            ))
        };
        if self.resp.content_length().is_some_and(|n| n > max) {
            return Err(too_big(&self.what));
        }
        let mut out = Vec::new();
        while let Some(chunk) = self.next().await? {
            if (out.len() + chunk.len()) as u64 > max {
                return Err(too_big(&self.what));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn log_progress(&self) {
        let secs = self.started.elapsed().as_secs_f64();
        let mib_per_s = self.received as f64 / (1 << 20) as f64 / secs.max(0.001);
        let percent = self
            .expected
            .filter(|n| *n > 0)
            .map(|n| self.received * 100 / n);
        tracing::info!(
            blob = %self.what,
            host = %self.host,
            received = self.received,
            size = self.expected,
            percent,
            mib_per_s = format!("{mib_per_s:.1}"),
            "pull progress"
        );
    }

    fn progress(&self) -> String {
        match self.expected {
            Some(n) => format!("{} of {n} bytes received", self.received),
            None => format!("{} bytes received", self.received),
        }
    }

    fn stalled(&self) -> Error {
        Error::DeadlineExceeded(format!(
            "{} stalled: registry {} sent nothing for {:.0}s ({}; pull_progress_timeout is {}s)",
            self.what,
            self.host,
            self.last_data.elapsed().as_secs_f64(),
            self.progress(),
            self.limit.as_secs_f64()
        ))
    }

    fn broken(&self, e: &reqwest::Error) -> Error {
        Error::Unavailable(format!(
            "fetching {} from registry {} broke off ({}): {}",
            self.what,
            self.host,
            self.progress(),
            error_chain(e)
        ))
    }
}

/// An error and its causes, joined with `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one response head and `body`, then stays silent for a while.
    async fn server(head: &'static str, body: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(body).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        addr.to_string()
    }

    async fn get(addr: &str) -> Response {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{addr}/blob"))
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_silent_body_is_a_deadline_naming_blob_and_host() {
        let addr = server("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"hello").await;
        let mut t = Transfer::new(
            get(&addr).await,
            "the blob",
            Duration::from_millis(300),
            Some(10),
        );
        assert_eq!(t.next().await.unwrap().unwrap(), "hello");
        assert_eq!(t.received(), 5);
        match t.next().await {
            Err(Error::DeadlineExceeded(m)) => {
                assert!(m.contains("the blob stalled"), "{m}");
                assert!(m.contains(&addr), "{m}");
                assert!(m.contains("5 of 10 bytes received"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn read_all_refuses_more_than_its_cap() {
        let addr = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            b"0123456789",
        )
        .await;
        let t = Transfer::new(get(&addr).await, "the config", Duration::from_secs(5), None);
        match t.read_all(4).await {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("the config is larger"), "{m}"),
            other => panic!("{other:?}"),
        }
        let addr = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            b"0123456789",
        )
        .await;
        let t = Transfer::new(get(&addr).await, "the config", Duration::from_secs(5), None);
        assert_eq!(t.read_all(10).await.unwrap(), b"0123456789");
    }
}
