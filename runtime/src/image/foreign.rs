//! Non-distributable layers (OCI `…layer.nondistributable…`, Docker
//! `…rootfs.foreign…`): a registry may not hold them, and their descriptor's
//! `urls` say where else they may be fetched. As the OCI image spec has it,
//! the registry is asked first; only when it does not have the blob are the
//! URLs tried, in order.
//!
//! Only `http` and `https` URLs are used, at most [`MAX_URLS`] of them, with
//! a client of their own that never sends the pull's registry credentials
//! (those servers are not the registry). What they serve goes through the
//! same size, digest and diff id checks as any blob.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::{Response, StatusCode};

use super::transfer::{error_chain, host_of, within};
use crate::{Error, Result};

/// How many of a descriptor's URLs are tried.
pub(crate) const MAX_URLS: usize = 4;
/// How long connecting to a URL's server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

static CLIENT: OnceLock<std::result::Result<reqwest::Client, String>> = OnceLock::new();

fn client() -> Result<&'static reqwest::Client> {
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("crust/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::internal(format!("building the HTTP client for layer URLs: {e}")))
}

/// Starts fetching a blob from the first of `urls` that serves it; each
/// request may take `limit` up to its response head. `what` names the blob.
pub(crate) async fn fetch(urls: &[String], limit: Duration, what: &str) -> Result<Response> {
    let client = client()?;
    let mut failures = Vec::new();
    let mut retryable = false;
    for raw in urls.iter().take(MAX_URLS) {
        let url = match reqwest::Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            Ok(url) => {
                failures.push(format!(
                    "{raw:?}: scheme {:?} is not http or https",
                    url.scheme()
                ));
                continue;
            }
            Err(e) => {
                failures.push(format!("{raw:?}: not a URL ({e})"));
                continue;
            }
        };
        let host = host_of(&url);
        tracing::info!(blob = %what, url = %url, "fetching a non-distributable layer from its URL");
        let request = async {
            client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| Error::Unavailable(error_chain(&e)))
        };
        match within(limit, &host, what, request).await {
            Ok(resp) if resp.status().is_success() => return Ok(resp),
            Ok(resp) => {
                let status = resp.status();
                retryable |= status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT;
                failures.push(format!("{url}: HTTP {}", status.as_u16()));
            }
            Err(e) => {
                retryable = true;
                failures.push(format!("{url}: {e}"));
            }
        }
    }
    if urls.len() > MAX_URLS {
        failures.push(format!(
            "{} more URLs not tried (at most {MAX_URLS} are)",
            urls.len() - MAX_URLS
        ));
    }
    let msg = format!(
        "{what} is not in the registry, and none of its URLs served it: {}",
        failures.join("; ")
    );
    Err(if retryable {
        Error::Unavailable(msg)
    } else {
        Error::not_found(msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_other_schemes_and_garbage() {
        let urls = vec![
            "file:///etc/passwd".to_string(),
            "ftp://example.invalid/x".to_string(),
            "not a url".to_string(),
        ];
        match fetch(&urls, Duration::from_secs(1), "the layer").await {
            Err(Error::NotFound(m)) => {
                assert!(m.contains("\"file\" is not http or https"), "{m}");
                assert!(m.contains("\"ftp\""), "{m}");
                assert!(m.contains("not a URL"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}
