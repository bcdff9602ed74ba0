//! [`ImageStore`]: the records of pulled images, name lookup, removal,
//! container leases and garbage collection, over the content store and the
//! snapshots.
//!
//! Locking: `state` (in memory: records, leases, pins) is held only briefly
//! and never across I/O that can block for long; `meta_lock` serializes every
//! change of records and leases together with writing them to disk, so files
//! and memory change in the same order; `gc_lock` keeps collections from
//! overlapping. A pull pins (in memory) every blob and snapshot it uses
//! before looking at it, and a collection decides what to delete and
//! uncommits it under `state`, so a pull never builds on something a
//! concurrent collection is taking away.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;

use super::catalog::{Catalog, Pinned};
use super::content::ContentStore;
use super::digest::hex_of;
use super::options::ImageOptions;
use super::pull::Puller;
use super::record::{Image, Lease, MetaFiles};
use super::reference::Reference;
use super::registry::{RegistryAuth, RegistryClient};
use super::snapshot::Snapshots;
use super::usage::{FsUsage, ImageTallies};
use crate::{Error, Result};

/// Shortest image id prefix accepted in place of a full id.
pub const MIN_ID_PREFIX: usize = 4;

/// The image store of one crustd root. Cheap to share (`Arc<ImageStore>`).
#[derive(Debug)]
pub struct ImageStore {
    inner: Arc<Inner>,
    /// Pulls into `inner`, which it sees only as a [`Catalog`].
    puller: Puller,
}

/// The records, leases and pins, with the blobs and snapshots they keep.
#[derive(Debug)]
struct Inner {
    root: PathBuf,
    options: ImageOptions,
    content: ContentStore,
    snapshots: Snapshots,
    meta: MetaFiles,
    tallies: ImageTallies,
    state: Mutex<State>,
    meta_lock: Mutex<()>,
    gc_lock: Mutex<()>,
    _root_lock: nix::fcntl::Flock<File>,
}

#[derive(Debug, Default)]
struct State {
    images: BTreeMap<String, Image>,
    leases: HashMap<String, Lease>,
    /// Blobs and snapshots in use by running pulls, with how many pins each.
    pins: HashMap<Pinned, usize>,
}

/// How a name matched an image.
enum Found {
    /// By id or id prefix.
    Id(String),
    /// By a digest reference.
    Digest(String),
    /// By this tag reference.
    Tag(String, String),
}

/// What removing a name does to its image.
enum Change {
    /// The image goes.
    Delete(String),
    /// The image stays with fewer names.
    Update(Box<Image>),
}

impl Found {
    fn id(&self) -> &str {
        match self {
            Found::Id(id) | Found::Digest(id) | Found::Tag(id, _) => id,
        }
    }
}

impl State {
    fn resolve(&self, s: &str) -> Option<Found> {
        if let Some(hex) = s.strip_prefix("sha256:")
            && hex.len() == 64
        {
            return self
                .images
                .contains_key(s)
                .then(|| Found::Id(s.to_string()));
        }
        if let Ok(r) = Reference::parse(s) {
            if let Some(d) = r.digest() {
                let want = r.with_digest(d);
                if let Some(img) = self
                    .images
                    .values()
                    .find(|i| i.repo_digests.contains(&want))
                {
                    return Some(Found::Digest(img.id.clone()));
                }
            } else if let Some(tag) = r.tagged_name()
                && let Some(img) = self.images.values().find(|i| i.repo_tags.contains(&tag))
            {
                return Some(Found::Tag(img.id.clone(), tag));
            }
        }
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() < MIN_ID_PREFIX
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let prefix = format!("sha256:{hex}");
        let mut matches = self
            .images
            .range(prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&prefix));
        match (matches.next(), matches.next()) {
            (Some((id, _)), None) => Some(Found::Id(id.clone())),
            _ => None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("image store task failed: {e}")))?
}

