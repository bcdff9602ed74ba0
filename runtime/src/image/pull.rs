//! Pulling: resolve the reference to one image manifest, fetch its config,
//! download and unpack the layers that are not unpacked yet, record it.
//!
//! A missing layer is streamed once: the HTTP body goes through a channel to
//! a blocking task that writes it to an ingest file and hashes it while
//! decompressing and unpacking it into a fresh snapshot directory and hashing
//! the uncompressed tar. Only when the blob digest, its size and the diff id
//! all match are the blob and the snapshot committed. Up to
//! `max_concurrent_downloads` layers (see [`super::ImageOptions`]) are in flight
//! at a time.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use tokio::sync::mpsc;

use super::content::Ingest;
use super::digest::{chain_ids, hex_of, sha256_of};
use super::manifest::{
    DOCKER_CONFIG, ImageManifest, MANIFEST_ACCEPT, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Manifest,
    OCI_CONFIG, layer_compression, parse_config, parse_manifest,
};
use super::platform::{self, Platform};
use super::record::{Image, ImageConfig, ImageLayer};
use super::reference::Reference;
use super::registry::{RegistryAuth, Repository};
use super::store::Inner;
use super::unpack::{ReadAbort, uncompressed_limit, unpack_layer};
use crate::{Error, Result};

/// Chunks of a layer download buffered between the network and the unpacker.
const CHANNEL_CHUNKS: usize = 32;

/// Prefixes an error's message, keeping its kind.
pub(crate) fn context(e: Error, ctx: &str) -> Error {
    match e {
        Error::NotFound(m) => Error::NotFound(format!("{ctx}: {m}")),
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{ctx}: {m}")),
        Error::AlreadyExists(m) => Error::AlreadyExists(format!("{ctx}: {m}")),
        Error::FailedPrecondition(m) => Error::FailedPrecondition(format!("{ctx}: {m}")),
        Error::DeadlineExceeded(m) => Error::DeadlineExceeded(format!("{ctx}: {m}")),
        Error::Unimplemented(m) => Error::Unimplemented(format!("{ctx}: {m}")),
        Error::Unavailable(m) => Error::Unavailable(format!("{ctx}: {m}")),
        Error::PermissionDenied(m) => Error::PermissionDenied(format!("{ctx}: {m}")),
        Error::Unauthenticated(m) => Error::Unauthenticated(format!("{ctx}: {m}")),
        Error::Internal(e) => Error::Internal(e.context(ctx.to_string())),
    }
}

/// Blobs and snapshots this pull uses, kept from the collector until it ends.
struct Pins {
    inner: Arc<Inner>,
    keys: Vec<String>,
}

impl Pins {
    fn blob(&mut self, digest: &str) {
        self.add(format!("blob:{digest}"));
    }

    fn snapshot(&mut self, chain_id: &str) {
        self.add(format!("snap:{chain_id}"));
    }

    fn add(&mut self, key: String) {
        self.inner.pin(std::slice::from_ref(&key));
        self.keys.push(key);
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        self.inner.unpin(&self.keys);
    }
}

/// One layer to make present.
#[derive(Clone, Debug)]
struct LayerJob {
    digest: String,
    size: u64,
    diff_id: String,
    chain_id: String,
    /// `layer sha256:… of image "…"`, for messages.
    what: String,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("pull task failed: {e}")))?
}

