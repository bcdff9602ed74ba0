//! The image store: pulling images from OCI registries, keeping their blobs
//! and unpacked layers, naming and removing them.
//!
//! # On disk, under crustd's root (e.g. `/var/lib/crust`)
//!
//! ```text
//! content/blobs/sha256/<hex>   manifests, indexes, configs, compressed layers (digest-checked)
//! content/ingest/              blobs being written; emptied at open
//! snapshots/<n>/               one unpacked layer (read-only overlay lower dir), n = 1, 2, ...
//! snapshots/by-chain/<hex>     symlink -> ../<n>: the snapshot of chain id sha256:<hex>,
//!                              created only once the unpack finished (the commit marker)
//! meta/images/<id hex>.json    one record per image (see [`Image`]), written atomically
//! meta/leases/<container>.json the snapshots a container holds (see [`ImageStore::hold`])
//! meta/image-store.lock        flock: one process owns the store
//! ```
//!
//! The snapshot module explains the short numeric directories (overlay's
//! `lowerdir=` must fit in a page) and crash safety; the unpack module how
//! hostile layers are kept inside their directory.
//!
//! # What references what
//!
//! An image record names its manifests, config and layer blobs and its
//! layers' chain ids; a lease names chain ids; a pull in progress pins what
//! it uses in memory. After a removal, a release, a moved tag, and at open,
//! every blob and snapshot referenced by none of these is deleted.

mod catalog;
mod content;
mod digest;
mod foreign;
pub(crate) mod hosts;
mod locks;
pub(crate) mod manifest;
mod options;
mod platform;
mod pull;
mod record;
mod reference;
mod registry;
mod snapshot;
mod store;
mod transfer;
pub(crate) mod unpack;
mod usage;

pub use manifest::{MAX_CONFIG_BYTES, MAX_LAYER_BYTES, MAX_LAYERS, MAX_MANIFEST_BYTES};
pub use options::ImageOptions;
pub use platform::Platform;
pub use record::{Image, ImageConfig, ImageLayer};
pub use reference::{DEFAULT_DOMAIN, DEFAULT_TAG, Reference};
pub use registry::RegistryAuth;
pub use store::{ImageStore, MIN_ID_PREFIX};
pub use unpack::{MAX_EXPANSION_RATIO, MIN_UNCOMPRESSED_LIMIT, uncompressed_limit};
pub use usage::{FsUsage, LayersUsage, WritableLayers};