impl ImageStore {
    /// Opens the store under crustd's root dir (e.g. `/var/lib/crust`): loads
    /// the records and leases, removes leftovers of interrupted pulls and
    /// unpacks, and collects whatever nothing references. Fails with
    /// [`Error::FailedPrecondition`] if another process has the store open.
    pub fn open(root: &Path, options: ImageOptions) -> Result<ImageStore> {
        let root =
            std::path::absolute(root).with_context(|| format!("resolving {}", root.display()))?;
        let meta_dir = root.join("meta");
        fs::create_dir_all(&meta_dir)
            .with_context(|| format!("creating {}", meta_dir.display()))?;
        let lock_path = meta_dir.join("image-store.lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let root_lock =
            nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| {
                    Error::FailedPrecondition(format!(
                        "the image store under {} is in use by another process ({e})",
                        root.display()
                    ))
                })?;

        for name in options.pinned_images.iter().map(|n| n.trim()) {
            let id_like = hex_of(name, "").is_ok()
                || (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()));
            if !id_like && Reference::parse(name).is_err() {
                tracing::warn!(entry = %name, "pinned_images: this entry is neither an image reference nor an image id; it pins nothing");
            }
        }
        let content = ContentStore::open(&root.join("content"))?;
        let snapshots = Snapshots::open(&root.join("snapshots"))?;
        let meta = MetaFiles::open(&meta_dir)?;

        let mut images: Vec<Image> = meta
            .load_images()?
            .into_iter()
            .filter(|i| hex_of(&i.id, "image id").is_ok())
            .collect();
        // A crash between moving a tag and saving the image it left may leave
        // the tag on two records: the newer pull keeps it.
        images.sort_by_key(|i| std::cmp::Reverse(i.pulled_at));
        let mut seen = HashSet::new();
        let mut state = State::default();
        for mut image in images {
            let before = image.repo_tags.len();
            image.repo_tags.retain(|t| seen.insert(t.clone()));
            if image.repo_tags.len() != before {
                if image.is_named() {
                    meta.save_image(&image)?;
                } else {
                    meta.delete_image(&image.id)?;
                    continue;
                }
            }
            state.images.insert(image.id.clone(), image);
        }
        state.leases = meta.load_leases()?.into_iter().collect();

