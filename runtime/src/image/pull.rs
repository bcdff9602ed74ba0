//! Pulling: resolve the reference to one image manifest, check what it
//! declares, fetch its config, plan and make present its layers, record it.
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
//!
//! The store is reached only through [`Catalog`].
//!
//! [`MAX_LAYERS`]: super::MAX_LAYERS
//! [`MAX_LAYER_BYTES`]: super::MAX_LAYER_BYTES

mod bounds;
mod layers;
mod plan;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::catalog::{Catalog, Pinned};
use super::digest::{hex_of, sha256_of};
use super::locks::KeyedLocks;
use super::manifest::{
    ConfigFile, Descriptor, ImageManifest, MANIFEST_ACCEPT, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES,
    Manifest, parse_config, parse_manifest,
};
use super::options::ImageOptions;
use super::platform::{self, Platform};
use super::record::{Image, ImageConfig};
use super::reference::Reference;
use super::registry::{RegistryAuth, RegistryClient, Repository};
use super::transfer::{Transfer, within};
use crate::{Error, Result};

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

/// What every pull of one image store shares: the catalog it fills, the
/// registry client, the per-blob and per-snapshot locks, its limits and
/// what it downloaded.
#[derive(Debug)]
pub(crate) struct Puller {
    catalog: Arc<dyn Catalog>,
    registry: RegistryClient,
    /// `blob:<digest>` and `snap:<chain id>`, held while one is made.
    locks: KeyedLocks,
    progress_timeout: Duration,
    max_concurrent_downloads: usize,
    totals: PullTotals,
}

/// Counts of what pulls downloaded.
#[derive(Debug, Default)]
struct PullTotals {
    /// Layer bytes received from registries.
    bytes: AtomicU64,
    /// Layers downloaded and unpacked.
    layers: AtomicU64,
}

/// The repository a pull fetches from, and its registry host for messages.
struct Registry<'a> {
    repo: &'a Repository,
    host: &'a str,
}

/// Blobs and snapshots one pull uses, kept from the collector until it ends.
struct Pins {
    catalog: Arc<dyn Catalog>,
    items: Vec<Pinned>,
}

impl Pins {
    fn blob(&mut self, digest: &str) {
        self.add(Pinned::Blob(digest.to_string()));
    }

    fn add(&mut self, item: Pinned) {
        self.catalog.pin(&item);
        self.items.push(item);
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        self.catalog.unpin(&self.items);
    }
}

/// One pull in progress: where it fetches from, what it pinned, and the
/// image's name for messages.
struct Pull<'a> {
    puller: &'a Puller,
    registry: Registry<'a>,
    pins: Pins,
    /// `image "…"`.
    what: String,
}

/// The image manifest a reference resolves to.
struct Resolved {
    /// Digest of what the reference names: the manifest or its index.
    top_digest: String,
    /// The image manifest for this host's platform.
    manifest: ImageManifest,
    /// Its digest.
    manifest_digest: String,
}

/// An image config, as stored and as parsed.
struct Config {
    bytes: Vec<u8>,
    file: ConfigFile,
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("pull task failed: {e}")))?
}

impl Puller {
    /// A puller filling `catalog` from the registries `registry` reaches,
    /// with the limits of `options`.
    pub(crate) fn new(
        catalog: Arc<dyn Catalog>,
        registry: RegistryClient,
        options: &ImageOptions,
    ) -> Puller {
        Puller {
            catalog,
            registry,
            locks: KeyedLocks::default(),
            progress_timeout: options.progress_timeout,
            max_concurrent_downloads: options.max_concurrent_downloads,
            totals: PullTotals::default(),
        }
    }

    /// Layer bytes downloaded and layers unpacked by pulls so far.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.totals.bytes.load(Ordering::Relaxed),
            self.totals.layers.load(Ordering::Relaxed),
        )
    }

    /// Pulls `reference` into the catalog; what it logs carries the image's
    /// name.
    pub(crate) async fn pull(&self, reference: &str, auth: &RegistryAuth) -> Result<Image> {
        let span = tracing::info_span!("pull", image = %reference);
        self.pull_traced(reference, auth).instrument(span).await
    }

    async fn pull_traced(&self, reference: &str, auth: &RegistryAuth) -> Result<Image> {
        let reference = Reference::parse(reference)?;
        let shown = reference.to_string();
        if let Some(digest) = reference.digest()
            && let Some(image) = self.catalog.find(&reference.with_digest(digest))
        {
            tracing::debug!(image = %shown, "already present");
            return Ok(image);
        }
        tracing::info!(image = %shown, "pulling");
        let started = Instant::now();
        let host = reference.domain().to_string();
        let repo = self.registry.repository(&reference, auth)?;
        let mut pull = Pull {
            puller: self,
            registry: Registry {
                repo: &repo,
                host: &host,
            },
            pins: Pins {
                catalog: self.catalog.clone(),
                items: Vec::new(),
            },
            what: format!("image {shown:?}"),
        };

        let resolved = pull.resolve(&reference).await?;
        bounds::check_manifest(&resolved.manifest, &pull.what)?;
        let config = pull.fetch_config(&resolved.manifest.config).await?;
        let diff_ids = &config.file.rootfs.diff_ids;
        bounds::check_diff_ids(&resolved.manifest, diff_ids, &pull.what)?;
        let plan = plan::plan_layers(&resolved.manifest, diff_ids, &pull.what);
        for item in plan.pins() {
            pull.pins.add(item);
        }
        let layers = plan.layers();
        layers::ensure_layers(self, &pull.registry, plan.jobs).await?;

        let image = image_record(&reference, resolved, config, layers, now_ns());
        let image = pull.commit(image).await?;
        tracing::info!(image = %shown, id = %image.id, elapsed_ms = started.elapsed().as_millis() as u64, "pulled");
        Ok(image)
    }
}

