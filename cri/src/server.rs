//! The CRI socket: binding it safely, serving both services on it, and shutting
//! down on SIGTERM/SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::image_service::ImageService;
use crate::runtime_service::RuntimeService;

/// Largest CRI message accepted or sent (ExecSync output may be 2×16 MiB).
const MAX_MESSAGE: usize = 64 << 20;

/// Opens the runtime, recovers its state, and serves CRI until a signal arrives.
pub async fn run(cfg: Config) -> Result<()> {
    let opts = crust_runtime::Options {
        root: cfg.root.clone(),
        state: cfg.state.clone(),
        runc: cfg.runc_path()?,
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
    tracing::info!(root = %opts.root.display(), state = %opts.state.display(), runc = %opts.runc.display(), "starting crustd");
    let runtime = tokio::task::spawn_blocking(move || crust_runtime::Runtime::open(opts))
        .await
        .context("recovery task")?
        .map_err(|e| anyhow::anyhow!("opening the runtime: {e:#}"))?;

    spawn_network_gc(runtime.clone());
    let listener = bind(&cfg.socket).await?;
    tracing::info!(socket = %cfg.socket.display(), "serving CRI");
    let cfg = Arc::new(cfg);
    let runtime_svc = RuntimeServiceServer::new(RuntimeService::new(runtime.clone(), cfg.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let image_svc = ImageServiceServer::new(ImageService::new(runtime))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let served = tonic::transport::Server::builder()
        .add_service(runtime_svc)
        .add_service(image_svc)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown())
        .await;
    let _ = std::fs::remove_file(&cfg.socket);
    served.context("serving CRI")?;
    tracing::info!("crustd stopped; containers keep running under their shims");
    Ok(())
}

/// How often network attachments without a sandbox are retried for DEL.
const NETWORK_GC_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

fn spawn_network_gc(runtime: Arc<crust_runtime::Runtime>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(NETWORK_GC_PERIOD);
        tick.tick().await;
        loop {
            tick.tick().await;
            let rt = runtime.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || rt.collect_network_orphans()).await
            {
                tracing::warn!(error = %e, "network garbage collection task failed");
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
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
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
