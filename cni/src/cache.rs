//! Attachment records: what each pod's network was set up with, kept on disk so
//! DEL gets the same config, arguments and prevResult after a crustd restart.
//!
//! The record is written before ADD starts (without a result) and again once it
//! succeeded, so a crash in the middle still leaves enough to run DEL; a record
//! is deleted only after DEL succeeded.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capabilities::Capabilities;

/// One pod's attachment to the network.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// The sandbox id (CNI_CONTAINERID).
    pub container_id: String,
    /// CNI_NETNS at ADD.
    pub netns: PathBuf,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS.
    pub args: String,
    /// The network list as used for ADD.
    pub network: Value,
    /// The runtime capabilities given to ADD.
    pub capabilities: Capabilities,
    /// The ADD result, once ADD finished.
    pub result: Option<Value>,
}

/// The directory of attachment records.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating) the cache directory.
    pub fn open(dir: &Path) -> anyhow::Result<Cache> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Saves a record atomically (temp file, fsync, rename).
    pub fn save(&self, rec: &Record) -> anyhow::Result<()> {
        use std::io::Write;
        let path = self.path(&rec.container_id);
        let tmp = self.dir.join(format!(".{}.tmp", rec.container_id));
        let data = serde_json::to_vec(rec).context("encoding the attachment record")?;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all())?;
        Ok(())
    }

    /// The record of `id`, if any.
    pub fn load(&self, id: &str) -> anyhow::Result<Option<Record>> {
        match std::fs::read(self.path(id)) {
            Ok(data) => {
                Ok(Some(serde_json::from_slice(&data).with_context(|| {
                    format!("decoding the attachment record of {id}")
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading the attachment record of {id}")),
        }
    }

    /// Deletes the record of `id`; a missing one is fine.
    pub fn delete(&self, id: &str) -> anyhow::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing the attachment record of {id}"))
            }
            _ => Ok(()),
        }
    }

    /// Ids of every recorded attachment.
    pub fn ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .filter(|s| !s.starts_with('.'))
                    .map(String::from)
            })
            .collect()
    }
}
