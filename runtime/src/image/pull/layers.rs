//! Making the layers of a plan present: each one is found unpacked, unpacked
//! from its stored blob, or downloaded and unpacked as it streams in, under
//! the locks of its snapshot and blob, up to `max_concurrent_downloads` at a
//! time.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use tokio::sync::{mpsc, watch};

use crate::image::catalog::Catalog;
use crate::image::content::Ingest;
use crate::image::foreign;
use crate::image::snapshot::Prepared;
use crate::image::transfer::{Transfer, within};
use crate::image::unpack::{ReadAbort, uncompressed_limit, unpack_layer};
use crate::{Error, Result};

use super::plan::LayerJob;
use super::{Puller, Registry, blocking, check_stored_size, context};

/// Chunks of a layer download buffered between the network and the unpacker.
const CHANNEL_CHUNKS: usize = 32;

/// Tells the layers of one pull to stop once one of them failed.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the pull is stopping.
    async fn wait(&mut self) {
        // An error means the sender is gone, which only happens once the pull is over.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

fn stopped() -> Error {
    Error::Unavailable("stopped because another layer of the pull failed".into())
}

/// Makes every layer's snapshot present, up to `max_concurrent_downloads` at
/// a time. On the first failure the others are told to stop, and this
/// returns that failure once all of them have ended (and so removed their
/// half-written files).
pub(super) async fn ensure_layers(
    puller: &Puller,
    registry: &Registry<'_>,
    jobs: Vec<LayerJob>,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    let mut running = stream::iter(jobs)
        .map(|job| ensure_layer(puller, registry, job, stop.clone()))
        .buffer_unordered(puller.max_concurrent_downloads.max(1));
    let mut failure = None;
    while let Some(done) = running.next().await {
        if let Err(e) = done
            && failure.is_none()
        {
            let _ = stop_tx.send(true);
            failure = Some(e);
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Makes the snapshot of one layer present, downloading its blob if needed.
async fn ensure_layer(
    puller: &Puller,
    registry: &Registry<'_>,
    job: LayerJob,
    mut stop: Stop,
) -> Result<()> {
    if stop.is_set() {
        return Err(stopped());
    }
    let catalog = &puller.catalog;
    let snapshot_key = format!("snap:{}", job.chain_id);
    let _snapshot_lock = tokio::select! {
        guard = puller.locks.lock(&snapshot_key) => guard,
        _ = stop.wait() => return Err(stopped()),
    };
    if catalog.snapshots().exists(&job.chain_id) {
        tracing::debug!(layer = %job.digest, "already unpacked");
        return Ok(());
    }
    let blob_key = format!("blob:{}", job.digest);
    let _blob_lock = tokio::select! {
        guard = puller.locks.lock(&blob_key) => guard,
        _ = stop.wait() => return Err(stopped()),
    };
    let what = job.what.clone();
    let started = Instant::now();
    let (digest, size) = (job.digest.clone(), job.size);
    let result = if catalog.content().has(&job.digest) {
        tracing::info!(layer = %digest, size, "unpacking a stored layer");
        let catalog = catalog.clone();
        blocking(move || {
            let blob = catalog.content().open_blob(&job.digest)?;
            let stored = blob
                .metadata()
                .map_err(|e| {
                    Error::Internal(anyhow::Error::new(e).context("inspecting a stored layer blob"))
                })?
                .len();
            check_stored_size(stored, job.size)?;
            unpack_and_commit(&*catalog, blob, &job)
        })
        .await
    } else {
        tracing::info!(layer = %digest, size, "downloading layer");
        download_and_unpack(puller, registry, job, stop).await
    };
    match &result {
        Ok(()) => {
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                layer = %digest,
                size,
                elapsed_ms = started.elapsed().as_millis() as u64,
                mib_per_s = format!("{:.1}", size as f64 / (1 << 20) as f64 / secs.max(0.001)),
                "layer ready"
            );
        }
        Err(e) => tracing::info!(layer = %digest, error = %e, "layer failed"),
    }
    result.map_err(|e| context(e, &what))
}

/// What travels from the download to the unpacker.
enum Chunk {
    Data(Bytes),
    End,
}

async fn download_and_unpack(
    puller: &Puller,
    registry: &Registry<'_>,
    job: LayerJob,
    mut stop: Stop,
) -> Result<()> {
    // Errors get the layer's name from the caller.
    let what = "the layer blob";
    let limit = puller.progress_timeout;
    let request = within(
        limit,
        registry.host,
        what,
        registry.repo.blob(&job.digest, what),
    );
    let asked = tokio::select! {
        asked = request => asked,
        _ = stop.wait() => return Err(stopped()),
    };
    let resp = match asked {
        Err(Error::NotFound(registry_said)) if !job.urls.is_empty() => {
            tracing::info!(layer = %job.digest, registry = %registry_said, "the registry lacks a non-distributable layer; trying its URLs");
            tokio::select! {
                fetched = foreign::fetch(&job.urls, limit, what) => fetched?,
                _ = stop.wait() => return Err(stopped()),
            }
        }
        other => other?,
    };
    let mut body = Transfer::new(resp, what, limit, Some(job.size));
    if let Some(len) = body.content_length()
        && len != job.size
    {
        return Err(Error::invalid(format!(
            "{} offers a body of {len} bytes where the manifest says {}",
            body.host(),
            job.size
        )));
    }
    let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
    let unpacker = {
        let catalog = puller.catalog.clone();
        let job = job.clone();
        tokio::task::spawn_blocking(move || unpack_streamed(&*catalog, rx, &job))
    };
    let size = job.size;
    let totals = &puller.totals;
    let download = async move {
        loop {
            let next = tokio::select! {
                next = body.next() => next?,
                _ = stop.wait() => return Err(stopped()),
            };
            let Some(chunk) = next else { break };
            totals
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if body.received() > size {
                return Err(Error::invalid(format!(
                    "{} sent more than the {size} bytes the manifest declares",
                    body.host()
                )));
            }
            if tx.send(Chunk::Data(chunk)).await.is_err() {
                // The unpacker stopped; its result says why.
                return Ok(());
            }
        }
        if body.received() != size {
            return Err(Error::Unavailable(format!(
                "the download from {} ended after {} of {size} bytes",
                body.host(),
                body.received()
            )));
        }
        let _ = tx.send(Chunk::End).await;
        Ok(())
    };
    let (downloaded, unpacked) = tokio::join!(download, unpacker);
    let unpacked = unpacked.map_err(|e| Error::internal(format!("unpack task failed: {e}")))?;
    // The download's error explains an unpacker that saw its input break off.
    downloaded?;
    unpacked?;
    puller.totals.layers.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Unpacks a blob streaming in from the download while storing it, then
/// verifies and commits both.
fn unpack_streamed(catalog: &dyn Catalog, rx: mpsc::Receiver<Chunk>, job: &LayerJob) -> Result<()> {
    let mut ingest = catalog.content().ingest()?;
    let prepared = catalog.snapshots().prepare()?;
    let diff_id = {
        let mut tee = Tee {
            source: ChannelReader {
                rx,
                current: Bytes::new(),
                ended: false,
            },
            ingest: &mut ingest,
        };
        let diff_id = unpack_layer(&mut tee, prepared.path(), uncompressed_limit(job.size))?;
        // Whatever follows the compressed stream still belongs to the blob.
        io::copy(&mut tee, &mut io::sink()).map_err(unwrap_abort)?;
        diff_id
    };
    ingest.verify(&job.digest, job.size)?;
    check_diff_id(&diff_id, job)?;
    commit(catalog, prepared, Some(ingest), job)
}

fn unwrap_abort(e: io::Error) -> Error {
    let text = e.to_string();
    match e.into_inner().map(|i| i.downcast::<ReadAbort>()) {
        Some(Ok(abort)) => abort.0,
        _ => Error::internal(format!("reading a layer failed: {text}")),
    }
}

/// Unpacks a blob already in the content store and commits the snapshot.
fn unpack_and_commit<R: Read>(catalog: &dyn Catalog, blob: R, job: &LayerJob) -> Result<()> {
    let prepared = catalog.snapshots().prepare()?;
    let diff_id = unpack_layer(blob, prepared.path(), uncompressed_limit(job.size))?;
    check_diff_id(&diff_id, job)?;
    commit(catalog, prepared, None, job)
}

fn check_diff_id(diff_id: &str, job: &LayerJob) -> Result<()> {
    if diff_id != job.diff_id {
        return Err(Error::invalid(format!(
            "the uncompressed layer hashes to {diff_id}, but the image config says {}",
            job.diff_id
        )));
    }
    Ok(())
}

fn commit(
    catalog: &dyn Catalog,
    prepared: Prepared,
    ingest: Option<Ingest>,
    job: &LayerJob,
) -> Result<()> {
    if let Some(ingest) = ingest {
        ingest.commit()?;
    }
    catalog.snapshots().commit(prepared, &job.chain_id)?;
    tracing::debug!(layer = %job.digest, chain_id = %job.chain_id, "unpacked");
    Ok(())
}

/// Reads the chunks a download sends; a channel closed before [`Chunk::End`]
/// is an interrupted download.
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(b)) => self.current = b,
                Some(Chunk::End) => self.ended = true,
                None => {
                    return Err(ReadAbort::io(Error::Unavailable(
                        "the download was interrupted".into(),
                    )));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Copies what is read into the ingest file (which hashes it).
struct Tee<'a, R> {
    source: R,
    ingest: &'a mut Ingest,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.source.read(buf)?;
        io::Write::write_all(self.ingest, &buf[..n]).map_err(|e| {
            ReadAbort::io(Error::Internal(
                anyhow::Error::new(e).context("writing a layer to the content store"),
            ))
        })?;
        Ok(n)
    }
}
