//! The CRI socket: binding it safely, serving both services on it, and shutting
//! down on SIGTERM/SIGINT.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};

use crate::config::Config;
use crate::deadline::Deadlines;
use crate::image_service::ImageService;
use crate::runtime_service::RuntimeService;
use crate::stream::StreamServer;

/// Largest CRI reply sent (a List of many objects can be large; kubelet
/// itself reads at most 16 MiB).
const MAX_MESSAGE: usize = 64 << 20;
/// Largest CRI request accepted: kubelet sends at most 16 MiB, and every
/// request crustd reads is held whole in memory while it is decoded.
const MAX_REQUEST: usize = 16 << 20;
/// Largest header block accepted, as tonic's server allows.
const MAX_HEADER_LIST: u32 = 16 << 20;

/// Opens the runtime, recovers its state, and serves CRI until a signal arrives.
pub async fn run(cfg: Config) -> Result<()> {
    let opts = crust_runtime::Options {
        root: cfg.root.clone(),
        state: cfg.state.clone(),
        handlers: cfg.handlers(),
        default_handler: cfg.runtime.default_runtime.clone(),
        shim: cfg.shim_path()?,
        shm_size: cfg.runtime.shm_size,
        default_cgroup_parent: cfg.runtime.cgroup_parent.clone(),
        images: cfg.image.options(),
        cni: crust_cni::Settings {
            conf_dirs: cfg.cni.conf_dirs.clone(),
            plugin_dirs: cfg.cni.plugin_dirs.clone(),
            cache_dir: cfg.root.join("cni"),
        },
    };
    tracing::info!(root = %opts.root.display(), state = %opts.state.display(), default_handler = %opts.default_handler, "starting crustd");
    let runtime = tokio::task::spawn_blocking(move || {
        let host = crust_runtime::Host::real(&opts)?;
        crust_runtime::Runtime::open(opts, host).map_err(anyhow::Error::from)
    })
    .await
    .context("recovery task")?
    .map_err(|e| anyhow::anyhow!("opening the runtime: {e:#}"))?;

    spawn_sweep(runtime.clone());
    let streams = Arc::new(StreamServer::start(&cfg.stream, runtime.clone()).await?);
    if !cfg.metrics.address.is_empty() {
        crate::metrics::start(&cfg.metrics.address, runtime.clone()).await?;
    }
    let listener = bind(&cfg.socket).await?;
    tracing::info!(socket = %cfg.socket.display(), "serving CRI");
    let cfg = Arc::new(cfg);
    let runtime_svc =
        RuntimeServiceServer::new(RuntimeService::new(runtime.clone(), cfg.clone(), streams))
            .max_decoding_message_size(MAX_REQUEST)
            .max_encoding_message_size(MAX_MESSAGE);
    let image_svc = ImageServiceServer::new(ImageService::new(runtime))
        .max_decoding_message_size(MAX_REQUEST)
        .max_encoding_message_size(MAX_MESSAGE);
    let routes = tonic::service::Routes::new(runtime_svc).add_service(image_svc);
    serve(listener, Deadlines::new(routes)).await;
    let _ = std::fs::remove_file(&cfg.socket);
    tracing::info!("crustd stopped; containers keep running under their shims");
    Ok(())
}

/// How long in-flight RPCs may take to finish once a shutdown signal arrived.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves HTTP/2 gRPC connections from `listener` with `service` until
/// SIGTERM or SIGINT; then stops accepting, lets the RPCs in flight finish
/// (up to [`SHUTDOWN_GRACE`]) and returns.
async fn serve<S>(listener: UnixListener, service: S)
where
    S: Service<
            Request<hyper::body::Incoming>,
            Response = Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a CRI connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let connection = http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(MAX_HEADER_LIST)
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "CRI connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "RPCs still running {}s after the shutdown signal are dropped",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

/// How often the undo steps kept objects owe, and CNI DEL of attachments
/// without a sandbox, are retried.
const SWEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

fn spawn_sweep(runtime: Arc<crust_runtime::Runtime>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_PERIOD);
        tick.tick().await;
        loop {
            tick.tick().await;
            let rt = runtime.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || rt.sweep_orphans()).await {
                tracing::warn!(error = %e, "the orphan sweep failed");
            }
        }
    });
}

async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "another process is already serving {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // Bound in a private directory, given its mode, then renamed into
    // place: the socket never exists at `path` with the umask's mode, not
    // even for an instant in which anyone could connect.
    let dir = path.parent().unwrap_or(Path::new("/"));
    let private = dir.join(format!(".crust-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let staged = private.join("s");
    let bound = (|| {
        let listener =
            UnixListener::bind(&staged).with_context(|| format!("binding {}", staged.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting the mode of {}", staged.display()))?;
        std::fs::rename(&staged, path)
            .with_context(|| format!("moving the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop crustd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
