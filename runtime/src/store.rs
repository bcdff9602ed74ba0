//! The metadata store: one JSON file per object, written by atomic rename, so a
//! crash at any instant leaves every object either as it was or as it became.

use std::fs;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fsutil;

/// A directory of `<id>.json` records of one kind.
pub struct RecordDir<T> {
    dir: PathBuf,
    _kind: PhantomData<fn() -> T>,
}

/// What [`RecordDir::load_all`] found: readable records by id, and the unreadable ones.
pub type Loaded<T> = (Vec<(String, T)>, Vec<Unreadable>);

/// A record that could not be read back, kept aside so the daemon still starts.
#[derive(Debug)]
pub struct Unreadable {
    /// The id taken from the file name.
    pub id: String,
    /// Why it could not be loaded.
    pub error: anyhow::Error,
}

impl<T: Serialize + DeserializeOwned> RecordDir<T> {
    /// Opens (creating if needed) the record directory.
    pub fn open(dir: PathBuf) -> anyhow::Result<Self> {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(RecordDir {
            dir,
            _kind: PhantomData,
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes a record durably.
    pub fn save(&self, id: &str, record: &T) -> anyhow::Result<()> {
        let data = serde_json::to_vec(record).context("encoding a record")?;
        fsutil::write_atomic(&self.path(id), &data)
    }

    /// Deletes a record durably; deleting a missing record succeeds.
    pub fn delete(&self, id: &str) -> anyhow::Result<()> {
        fsutil::remove_file_if_exists(&self.path(id))?;
        fsutil::sync_dir(&self.dir)
    }

    /// Loads every record; the ones that fail to parse are returned separately.
    pub fn load_all(&self) -> anyhow::Result<Loaded<T>> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for entry in
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                if name.starts_with('.') && name.contains(".tmp-") {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            };
            match read_record::<T>(&entry.path()) {
                Ok(rec) => good.push((id.to_string(), rec)),
                Err(error) => bad.push(Unreadable {
                    id: id.to_string(),
                    error,
                }),
            }
        }
        Ok((good, bad))
    }
}

fn read_record<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("decoding {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_delete() {
        let dir = std::env::temp_dir().join(format!("crust-store-{}", std::process::id()));
        let store = RecordDir::<Vec<u32>>::open(dir.clone()).unwrap();
        store.save("a", &vec![1, 2]).unwrap();
        fs::write(dir.join("b.json"), b"{not json").unwrap();
        let (good, bad) = store.load_all().unwrap();
        assert_eq!(good, vec![("a".to_string(), vec![1, 2])]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].id, "b");
        store.delete("a").unwrap();
        store.delete("a").unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
