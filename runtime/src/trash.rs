//! Deleting a removed container's directories off the RPC path. Remove
//! renames the bundle and the writable layer into a trash directory on the
//! same filesystem (one atomic rename each) and a background thread deletes
//! them. A crash leaves them in the trash, which the next start empties; a
//! directory that still has mounts under it is never deleted through.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use anyhow::{Context, Result};

use crate::host::Mounts;

/// The trash directories and the thread that empties them.
pub(crate) struct Trash {
    queue: Sender<PathBuf>,
    mounts: Arc<dyn Mounts>,
}

impl Trash {
    /// Makes the trash directories `bins` and starts the thread that
    /// empties them, beginning with what a previous crustd left there.
    pub(crate) fn start(bins: &[PathBuf], mounts: Arc<dyn Mounts>) -> Result<Trash> {
        let (queue, work) = channel();
        for bin in bins {
            std::fs::create_dir_all(bin).with_context(|| format!("creating {}", bin.display()))?;
            for entry in
                std::fs::read_dir(bin).with_context(|| format!("reading {}", bin.display()))?
            {
                let _ = queue.send(
                    entry
                        .with_context(|| format!("reading {}", bin.display()))?
                        .path(),
                );
            }
        }
        std::thread::Builder::new()
            .name("crust-trash".into())
            .spawn(move || empty(&work))
            .context("starting the trash thread")?;
        Ok(Trash { queue, mounts })
    }

    /// Takes `path` away at once, into trash directory `bin` (on its
    /// filesystem), to be deleted in the background; deletes it here when
    /// it cannot be moved. A missing `path` is already gone.
    pub(crate) fn discard(&self, path: &Path, bin: &Path) -> Result<()> {
        let Some(name) = path.file_name() else {
            return crate::teardown::remove_tree(self.mounts.as_ref(), path);
        };
        let target = bin.join(format!(
            "{}.{}",
            name.to_string_lossy(),
            crate::ids::new_id().get(..8).unwrap_or_default()
        ));
        match std::fs::rename(path, &target) {
            Ok(()) => {
                if self.queue.send(target.clone()).is_err() {
                    return crate::teardown::remove_tree(self.mounts.as_ref(), &target);
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot move into the trash; deleting in place");
                crate::teardown::remove_tree(self.mounts.as_ref(), path)
            }
        }
    }
}

/// Deletes what arrives on `work` until the runtime is gone. Removal
/// unmounted the directories before they were moved here; a mount found
/// under one anyway (the kernel's own view, not the runtime's host seam,
/// since this is no lifecycle step) keeps it for the next start.
fn empty(work: &Receiver<PathBuf>) {
    for path in work {
        let deleted = crate::sys::mount::mounts_under(&path).and_then(|left| {
            if !left.is_empty() {
                anyhow::bail!("{} mounts are still under it", left.len());
            }
            crate::fsutil::remove_dir_all_if_exists(&path)
        });
        if let Err(e) = deleted {
            tracing::warn!(path = %path.display(), error = format!("{e:#}"), "cannot empty the trash; it is tried again at the next start");
        }
    }
}
