//! sha256 digests (`sha256:<hex>`) of blobs, layer diffs and layer chains.

use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Returns `sha256:<hex>` of `data`.
pub(crate) fn sha256_of(data: &[u8]) -> String {
    finish(Sha256::new_with_prefix(data))
}

/// Turns a finished hasher into `sha256:<hex>`.
pub(crate) fn finish(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// The hex part of a valid `sha256:<64 lowercase hex>` digest, or
/// [`Error::InvalidArgument`] naming `what` carried it.
pub(crate) fn hex_of<'a>(digest: &'a str, what: &str) -> Result<&'a str> {
    super::reference::check_digest(digest)
        .map_err(|why| Error::invalid(format!("{what}: {why}")))?;
    Ok(&digest["sha256:".len()..])
}

/// Chain ids of a layer stack from its diff ids, bottom layer first: the first
/// is the first diff id, each next one is `sha256(previous + " " + diff id)`.
/// A chain id names the filesystem of a layer together with everything below it.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(prev) => sha256_of(format!("{prev} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_formula() {
        let a = sha256_of(b"a");
        let b = sha256_of(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], sha256_of(format!("{a} {b}").as_bytes()));
        assert_eq!(
            sha256_of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hex_of_validates() {
        assert!(hex_of("sha256:abc", "x").is_err());
        let d = sha256_of(b"x");
        assert_eq!(hex_of(&d, "x").unwrap(), &d[7..]);
    }
}
