//! Checks that end-to-end tests share: gRPC status codes, CRI ids, label maps.

use std::collections::HashMap;
use std::fmt::Debug;

use anyhow::{Result, bail, ensure};
use tonic::{Code, Status};

/// Requires `result` to be an error with gRPC code `code`.
pub fn expect_code<T: Debug>(result: Result<T, Status>, code: Code, what: &str) -> Result<()> {
    match result {
        Err(status) if status.code() == code => Ok(()),
        Err(status) => bail!(
            "{what}: expected {code:?}, got {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(value) => bail!("{what}: expected {code:?}, got success: {value:?}"),
    }
}

/// A create repeated after one that succeeded close to its deadline: crustd
/// either refuses it (AlreadyExists) or, when the first answer came too close to
/// the caller's deadline to count as delivered, hands back the same object.
/// A different object or any other error fails.
pub fn expect_refused_or_same(result: Result<String, Status>, id: &str, what: &str) -> Result<()> {
    match result {
        Ok(again) if again == id => Ok(()),
        Ok(other) => bail!("{what}: expected AlreadyExists or {id}, got another object {other}"),
        other => expect_code(other, Code::AlreadyExists, what),
    }
}

/// Requires `id` to be a full CRI id: 64 lowercase hex characters.
pub fn expect_full_id(id: &str, what: &str) -> Result<()> {
    ensure!(
        id.len() == 64
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{what}: {id:?} is not a 64-hex-character id"
    );
    Ok(())
}

/// Requires every entry of `expected` to be in `actual` (runtimes may add labels).
pub fn expect_superset(
    actual: &HashMap<String, String>,
    expected: &HashMap<String, String>,
    what: &str,
) -> Result<()> {
    for (key, value) in expected {
        ensure!(
            actual.get(key) == Some(value),
            "{what}: {key}={value:?} missing (got {actual:?})"
        );
    }
    Ok(())
}

/// The hex part of a `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}