        let registry = RegistryClient::new(&options)?;
        let inner = Arc::new(Inner {
            root,
            options,
            content,
            snapshots,
            meta,
            tallies: ImageTallies::default(),
            state: Mutex::new(state),
            meta_lock: Mutex::new(()),
            gc_lock: Mutex::new(()),
            _root_lock: root_lock,
        });
        let puller = Puller::new(inner.clone(), registry, &inner.options);
        let store = ImageStore { inner, puller };
        store.inner.gc()?;
        Ok(store)
    }

    /// Pulls `reference` (or finds it already present) and records it under
    /// its normalized name; returns the record. Concurrent pulls of the same
    /// image or of images sharing layers download and unpack a layer once.
    pub async fn pull(&self, reference: &str, auth: &RegistryAuth) -> Result<Image> {
        auth.check()?;
        let pulled = self.puller.pull(reference, auth).await;
        // A pull churns through megabytes of buffers; hand them back to the OS
        // rather than let the allocator keep them for the daemon's lifetime.
        crate::sys::process::release_free_memory();
        pulled
    }

    /// Finds an image by id (`sha256:<hex>`), a unique id prefix of at least
    /// [`MIN_ID_PREFIX`] hex digits (with or without `sha256:`), a tag
    /// reference (normalized or not) or a digest reference.
    pub fn get(&self, reference_or_id: &str) -> Option<Image> {
        let state = lock(&self.inner.state);
        let found = state.resolve(reference_or_id)?;
        state.images.get(found.id()).cloned()
    }

    /// Whether `image` is one of the configured pinned images: an entry of
    /// `pinned_images` names it by id (with or without `sha256:`), by one of
    /// its tags (normalized: `busybox` is `docker.io/library/busybox:latest`)
    /// or by one of its digest references (a tag next to the digest is
    /// ignored, as in a pull).
    pub fn is_pinned(&self, image: &Image) -> bool {
        self.inner
            .options
            .pinned_images
            .iter()
            .any(|p| names_image(p, image))
    }

    /// Every image.
    pub fn list(&self) -> Vec<Image> {
        lock(&self.inner.state).images.values().cloned().collect()
    }

    /// Removes an image the way CRI's RemoveImage does. By tag: that tag, and
    /// the digest references of its repository if no other tag of that
    /// repository remains; the image goes once it has no names left (as in
    /// CRI-O; containerd drops every name of the image whichever one is
    /// given, which loses the other tags kubelet may still use). By id, id
    /// prefix or digest reference: the image with all its names. Absent is
    /// fine. Then collects what nothing references any more; snapshots a
    /// container holds stay until it releases them.
    pub async fn remove(&self, reference_or_id: &str) -> Result<()> {
        let inner = self.inner.clone();
        let name = reference_or_id.to_string();
        blocking(move || {
            inner.remove(&name)?;
            inner.gc()
        })
        .await
    }

    /// Lower directories for an overlay mount of `image`, topmost layer first.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| {
                self.inner.snapshots.lookup(&l.chain_id).ok_or_else(|| {
                    Error::not_found(format!(
                        "layer {} of image {} is not unpacked; pull the image again",
                        l.digest, image.id
                    ))
                })
            })
            .collect()
    }

    /// Makes the container `container_id` hold the snapshots of `image` until
    /// [`ImageStore::release`], even if the image is removed meanwhile.
    /// Holding again replaces the earlier hold.
    pub fn hold(&self, container_id: &str, image: &Image) -> Result<()> {
        self.inner.hold(container_id, image)
    }

    /// Drops the hold of `container_id` (absent is fine) and collects what
    /// became unreferenced.
    pub fn release(&self, container_id: &str) -> Result<()> {
        if self.inner.release(container_id)? {
            self.inner.gc()?;
        }
        Ok(())
    }

    /// Drops the holds of every container not in `known` (what a crash in
    /// the middle of a CreateContainer leaves) and collects what they held.
    pub fn release_all_except(&self, known: &HashSet<String>) -> Result<()> {
        let stale: Vec<String> = lock(&self.inner.state)
            .leases
            .keys()
            .filter(|id| !known.contains(*id))
            .cloned()
            .collect();
        let mut released = false;
        for id in &stale {
            tracing::info!(container = %id, "releasing the image hold of a container that no longer exists");
            released |= self.inner.release(id)?;
        }
        if released {
            self.inner.gc()?;
        }
        Ok(())
    }

    /// Layer bytes downloaded and layers unpacked by pulls since crustd
    /// started, for its metrics.
    pub fn pull_totals(&self) -> (u64, u64) {
        self.puller.totals()
    }

    /// Space and inodes used under `content/` and `snapshots/`; the
    /// mountpoint reported is the snapshots directory. Committed snapshots
    /// are walked once and remembered (see the usage module), so this is
    /// cheap enough for kubelet's periodic ImageFsInfo. Blocking.
    pub fn usage(&self) -> Result<FsUsage> {
        let snapshots = &self.inner.snapshots;
        let committed: HashSet<PathBuf> = snapshots
            .list()?
            .iter()
            .filter_map(|chain| snapshots.lookup(chain))
            .collect();
        self.inner.tallies.measure(
            &self.inner.root.join("content"),
            snapshots.dir(),
            &committed,
        )
    }
}

/// Whether `name`, an entry of `pinned_images`, names `image`.
#[cfg(test)]
impl ImageStore {
    /// Records `image` as if it had been pulled, for tests without a registry.
    pub(crate) fn add_for_tests(&self, image: Image) -> Result<()> {
        self.inner.commit(image).map(drop)
    }

    /// How many containers hold images.
    pub(crate) fn holds_for_tests(&self) -> usize {
        lock(&self.inner.state).leases.len()
    }
}

fn names_image(name: &str, image: &Image) -> bool {
    let name = name.trim();
    if name == image.id || image.id.strip_prefix("sha256:") == Some(name) {
        return true;
    }
    let Ok(r) = Reference::parse(name) else {
        return false;
    };
    match r.digest() {
        Some(d) => image.repo_digests.contains(&r.with_digest(d)),
        None => r
            .tagged_name()
            .is_some_and(|t| image.repo_tags.contains(&t)),
    }
}

impl Catalog for Inner {
    fn pin(&self, item: &Pinned) {
        *lock(&self.state).pins.entry(item.clone()).or_default() += 1;
    }