impl Pull<'_> {
    /// Resolves the reference to the image manifest for this host's
    /// platform, through an index if it names one; stores and pins both.
    async fn resolve(&mut self, reference: &Reference) -> Result<Resolved> {
        let what = self.what.clone();
        let top_ref = reference
            .digest()
            .or(reference.tag())
            .ok_or_else(|| Error::internal("a parsed reference has neither tag nor digest"))?;
        let top = within(
            self.puller.progress_timeout,
            self.registry.host,
            &format!("the manifest of {what}"),
            self.registry
                .repo
                .manifest(top_ref, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, &what),
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
        self.pins.blob(&top_digest);
        self.store_blob(&top_digest, top.bytes).await?;

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
                let m = self.fetch_platform_manifest(chosen, &platform).await?;
                (m, chosen.digest.clone())
            }
        };
        Ok(Resolved {
            top_digest,
            manifest,
            manifest_digest,
        })
    }

    /// The image manifest an index entry names, from the content store or
    /// the registry; stored and pinned.
    async fn fetch_platform_manifest(
        &mut self,
        chosen: &Descriptor,
        platform: &Platform,
    ) -> Result<ImageManifest> {
        let digest = chosen.digest.as_str();
        let size = chosen.size;
        let what = format!("the {platform} manifest of {}", self.what);
        hex_of(digest, &what)?;
        if size > MAX_MANIFEST_BYTES {
            return Err(Error::invalid(format!(
                "{what} is {size} bytes by its index entry, more than the {MAX_MANIFEST_BYTES} accepted; refusing it"
            )));
        }
        self.pins.blob(digest);
        let catalog = &self.puller.catalog;
        let _lock = self.puller.locks.lock(&format!("blob:{digest}")).await;
        let (bytes, content_type) = if catalog.content().has(digest) {
            let reader = catalog.clone();
            let d = digest.to_string();
            (
                blocking(move || reader.content().read(&d, MAX_MANIFEST_BYTES)).await?,
                None,
            )
        } else {
            let fetched = within(
                self.puller.progress_timeout,
                self.registry.host,
                &what,
                self.registry
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
        self.store_blob(digest, bytes).await?;
        Ok(manifest)
    }

    /// The image config `descriptor` names, pinned, from the content store
    /// or fetched, verified, parsed and only then stored: a stored blob is
    /// not fetched again, so one that does not parse must not linger for
    /// another descriptor to name.
    async fn fetch_config(&mut self, descriptor: &Descriptor) -> Result<Config> {
        let digest = descriptor.digest.as_str();
        let size = descriptor.size;
        let what = format!("the config of {}", self.what);
        let parse = |bytes: &[u8]| parse_config(bytes, &self.what);
        self.pins.blob(digest);
        let catalog = &self.puller.catalog;
        let _lock = self.puller.locks.lock(&format!("blob:{digest}")).await;
        if catalog.content().has(digest) {
            let reader = catalog.clone();
            let d = digest.to_string();
            let bytes = blocking(move || reader.content().read(&d, MAX_CONFIG_BYTES)).await?;
            check_stored_size(bytes.len() as u64, size).map_err(|e| context(e, &what))?;
            let file = parse(&bytes)?;
            return Ok(Config { bytes, file });
        }
        let limit = self.puller.progress_timeout;
        let resp = within(
            limit,
            self.registry.host,
            &what,
            self.registry.repo.blob(digest, &what),
        )
        .await?;
        let bytes = Transfer::new(resp, &what, limit, Some(size))
            .read_all(MAX_CONFIG_BYTES)
            .await?;
        check_small(&bytes, digest, size, &what)?;
        let file = parse(&bytes)?;
        self.store_blob(digest, bytes.clone()).await?;
        Ok(Config { bytes, file })
    }

    /// Writes a verified small blob to the content store.
    async fn store_blob(&self, digest: &str, data: Vec<u8>) -> Result<()> {
        let catalog = self.puller.catalog.clone();
        let digest = digest.to_string();
        blocking(move || catalog.content().write(&digest, &data)).await
    }

    /// Records the image, unpins, and collects if the record took the last
    /// name of another image.
    async fn commit(self, image: Image) -> Result<Image> {
        let Pull { puller, pins, .. } = self;
        let committer = puller.catalog.clone();
        let (image, collect) = blocking(move || committer.commit(image)).await?;
        drop(pins);
        if collect {
            let collector = puller.catalog.clone();
            blocking(move || collector.gc()).await?;
        }
        Ok(image)
    }
}

/// The record of a pulled image.
fn image_record(
    reference: &Reference,
    resolved: Resolved,
    config: Config,
    layers: Vec<super::record::ImageLayer>,
    pulled_at: i64,
) -> Image {
    let Resolved {
        top_digest,
        manifest,
        manifest_digest,
    } = resolved;
    Image {
        id: manifest.config.digest.clone(),
        repo_tags: match reference.digest() {
            // A tag next to a digest is not what was pulled; containerd drops it too.
            Some(_) => Vec::new(),
            None => reference.tagged_name().into_iter().collect(),
        },
        repo_digests: vec![reference.with_digest(&top_digest)],
        size: manifest
            .layers
            .iter()
            .fold(manifest.config.size, |sum, l| sum.saturating_add(l.size)),
        config: ImageConfig::from_parts(
            config.file.config,
            String::from_utf8_lossy(&config.bytes).into_owned(),
        ),
        layers,
        manifest_digests: vec![manifest_digest],
        pulled_at,
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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

/// A small blob fetched whole must hash to its digest and be as long as its
/// descriptor says.
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
