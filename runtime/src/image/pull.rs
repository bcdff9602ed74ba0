//! Pulling: resolve the reference to one image manifest, fetch its config,
//! download and unpack the layers that are not unpacked yet, record it.
//!
//! A missing layer is streamed once: the HTTP body goes through a channel to
//! a blocking task that writes it to an ingest file and hashes it while
//! decompressing and unpacking it into a fresh snapshot directory and hashing
//! the uncompressed tar. Only when the blob digest, its size and the diff id
//! all match are the blob and the snapshot committed. Up to
//! `max_concurrent_downloads` layers (see [`super::ImageOptions`]) are in flight
//! at a time; when one fails, the others stop, and the pull returns only once
//! every half-written file of theirs is gone.
//!
//! What a manifest may declare is bounded before anything is fetched
//! ([`MAX_LAYERS`], [`MAX_LAYER_BYTES`], [`MAX_CONFIG_BYTES`],
//! [`MAX_MANIFEST_BYTES`]), and every transfer fails once it receives
//! nothing for `progress_timeout` (see the transfer module).
//!
//! Blobs are locked by digest and snapshots by chain id while they are made,
//! so concurrent pulls of one image, or of images sharing layers, fetch and
//! unpack each blob once: the later one waits and then finds it present.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::content::Ingest;
use super::digest::{chain_ids, hex_of, sha256_of};
use super::foreign;
use super::manifest::{
    DOCKER_CONFIG, ImageManifest, MANIFEST_ACCEPT, MAX_CONFIG_BYTES, MAX_LAYER_BYTES, MAX_LAYERS,
    MAX_MANIFEST_BYTES, Manifest, OCI_CONFIG, is_non_distributable, layer_compression,
    parse_config, parse_manifest,
};
use super::platform::{self, Platform};
use super::record::{Image, ImageConfig, ImageLayer};
use super::reference::Reference;
use super::registry::{RegistryAuth, Repository};
use super::store::Inner;
use super::transfer::{Transfer, within};
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
        Error::ResourceExhausted(m) => Error::ResourceExhausted(format!("{ctx}: {m}")),
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
    /// Where else the blob may be fetched when the registry lacks it
    /// (non-distributable layers only).
    urls: Vec<String>,
    /// `layer sha256:… of image "…"`, for messages.
    what: String,
}

/// The repository a pull fetches from, and its registry host for messages.
struct Registry<'a> {
    repo: &'a Repository,
    host: &'a str,
}

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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("pull task failed: {e}")))?
}

/// Pulls `reference` into the store behind `inner`; what it logs carries
/// the image's name.
pub(crate) async fn pull(
    inner: &Arc<Inner>,
    reference: &str,
    auth: &RegistryAuth,
) -> Result<Image> {
    let span = tracing::info_span!("pull", image = %reference);
    pull_traced(inner, reference, auth).instrument(span).await
}