    fn unpin(&self, items: &[Pinned]) {
        let mut state = lock(&self.state);
        for item in items {
            if let Some(n) = state.pins.get_mut(item) {
                *n -= 1;
                if *n == 0 {
                    state.pins.remove(item);
                }
            }
        }
    }

    fn find(&self, digest_ref: &str) -> Option<Image> {
        let state = lock(&self.state);
        let found = state.resolve(digest_ref)?;
        let image = state.images.get(found.id())?;
        image
            .layers
            .iter()
            .all(|l| self.snapshots.exists(&l.chain_id))
            .then(|| image.clone())
    }

    fn commit(&self, pulled: Image) -> Result<(Image, bool)> {
        let _meta = lock(&self.meta_lock);
        let (merged, others, deleted) = {
            let state = lock(&self.state);
            let merged = match state.images.get(&pulled.id) {
                Some(old) => {
                    let mut m = pulled.clone();
                    m.repo_tags = union(&old.repo_tags, &pulled.repo_tags);
                    m.repo_digests = union(&old.repo_digests, &pulled.repo_digests);
                    m.manifest_digests = union(&old.manifest_digests, &pulled.manifest_digests);
                    m
                }
                None => pulled.clone(),
            };
            let mut others = Vec::new();
            let mut deleted = Vec::new();
            for other in state.images.values() {
                if other.id == merged.id
                    || !other.repo_tags.iter().any(|t| pulled.repo_tags.contains(t))
                {
                    continue;
                }
                let mut o = other.clone();
                o.repo_tags.retain(|t| !pulled.repo_tags.contains(t));
                if o.is_named() {
                    others.push(o);
                } else {
                    deleted.push(o.id);
                }
            }
            (merged, others, deleted)
        };
        self.meta.save_image(&merged)?;
        for o in &others {
            self.meta.save_image(o)?;
        }
        for id in &deleted {
            self.meta.delete_image(id)?;
        }
        let mut state = lock(&self.state);
        state.images.insert(merged.id.clone(), merged.clone());
        for o in others {
            state.images.insert(o.id.clone(), o);
        }
        for id in &deleted {
            state.images.remove(id);
        }
        Ok((merged, !deleted.is_empty()))
    }

    fn gc(&self) -> Result<()> {
        let _gc = lock(&self.gc_lock);
        let mut doomed = Vec::new();
        {
            let state = lock(&self.state);
            let mut snaps: HashSet<&str> = HashSet::new();
            let mut blobs: HashSet<&str> = HashSet::new();
            for image in state.images.values() {
                snaps.extend(image.layers.iter().map(|l| l.chain_id.as_str()));
                blobs.extend(image.blobs());
            }
            for lease in state.leases.values() {
                snaps.extend(lease.chain_ids.iter().map(String::as_str));
            }
            for pinned in state.pins.keys() {
                match pinned {
                    Pinned::Snapshot(chain) => snaps.insert(chain.as_str()),
                    Pinned::Blob(blob) => blobs.insert(blob.as_str()),
                };
            }
            let mut unindexed = false;
            for chain in self.snapshots.list()? {
                if !snaps.contains(chain.as_str()) {
                    if let Some(dir) = self.snapshots.unindex(&chain)? {
                        doomed.push(dir);
                    }
                    unindexed = true;
                    tracing::debug!(chain_id = %chain, "collecting snapshot");
                }
            }
            if unindexed {
                self.snapshots.sync_index()?;
            }
            for blob in self.content.list()? {
                if !blobs.contains(blob.as_str()) {
                    tracing::debug!(digest = %blob, "collecting blob");
                    self.content.remove(&blob)?;
                }
            }
        }
        for dir in doomed {
            if let Err(e) = self.snapshots.remove_dir(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not delete a collected snapshot; it goes at the next start");
            }
        }
        Ok(())
    }

    fn content(&self) -> &ContentStore {
        &self.content
    }

    fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }
}