/// Pulls `reference` into the store behind `inner`.
pub(crate) async fn pull(
    inner: &Arc<Inner>,
    reference: &str,
    auth: &RegistryAuth,
) -> Result<Image> {
    let reference = Reference::parse(reference)?;
    let shown = reference.to_string();
    let what = format!("image {shown:?}");
    if let Some(digest) = reference.digest()
        && let Some(image) = inner.find_complete(&reference.with_digest(digest))
    {
        tracing::debug!(image = %shown, "already present");
        return Ok(image);
    }
    tracing::info!(image = %shown, "pulling");
    let started = std::time::Instant::now();
    let repo = inner.registry.repository(&reference, auth)?;
    let mut pins = Pins {
        inner: inner.clone(),
        keys: Vec::new(),
    };

    // The manifest the reference names: an index or an image manifest.
    let top_ref = reference
        .digest()
        .or(reference.tag())
        .ok_or_else(|| Error::internal("a parsed reference has neither tag nor digest"))?;
    let top = repo
        .manifest(top_ref, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, &what)
        .await?;
    let top_digest = sha256_of(&top.bytes);
    if let Some(want) = reference.digest()
        && want != top_digest
    {
        return Err(Error::invalid(format!(
            "registry {} served a manifest for {what} whose digest is {top_digest}",
            reference.domain()
        )));
    }
    let parsed = parse_manifest(&top.bytes, top.content_type.as_deref(), &what)?;
    pins.blob(&top_digest);
    store_blob(inner, &top_digest, top.bytes).await?;

    let (manifest, manifest_digest) = match parsed {
        Manifest::Image(m) => (m, top_digest.clone()),
        Manifest::Index(index) => {
            let platform = Platform::host();
            let chosen = platform::select(&index.manifests, &platform).ok_or_else(|| {
                Error::not_found(format!(
                    "{what} has no manifest for {platform}; it offers: {}",
                    platform::describe(&index.manifests)
                ))
            })?;
            let m = fetch_platform_manifest(
                inner,
                &repo,
                &mut pins,
                &chosen.digest,
                chosen.size,
                &platform,
                &what,
            )
            .await?;
            (m, chosen.digest.clone())
        }
    };

    // The config.
    let config = &manifest.config;
    if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
        return Err(Error::invalid(format!(
            "{what} is not a container image: its config has media type {:?}",
            config.media_type
        )));
    }
    hex_of(&config.digest, &what)?;
    if config.size > MAX_CONFIG_BYTES {
        return Err(Error::invalid(format!(
            "{what}: the image config is {} bytes, more than the {MAX_CONFIG_BYTES} accepted",
            config.size
        )));
    }
    pins.blob(&config.digest);
    let config_bytes = fetch_small_blob(
        inner,
        &repo,
        &config.digest,
        config.size,
        MAX_CONFIG_BYTES,
        &format!("the config of {what}"),
    )
    .await?;
    let config_file = parse_config(&config_bytes, &what)?;
    let diff_ids = config_file.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(format!(
            "{what}: the manifest lists {} layers but the config {} diff ids",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }

    // The layers.
    let chains = chain_ids(&diff_ids);
    let mut jobs = Vec::with_capacity(manifest.layers.len());
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for ((layer, diff_id), chain_id) in manifest.layers.iter().zip(&diff_ids).zip(&chains) {
        let layer_what = format!("layer {} of {what}", layer.digest);
        layer_compression(&layer.media_type).map_err(|e| context(e, &layer_what))?;
        hex_of(&layer.digest, &layer_what)?;
        hex_of(diff_id, &layer_what)?;
        pins.blob(&layer.digest);
        pins.snapshot(chain_id);
        layers.push(ImageLayer {
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: diff_id.clone(),
            chain_id: chain_id.clone(),
        });
        jobs.push(LayerJob {
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: diff_id.clone(),
            chain_id: chain_id.clone(),
            what: layer_what,
        });
    }
    stream::iter(jobs)
        .map(|job| ensure_layer(inner, &repo, job))
        .buffer_unordered(inner.options.max_concurrent_downloads.max(1))
        .try_collect::<Vec<()>>()
        .await?;

    let image = Image {
        id: config.digest.clone(),
        repo_tags: match reference.digest() {
            // A tag next to a digest is not what was pulled; containerd drops it too.
            Some(_) => Vec::new(),
            None => reference.tagged_name().into_iter().collect(),
        },
        repo_digests: vec![reference.with_digest(&top_digest)],
        size: config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
        config: ImageConfig::from_parts(
            config_file.config,
            String::from_utf8_lossy(&config_bytes).into_owned(),
        ),
        layers,
        manifest_digests: vec![manifest_digest],
        pulled_at: now_ns(),
    };
    let committer = inner.clone();
    let (image, collect) = blocking(move || committer.commit_pull(image)).await?;
    drop(pins);
    if collect {
        let collector = inner.clone();
        blocking(move || collector.gc()).await?;
    }
    tracing::info!(image = %shown, id = %image.id, elapsed_ms = started.elapsed().as_millis() as u64, "pulled");
    Ok(image)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn store_blob(inner: &Arc<Inner>, digest: &str, data: Vec<u8>) -> Result<()> {
    let inner = inner.clone();
    let digest = digest.to_string();
    blocking(move || inner.content.write(&digest, &data)).await
}

/// A small blob (manifest or config) from the content store, or fetched,
/// verified and stored. The caller has pinned it.
async fn fetch_small_blob(
    inner: &Arc<Inner>,
    repo: &Repository,
    digest: &str,
    size: u64,
    max: u64,
    what: &str,
) -> Result<Vec<u8>> {
    if inner.content.has(digest) {
        let reader = inner.clone();
        let d = digest.to_string();
        return blocking(move || reader.content.read(&d, max)).await;
    }
    let data = repo.blob_bytes(digest, max, what).await?;
    check_small(&data, digest, size, what)?;
    store_blob(inner, digest, data.clone()).await?;
    Ok(data)
}

fn check_small(data: &[u8], digest: &str, size: u64, what: &str) -> Result<()> {
    let got = sha256_of(data);
    if got != digest {
        return Err(Error::invalid(format!(
            "{what}: the registry served content hashing to {got}, not {digest}"
        )));
    }
    if data.len() as u64 != size {
        return Err(Error::invalid(format!(
            "{what}: the registry served {} bytes where the descriptor says {size}",
            data.len()
        )));
    }
    Ok(())
}

async fn fetch_platform_manifest(
    inner: &Arc<Inner>,
    repo: &Repository,
    pins: &mut Pins,
    digest: &str,
    size: u64,
    platform: &Platform,
    what: &str,
) -> Result<ImageManifest> {
    let what = format!("the {platform} manifest of {what}");
    hex_of(digest, &what)?;
    if size > MAX_MANIFEST_BYTES {
        return Err(Error::invalid(format!(
            "{what} is {size} bytes; refusing it"
        )));
    }
    pins.blob(digest);
    let (bytes, content_type) = if inner.content.has(digest) {
        let reader = inner.clone();
        let d = digest.to_string();
        (
            blocking(move || reader.content.read(&d, MAX_MANIFEST_BYTES)).await?,
            None,
        )
    } else {
        let fetched = repo
            .manifest(digest, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, &what)
            .await?;
        check_small(&fetched.bytes, digest, size, &what)?;
        (fetched.bytes, fetched.content_type)
    };
    let manifest = match parse_manifest(&bytes, content_type.as_deref(), &what)? {
        Manifest::Image(m) => m,
        Manifest::Index(_) => {
            return Err(Error::invalid(format!(
                "{what} is another index; nested indexes are not supported"
            )));
        }
    };
    store_blob(inner, digest, bytes).await?;
    Ok(manifest)
}

/// Makes the snapshot of one layer present, downloading its blob if needed.
async fn ensure_layer(inner: &Arc<Inner>, repo: &Repository, job: LayerJob) -> Result<()> {
    let _snapshot_lock = inner.locks.lock(&format!("snap:{}", job.chain_id)).await;
    if inner.snapshots.exists(&job.chain_id) {
        tracing::debug!(layer = %job.digest, "already unpacked");
        return Ok(());
    }
    let _blob_lock = inner.locks.lock(&format!("blob:{}", job.digest)).await;
    let what = job.what.clone();
    let result = if inner.content.has(&job.digest) {
        let inner = inner.clone();
        blocking(move || {
            let blob = inner.content.open_blob(&job.digest)?;
            unpack_and_commit(&inner, blob, &job)
        })
        .await
    } else {
        download_and_unpack(inner, repo, job).await
    };
    result.map_err(|e| context(e, &what))
}

/// What travels from the download to the unpacker.
enum Chunk {
    Data(Bytes),
    End,
}

async fn download_and_unpack(inner: &Arc<Inner>, repo: &Repository, job: LayerJob) -> Result<()> {
    // Errors get the layer's name from the caller.
    let mut resp = repo.blob(&job.digest, "the layer blob").await?;
    if let Some(len) = resp.content_length()
        && len != job.size
    {
        return Err(Error::invalid(format!(
            "the registry offers {len} bytes where the manifest says {}",
            job.size
        )));
    }
    let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
    let unpacker = {
        let inner = inner.clone();
        let job = job.clone();
        tokio::task::spawn_blocking(move || unpack_streamed(&inner, rx, &job))
    };
    let size = job.size;
    let download = async move {
        let mut received = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| repo.body_error(e, "the layer blob"))?
        {
            received += chunk.len() as u64;
            if received > size {
                return Err(Error::invalid(format!(
                    "the registry sent more than the {size} bytes the manifest declares"
                )));
            }
            if tx.send(Chunk::Data(chunk)).await.is_err() {
                // The unpacker stopped; its result says why.
                return Ok(());
            }
        }
        if received != size {
            return Err(Error::Unavailable(format!(
                "the download ended after {received} of {size} bytes"
            )));
        }
        let _ = tx.send(Chunk::End).await;
        Ok(())
    };
    let (downloaded, unpacked) = tokio::join!(download, unpacker);
    downloaded?;
    unpacked.map_err(|e| Error::internal(format!("unpack task failed: {e}")))?
}

