//! [`Catalog`]: everything a pull asks of the image store, and nothing more.
//!
//! The store keeps its records, leases and pins in tables under its own
//! locks; a pull sees none of that. It only keeps what it uses from the
//! collector, asks whether an image is already complete, records what it
//! pulled, has unreferenced data collected, and writes blobs and unpacked
//! layers where the store keeps them.

use super::content::ContentStore;
use super::record::Image;
use super::snapshot::Snapshots;
use crate::Result;

/// Something on disk a pull keeps from the collector while it works on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pinned {
    /// A blob of the content store, by digest.
    Blob(String),
    /// A layer snapshot, by chain id.
    Snapshot(String),
}

/// The image store as a pull sees it.
pub(crate) trait Catalog: Send + Sync + std::fmt::Debug {
    /// Keeps `item` from the collector until a matching [`Catalog::unpin`]:
    /// a pull pins every blob and snapshot before it looks whether it is
    /// there, so a concurrent collection never takes away what it builds on.
    /// Pins count: pinning twice needs two unpins.
    fn pin(&self, item: &Pinned);

    /// Undoes one [`Catalog::pin`] of each of `items`, once the pull that
    /// pinned them has recorded its image or failed.
    fn unpin(&self, items: &[Pinned]);

    /// The record of a digest reference (`name@sha256:…`) if every layer of
    /// it is unpacked: pulling such a reference needs no registry.
    fn find(&self, digest_ref: &str) -> Option<Image>;

    /// Records a pulled image, merging it with an earlier record of the same
    /// id and moving its tags away from other images. Returns the record as
    /// stored, and whether another image lost its last name and was deleted
    /// (then a [`Catalog::gc`] is due once the pull has unpinned). Blocking.
    fn commit(&self, image: Image) -> Result<(Image, bool)>;

    /// Deletes the blobs and snapshots that no image, container or running
    /// pull uses. Blocking.
    fn gc(&self) -> Result<()>;

    /// Where blobs (manifests, configs, compressed layers) are kept.
    fn content(&self) -> &ContentStore;

    /// Where unpacked layers are kept.
    fn snapshots(&self) -> &Snapshots;
}
