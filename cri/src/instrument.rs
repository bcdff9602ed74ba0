//! The one wrapper in front of every RPC: a tracing span, a log line with the
//! duration, the RPC metrics, and the mapping of runtime errors to gRPC statuses.

use std::future::Future;
use std::time::Instant;

use crust_runtime::Error;
use tonic::{Code, Response, Status};
use tracing::Instrument;

/// Runs one RPC's body and turns its result into a gRPC response.
pub async fn rpc<T, F>(method: &'static str, body: F) -> Result<Response<T>, Status>
where
    F: Future<Output = crust_runtime::Result<T>>,
{
    let started = Instant::now();
    let span = tracing::info_span!("rpc", method);
    let result = body.instrument(span).await;
    let elapsed = started.elapsed();
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    match result {
        Ok(v) => {
            crate::metrics::record_rpc(method, elapsed, None);
            tracing::debug!(method, elapsed_ms, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            let status = to_status(e);
            crate::metrics::record_rpc(method, elapsed, Some(status.code()));
            if status.code() == Code::Internal {
                tracing::error!(method, elapsed_ms, error = %status.message(), "failed");
            } else {
                tracing::info!(method, elapsed_ms, code = ?status.code(), error = %status.message(), "refused");
            }
            Err(status)
        }
    }
}

/// Maps a runtime error to the gRPC status a client can act on.
pub fn to_status(e: Error) -> Status {
    match e {
        Error::NotFound(m) => Status::not_found(m),
        Error::InvalidArgument(m) => Status::invalid_argument(m),
        Error::AlreadyExists(m) => Status::already_exists(m),
        Error::FailedPrecondition(m) => Status::failed_precondition(m),
        Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        Error::Unimplemented(m) => Status::unimplemented(m),
        Error::Unavailable(m) => Status::unavailable(m),
        Error::ResourceExhausted(m) => Status::resource_exhausted(m),
        Error::PermissionDenied(m) => Status::permission_denied(m),
        Error::Unauthenticated(m) => Status::unauthenticated(m),
        Error::Internal(e) => Status::internal(format!("{e:#}")),
    }
}

/// When the client stops waiting for this call (its `grpc-timeout`, as
/// [`crate::deadline::Deadlines`] read it when the call arrived).
pub fn deadline<T>(req: &tonic::Request<T>) -> Option<Instant> {
    req.extensions()
        .get::<crate::deadline::ClientDeadline>()
        .map(|d| d.0)
}

/// The answer of an RPC crust does not implement yet.
pub fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!("{method} is not implemented by crust yet"))
}

/// Runs `f` on the blocking pool: what reads files or enters namespaces
/// stays off the threads that serve RPCs.
pub async fn off_thread<T, F>(f: F) -> crust_runtime::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("a worker task failed: {e}")))
}
