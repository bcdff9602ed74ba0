//! A CRI connection that sends each call's `grpc-timeout` header but does not
//! enforce it itself. tonic's channel answers a call whose deadline passed
//! with its own `Cancelled` before the server's answer arrives; over this
//! connection what the test sees is crustd's answer to the passing deadline.

use std::path::Path;

use anyhow::{Context, Result};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::codegen::http::{Request, Uri};

/// Opens one HTTP/2 connection to the CRI socket at `socket` and returns
/// runtime and image clients on it.
pub async fn connect(
    socket: &Path,
) -> Result<(
    RuntimeServiceClient<impl GrpcService<Body, ResponseBody = hyper::body::Incoming> + Clone>,
    ImageServiceClient<impl GrpcService<Body, ResponseBody = hyper::body::Incoming> + Clone>,
)> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .context("HTTP/2 handshake with crustd")?;
    tokio::spawn(connection);
    let service = tower::service_fn(move |mut req: Request<Body>| {
        let mut sender = sender.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            *req.uri_mut() = Uri::builder()
                .scheme("http")
                .authority("localhost")
                .path_and_query(path)
                .build()
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            sender
                .send_request(req)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        }
    });
    Ok((
        RuntimeServiceClient::new(service.clone()),
        ImageServiceClient::new(service),
    ))
}