impl Inner {
    fn remove(&self, name: &str) -> Result<()> {
        let _meta = lock(&self.meta_lock);
        let change = {
            let state = lock(&self.state);
            let Some(found) = state.resolve(name) else {
                return Ok(());
            };
            let Some(image) = state.images.get(found.id()) else {
                return Ok(());
            };
            match found {
                Found::Id(id) | Found::Digest(id) => Change::Delete(id),
                Found::Tag(_, tag) => {
                    let mut image = image.clone();
                    image.repo_tags.retain(|t| *t != tag);
                    let repo = tag.rsplit_once(':').map(|(r, _)| r).unwrap_or(&tag);
                    let repo_still_tagged = image
                        .repo_tags
                        .iter()
                        .any(|t| t.rsplit_once(':').map(|(r, _)| r) == Some(repo));
                    if !repo_still_tagged {
                        image
                            .repo_digests
                            .retain(|d| d.rsplit_once('@').map(|(r, _)| r) != Some(repo));
                    }
                    if image.is_named() {
                        Change::Update(Box::new(image))
                    } else {
                        Change::Delete(image.id)
                    }
                }
            }
        };
        match change {
            Change::Update(image) => {
                self.meta.save_image(&image)?;
                lock(&self.state).images.insert(image.id.clone(), *image);
            }
            Change::Delete(id) => self.delete_record(&id)?,
        }
        Ok(())
    }

    fn delete_record(&self, id: &str) -> Result<()> {
        self.meta.delete_image(id)?;
        lock(&self.state).images.remove(id);
        tracing::info!(image = id, "removed image");
        Ok(())
    }