/// Unpacks a blob streaming in from the download while storing it, then
/// verifies and commits both.
fn unpack_streamed(inner: &Inner, rx: mpsc::Receiver<Chunk>, job: &LayerJob) -> Result<()> {
    let mut ingest = inner.content.ingest()?;
    let prepared = inner.snapshots.prepare()?;
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
    commit(inner, prepared, Some(ingest), job)
}

fn unwrap_abort(e: io::Error) -> Error {
    let text = e.to_string();
    match e.into_inner().map(|i| i.downcast::<ReadAbort>()) {
        Some(Ok(abort)) => abort.0,
        _ => Error::internal(format!("reading a layer failed: {text}")),
    }
}

/// Unpacks a blob already in the content store and commits the snapshot.
fn unpack_and_commit<R: Read>(inner: &Inner, blob: R, job: &LayerJob) -> Result<()> {
    let prepared = inner.snapshots.prepare()?;
    let diff_id = unpack_layer(blob, prepared.path(), uncompressed_limit(job.size))?;
    check_diff_id(&diff_id, job)?;
    commit(inner, prepared, None, job)
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
    inner: &Inner,
    prepared: super::snapshot::Prepared,
    ingest: Option<Ingest>,
    job: &LayerJob,
) -> Result<()> {
    if let Some(ingest) = ingest {
        ingest.commit()?;
    }
    inner.snapshots.commit(prepared, &job.chain_id)?;
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