async fn pull_traced(inner: &Arc<Inner>, reference: &str, auth: &RegistryAuth) -> Result<Image> {
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
    let started = Instant::now();
    let limit = inner.options.progress_timeout;
    let host = reference.domain().to_string();
    let repo = inner.registry.repository(&reference, auth)?;
    let registry = Registry {
        repo: &repo,
        host: &host,
    };
    let mut pins = Pins {
        inner: inner.clone(),
        keys: Vec::new(),
    };

    // The manifest the reference names: an index or an image manifest.
    let top_ref = reference
        .digest()
        .or(reference.tag())
        .ok_or_else(|| Error::internal("a parsed reference has neither tag nor digest"))?;
    let top = within(
        limit,
        &host,
        &format!("the manifest of {what}"),
        repo.manifest(top_ref, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, &what),
    )
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
            let m = fetch_platform_manifest(inner, &registry, &mut pins, chosen, &platform, &what)
                .await?;
            (m, chosen.digest.clone())
        }
    };

    // Bounds on what the manifest declares, before anything is fetched.
    if manifest.layers.len() > MAX_LAYERS {
        return Err(Error::invalid(format!(
            "{what} has {} layers; at most {MAX_LAYERS} are accepted",
            manifest.layers.len()
        )));
    }
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
    for layer in &manifest.layers {
        let layer_what = format!("layer {} of {what}", layer.digest);
        layer_compression(&layer.media_type).map_err(|e| context(e, &layer_what))?;
        hex_of(&layer.digest, &layer_what)?;
        if layer.size > MAX_LAYER_BYTES {
            return Err(Error::invalid(format!(
                "{layer_what}: its descriptor says it is {} bytes, more than the {MAX_LAYER_BYTES} accepted",
                layer.size
            )));
        }
    }

    // The config.
    pins.blob(&config.digest);
    let (config_bytes, config_file) = fetch_small_blob(
        inner,
        &registry,
        &config.digest,
        config.size,
        MAX_CONFIG_BYTES,
        &format!("the config of {what}"),
        |bytes| parse_config(bytes, &what),
    )
    .await?;
    let diff_ids = config_file.rootfs.diff_ids;
    if diff_ids.len() > MAX_LAYERS {
        return Err(Error::invalid(format!(
            "{what}: its config lists {} layers; at most {MAX_LAYERS} are accepted",
            diff_ids.len()
        )));
    }
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
            urls: if is_non_distributable(&layer.media_type) {
                layer.urls.clone()
            } else {
                Vec::new()
            },
            what: layer_what,
        });
    }
    ensure_layers(inner, &registry, jobs).await?;

    let image = Image {
        id: config.digest.clone(),
        repo_tags: match reference.digest() {
            // A tag next to a digest is not what was pulled; containerd drops it too.
            Some(_) => Vec::new(),
            None => reference.tagged_name().into_iter().collect(),
        },
        repo_digests: vec![reference.with_digest(&top_digest)],
        size: manifest
            .layers
            .iter()
            .fold(config.size, |sum, l| sum.saturating_add(l.size)),
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

/// A small blob (a config) of `size` bytes and what `parse` makes of it,
/// from the content store, or fetched, verified, parsed and only then
/// stored: a stored blob is not fetched again, so one that does not parse
/// must not linger for another descriptor to name. The caller has pinned it.
async fn fetch_small_blob<T>(
    inner: &Arc<Inner>,
    registry: &Registry<'_>,
    digest: &str,
    size: u64,
    max: u64,
    what: &str,
    parse: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<(Vec<u8>, T)> {
    let _lock = inner.locks.lock(&format!("blob:{digest}")).await;
    if inner.content.has(digest) {
        let reader = inner.clone();
        let d = digest.to_string();
        let data = blocking(move || reader.content.read(&d, max)).await?;
        check_stored_size(data.len() as u64, size).map_err(|e| context(e, what))?;
        let parsed = parse(&data)?;
        return Ok((data, parsed));
    }
    let limit = inner.options.progress_timeout;
    let resp = within(limit, registry.host, what, registry.repo.blob(digest, what)).await?;
    let data = Transfer::new(resp, what, limit, Some(size))
        .read_all(max)
        .await?;
    check_small(&data, digest, size, what)?;
    let parsed = parse(&data)?;
    store_blob(inner, digest, data.clone()).await?;
    Ok((data, parsed))
}

/// A blob found in the content store by its digest must be as long as the
/// descriptor naming it says: limits (such as a layer's decompression
/// limit) are derived from the descriptor's size.
fn check_stored_size(stored: u64, declared: u64) -> Result<()> {
    if stored != declared {
        return Err(Error::invalid(format!(
            "the descriptor says {declared} bytes, but the stored blob with this digest is {stored} bytes; refusing the descriptor"
        )));
    }
    Ok(())
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
    registry: &Registry<'_>,
    pins: &mut Pins,
    chosen: &super::manifest::Descriptor,
    platform: &Platform,
    what: &str,
) -> Result<ImageManifest> {
    let digest = chosen.digest.as_str();
    let size = chosen.size;
    let what = format!("the {platform} manifest of {what}");
    hex_of(digest, &what)?;
    if size > MAX_MANIFEST_BYTES {
        return Err(Error::invalid(format!(
            "{what} is {size} bytes by its index entry, more than the {MAX_MANIFEST_BYTES} accepted; refusing it"
        )));
    }
    pins.blob(digest);
    let _lock = inner.locks.lock(&format!("blob:{digest}")).await;
    let (bytes, content_type) = if inner.content.has(digest) {
        let reader = inner.clone();
        let d = digest.to_string();
        (
            blocking(move || reader.content.read(&d, MAX_MANIFEST_BYTES)).await?,
            None,
        )
    } else {
        let fetched = within(
            inner.options.progress_timeout,
            registry.host,
            &what,
            registry
                .repo
                .manifest(digest, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, &what),
        )
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

/// Makes every layer's snapshot present, up to `max_concurrent_downloads` at
/// a time. On the first failure the others are told to stop, and this
/// returns that failure once all of them have ended (and so removed their
/// half-written files).
async fn ensure_layers(
    inner: &Arc<Inner>,
    registry: &Registry<'_>,
    jobs: Vec<LayerJob>,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    let mut running = stream::iter(jobs)
        .map(|job| ensure_layer(inner, registry, job, stop.clone()))
        .buffer_unordered(inner.options.max_concurrent_downloads.max(1));
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
    inner: &Arc<Inner>,
    registry: &Registry<'_>,
    job: LayerJob,
    mut stop: Stop,
) -> Result<()> {
    if stop.is_set() {
        return Err(stopped());
    }
    let snapshot_key = format!("snap:{}", job.chain_id);
    let _snapshot_lock = tokio::select! {
        guard = inner.locks.lock(&snapshot_key) => guard,
        _ = stop.wait() => return Err(stopped()),
    };
    if inner.snapshots.exists(&job.chain_id) {
        tracing::debug!(layer = %job.digest, "already unpacked");
        return Ok(());
    }
    let blob_key = format!("blob:{}", job.digest);
    let _blob_lock = tokio::select! {
        guard = inner.locks.lock(&blob_key) => guard,
        _ = stop.wait() => return Err(stopped()),
    };
    let what = job.what.clone();
    let started = Instant::now();
    let (digest, size) = (job.digest.clone(), job.size);
    let result = if inner.content.has(&job.digest) {
        tracing::info!(layer = %digest, size, "unpacking a stored layer");
        let inner = inner.clone();
        blocking(move || {
            let blob = inner.content.open_blob(&job.digest)?;
            let stored = blob
                .metadata()
                .map_err(|e| {
                    Error::Internal(anyhow::Error::new(e).context("inspecting a stored layer blob"))
                })?
                .len();
            check_stored_size(stored, job.size)?;
            unpack_and_commit(&inner, blob, &job)
        })
        .await
    } else {
        tracing::info!(layer = %digest, size, "downloading layer");
        download_and_unpack(inner, registry, job, stop).await
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
    inner: &Arc<Inner>,
    registry: &Registry<'_>,
    job: LayerJob,
    mut stop: Stop,
) -> Result<()> {
    // Errors get the layer's name from the caller.
    let what = "the layer blob";
    let limit = inner.options.progress_timeout;
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
        let inner = inner.clone();
        let job = job.clone();
        tokio::task::spawn_blocking(move || unpack_streamed(&inner, rx, &job))
    };
    let size = job.size;
    let pulled = &inner.pulled;
    let download = async move {
        loop {
            let next = tokio::select! {
                next = body.next() => next?,
                _ = stop.wait() => return Err(stopped()),
            };
            let Some(chunk) = next else { break };
            pulled
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
    inner.pulled.layers.fetch_add(1, Ordering::Relaxed);
    Ok(())
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