    fn hold(&self, container_id: &str, image: &Image) -> Result<()> {
        let lease = Lease {
            image_id: image.id.clone(),
            chain_ids: image.layers.iter().map(|l| l.chain_id.clone()).collect(),
        };
        let _meta = lock(&self.meta_lock);
        let previous = {
            let mut state = lock(&self.state);
            if let Some(missing) = image
                .layers
                .iter()
                .find(|l| !self.snapshots.exists(&l.chain_id))
            {
                return Err(Error::not_found(format!(
                    "layer {} of image {} is not unpacked (was the image removed?); pull the image again",
                    missing.digest, image.id
                )));
            }
            state.leases.insert(container_id.to_string(), lease.clone())
        };
        if let Err(e) = self.meta.save_lease(container_id, &lease) {
            let mut state = lock(&self.state);
            match previous {
                Some(p) => state.leases.insert(container_id.to_string(), p),
                None => state.leases.remove(container_id),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Drops a lease; true if there was one.
    fn release(&self, container_id: &str) -> Result<bool> {
        let _meta = lock(&self.meta_lock);
        if !lock(&self.state).leases.contains_key(container_id) {
            return Ok(false);
        }
        self.meta.delete_lease(container_id)?;
        lock(&self.state).leases.remove(container_id);
        Ok(true)
    }
}

fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = a.to_vec();
    for x in b {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

    struct Root(PathBuf);

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn root(tag: &str) -> Root {
        Root(std::env::temp_dir().join(format!("crust-store-{tag}-{}", std::process::id())))
    }

    fn image(id_hex: &str, tags: &[&str], digests: &[&str]) -> Image {
        Image {
            id: format!("sha256:{id_hex}"),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            size: 1,
            config: ImageConfig::default(),
            layers: Vec::new(),
            manifest_digests: vec![format!("sha256:{}", "f".repeat(64))],
            pulled_at: 1,
        }
    }

    #[test]
    fn store_and_its_futures_are_send() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<ImageStore>();
        let root = root("send");
        let store = ImageStore::open(&root.0, ImageOptions::default()).unwrap();
        let auth = RegistryAuth::default();
        send(&store.pull("busybox", &auth));
        send(&store.remove("busybox"));
        // One process at a time.
        assert!(matches!(
            ImageStore::open(&root.0, ImageOptions::default()),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[tokio::test]
    async fn names_ids_and_removal() {
        let root = root("names");
        let store = ImageStore::open(&root.0, ImageOptions::default()).unwrap();
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        let a_hex = format!("abcd{}", "0".repeat(60));
        let b_hex = format!("abce{}", "0".repeat(60));
        let a_digest = format!("docker.io/library/busybox@{d1}");
        let a = image(
            &a_hex,
            &[
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:1",
            ],
            &[&a_digest],
        );
        store.inner.commit(a).unwrap();
        let b = image(&b_hex, &["reg.io/b:1"], &[&format!("reg.io/b@{d2}")]);
        store.inner.commit(b).unwrap();

        let id_of = |name: &str| store.get(name).map(|i| i.id[7..].to_string());
        assert_eq!(id_of("busybox").as_deref(), Some(a_hex.as_str()));
        assert_eq!(id_of("library/busybox:1").as_deref(), Some(a_hex.as_str()));
        assert_eq!(
            id_of(&format!("busybox@{d1}")).as_deref(),
            Some(a_hex.as_str())
        );
        for name in [
            "docker.io/library/busybox",
            "docker.io/library/busybox:latest",
            "index.docker.io/busybox:1",
            "docker.io/busybox:1",
        ] {
            assert_eq!(id_of(name).as_deref(), Some(a_hex.as_str()), "{name}");
        }
        // A tag next to a digest is ignored, as in a pull.
        assert_eq!(
            id_of(&format!("busybox:no-such-tag@{d1}")).as_deref(),
            Some(a_hex.as_str())
        );
        // Names are exact: another repository or registry is another image.
        for name in [
            "busybox:2",
            "reg.io/busybox",
            "docker.io/other/busybox",
            &format!("reg.io/b@{d1}"),
        ] {
            assert_eq!(id_of(name), None, "{name}");
        }
        assert_eq!(id_of("abcd").as_deref(), Some(a_hex.as_str()));
        assert_eq!(id_of("sha256:abce").as_deref(), Some(b_hex.as_str()));
        assert_eq!(id_of("abc"), None, "too short");
        assert_eq!(id_of("abc0"), None);
        assert_eq!(id_of(&format!("sha256:{}", "9".repeat(64))), None);
        // "abcd" resolves as an id prefix, but an ambiguous prefix resolves to nothing.
        let c_hex = format!("abcd{}", "1".repeat(60));
        store
            .inner
            .commit(image(&c_hex, &["reg.io/c:1"], &[]))
            .unwrap();
        assert_eq!(id_of("abcd"), None);
        assert_eq!(id_of("abcd0").as_deref(), Some(a_hex.as_str()));

        // A tag moves to the image pulled last; c keeps nothing else, so it goes.
        store
            .inner
            .commit(image(&b_hex, &["reg.io/c:1"], &[]))
            .unwrap();
        assert!(store.get(&c_hex).is_none());
        assert_eq!(
            store.get(&b_hex).unwrap().repo_tags,
            vec!["reg.io/b:1", "reg.io/c:1"]
        );
        assert!(root.0.join(format!("meta/images/{b_hex}.json")).exists());
        assert!(!root.0.join(format!("meta/images/{c_hex}.json")).exists());

        // Untagging one of two tags keeps the image and its digest.
        store.remove("busybox:1").await.unwrap();
        let a = store.get(&a_hex).unwrap();
        assert_eq!(a.repo_tags, vec!["docker.io/library/busybox:latest"]);
        assert_eq!(a.repo_digests, vec![a_digest.clone()]);
        // Untagging the last tag of the repository drops its digest too: the image goes.
        store.remove("busybox").await.unwrap();
        assert!(store.get(&a_hex).is_none());
        assert!(!root.0.join(format!("meta/images/{a_hex}.json")).exists());
        // Absent names are fine.
        store.remove("busybox").await.unwrap();
        store.remove("not a reference").await.unwrap();
        // By digest reference, the image goes with every tag.
        let e_hex = format!("e{}", "0".repeat(63));
        let e_digest = format!("reg.io/e@{d1}");
        store
            .inner
            .commit(image(&e_hex, &["reg.io/e:1", "reg.io/e:2"], &[&e_digest]))
            .unwrap();
        store.remove(&e_digest).await.unwrap();
        assert!(store.get(&e_hex).is_none());
        assert!(store.get("reg.io/e:2").is_none());
        // By id, everything goes.
        store.remove(&format!("sha256:{b_hex}")).await.unwrap();
        assert!(store.list().is_empty());
    }

    #[test]
    fn pins_count_and_keep_blobs_from_the_collector() {
        let root = root("pins");
        let store = ImageStore::open(&root.0, ImageOptions::default()).unwrap();
        let catalog: &dyn Catalog = &*store.inner;
        let digest = crate::image::digest::sha256_of(b"pinned");
        catalog.content().write(&digest, b"pinned").unwrap();
        let pin = Pinned::Blob(digest.clone());
        catalog.pin(&pin);
        catalog.pin(&pin);
        catalog.gc().unwrap();
        assert!(catalog.content().has(&digest));
        catalog.unpin(std::slice::from_ref(&pin));
        catalog.gc().unwrap();
        assert!(catalog.content().has(&digest), "one pin is left");
        catalog.unpin(std::slice::from_ref(&pin));
        catalog.gc().unwrap();
        assert!(!catalog.content().has(&digest));
    }

    #[test]
    fn pinned_by_id_tag_or_digest() {
        let d = format!("sha256:{}", "1".repeat(64));
        let hex = "a".repeat(64);
        let img = image(
            &hex,
            &["docker.io/library/pause:3.10", "reg.io/x/y:1"],
            &[&format!("reg.io/x/y@{d}")],
        );
        for (name, pinned) in [
            ("pause:3.10", true),
            ("docker.io/library/pause:3.10", true),
            ("library/pause:3.10", true),
            ("pause", false),
            ("pause:3.9", false),
            ("reg.io/x/y:1", true),
            (&format!("reg.io/x/y@{d}"), true),
            (&format!("reg.io/x/y:other@{d}"), true),
            (&format!("reg.io/x/z@{d}"), false),
            (&format!("sha256:{hex}"), true),
            (&hex, true),
            (&hex[..12], false),
            ("NOT A REFERENCE", false),
        ] {
            assert_eq!(names_image(name, &img), pinned, "{name}");
        }
        let root = root("pinned");
        let options = ImageOptions {
            pinned_images: vec!["reg.io/x/y:1".into(), "bad ref".into()],
            ..ImageOptions::default()
        };
        let store = ImageStore::open(&root.0, options).unwrap();
        assert!(store.is_pinned(&img));
        assert!(!store.is_pinned(&image(&hex, &["reg.io/x/y:2"], &[])));
    }

    #[test]
    fn holds_of_unknown_containers_are_released() {
        let root = root("stale-holds");
        let store = ImageStore::open(&root.0, ImageOptions::default()).unwrap();
        let img = image(&"a".repeat(64), &[], &[]);
        for id in ["kept", "gone"] {
            store.hold(id, &img).unwrap();
        }
        let known: HashSet<String> = ["kept".to_string()].into_iter().collect();
        store.release_all_except(&known).unwrap();
        assert!(root.0.join("meta/leases/kept.json").exists());
        assert!(!root.0.join("meta/leases/gone.json").exists());
        let leases: Vec<String> = lock(&store.inner.state).leases.keys().cloned().collect();
        assert_eq!(leases, vec!["kept".to_string()]);
    }

    #[test]
    fn hold_needs_the_snapshots_and_a_sane_id() {
        let root = root("hold");
        let store = ImageStore::open(&root.0, ImageOptions::default()).unwrap();
        let mut img = image(&"a".repeat(64), &["reg.io/a:1"], &[]);
        img.layers.push(super::super::record::ImageLayer {
            digest: format!("sha256:{}", "b".repeat(64)),
            size: 1,
            diff_id: format!("sha256:{}", "c".repeat(64)),
            chain_id: format!("sha256:{}", "c".repeat(64)),
        });
        assert!(matches!(store.hold("ctr", &img), Err(Error::NotFound(_))));
        assert!(matches!(
            store.hold("../x", &image(&"a".repeat(64), &[], &[])),
            Err(Error::InvalidArgument(_))
        ));
        store
            .hold("ctr", &image(&"a".repeat(64), &[], &[]))
            .unwrap();
        assert!(root.0.join("meta/leases/ctr.json").exists());
        store.release("ctr").unwrap();
        store.release("ctr").unwrap();
        assert!(!root.0.join("meta/leases/ctr.json").exists());
    }
}
