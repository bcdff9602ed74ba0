//! Client deadlines. A CRI client sends its deadline as `grpc-timeout`; when
//! it passes before crust answers, the answer is `DeadlineExceeded`, as the
//! CRI expects (critest checks it on a PullImage with a 1 ms deadline).
//! tonic's own server answers `Cancelled` instead, so crustd serves its
//! routes through this wrapper on a plain hyper connection rather than
//! through tonic's server. Dropping the RPC's future at the deadline is what
//! happens when a client hangs up, which every RPC already survives.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{HeaderMap, Request, Response};

/// When the client stops waiting for a call: computed once from its
/// `grpc-timeout` when the call arrives, and put in the request's extensions
/// for the RPCs that hand it to the runtime (kubelet's create retries).
#[derive(Clone, Copy, Debug)]
pub struct ClientDeadline(pub Instant);

/// Wraps a gRPC service so each call ends at the client's deadline.
#[derive(Clone, Debug)]
pub struct Deadlines<S> {
    inner: S,
}

impl<S> Deadlines<S> {
    /// Bounds every call of `inner` by its `grpc-timeout`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> Service<Request<B>> for Deadlines<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let limit = grpc_timeout(req.headers());
        if let Some(limit) = limit {
            req.extensions_mut()
                .insert(ClientDeadline(Instant::now() + limit));
        }
        let method = req.uri().path().to_string();
        let call = self.inner.call(req);
        Box::pin(async move {
            let Some(limit) = limit else {
                return call.await;
            };
            match tokio::time::timeout(limit, call).await {
                Ok(response) => response,
                Err(_) => {
                    tracing::info!(%method, ?limit, "the client's deadline passed");
                    Ok(Status::deadline_exceeded(format!(
                        "{method}: the client's deadline ({limit:?}) passed before crust finished"
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// The `grpc-timeout` of a request, if it has a valid one.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(
            parse_grpc_timeout("3675u"),
            Some(Duration::from_micros(3675))
        );
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }

    /// A service that answers after `delay`.
    fn slow(
        delay: Duration,
    ) -> impl Service<
        Request<()>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    > {
        tower::service_fn(move |_req: Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Response::new(Body::default()))
        })
    }

    fn request(timeout: Option<&str>) -> Request<()> {
        let mut req = Request::builder().uri("/runtime.v1.ImageService/PullImage");
        if let Some(t) = timeout {
            req = req.header("grpc-timeout", t);
        }
        req.body(()).unwrap()
    }

    #[tokio::test]
    async fn deadline_passing_answers_deadline_exceeded() {
        let mut svc = Deadlines::new(slow(Duration::from_secs(5)));
        let response = svc.call(request(Some("1m"))).await.unwrap();
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status.message().contains("PullImage"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn calls_within_their_deadline_answer() {
        let mut svc = Deadlines::new(slow(Duration::from_millis(1)));
        let response = svc.call(request(Some("10S"))).await.unwrap();
        assert!(Status::from_header_map(response.headers()).is_none());
        let response = svc.call(request(None)).await.unwrap();
        assert!(Status::from_header_map(response.headers()).is_none());
    }

    #[tokio::test]
    async fn the_deadline_reaches_the_handler() {
        let mut svc = Deadlines::new(tower::service_fn(|req: Request<()>| async move {
            let mut response = Response::new(Body::default());
            if let Some(ClientDeadline(at)) = req.extensions().get::<ClientDeadline>() {
                let left = at.saturating_duration_since(Instant::now());
                response
                    .headers_mut()
                    .insert("left-ms", left.as_millis().to_string().parse().unwrap());
            }
            Ok::<_, Infallible>(response)
        }));
        let response = svc.call(request(Some("10S"))).await.unwrap();
        let left: u64 = response.headers()["left-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((9_000..=10_000).contains(&left), "{left} ms left");
        let response = svc.call(request(None)).await.unwrap();
        assert!(response.headers().get("left-ms").is_none());
    }
}
