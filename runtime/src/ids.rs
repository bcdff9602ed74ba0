//! Object ids: 64 random hex characters, looked up by full id or by unique prefix
//! (people type short ids into crictl).

use crate::{Error, Result};

/// A fresh 64-hex-character id.
pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Resolves `wanted` against `ids`: an exact match, else the only id starting with
/// it. `what` names the kind of object for error messages ("container", "sandbox").
pub fn resolve<'a, I>(ids: I, wanted: &str, what: &str) -> Result<String>
where
    I: IntoIterator<Item = &'a String>,
{
    if wanted.is_empty() {
        return Err(Error::invalid(format!("{what} id must not be empty")));
    }
    let mut found: Option<&String> = None;
    for id in ids {
        if id == wanted {
            return Ok(id.clone());
        }
        if id.starts_with(wanted) {
            if let Some(first) = found {
                return Err(Error::invalid(format!(
                    "{what} id prefix {wanted:?} is ambiguous: it matches {first} and {id} at least"
                )));
            }
            found = Some(id);
        }
    }
    found
        .cloned()
        .ok_or_else(|| Error::not_found(format!("{what} {wanted:?} not found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_64_hex() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn resolve_by_prefix() {
        let ids = vec!["abc123".to_string(), "abd456".to_string()];
        assert_eq!(resolve(&ids, "abc", "container").unwrap(), "abc123");
        assert_eq!(resolve(&ids, "abd456", "container").unwrap(), "abd456");
        assert!(matches!(
            resolve(&ids, "ab", "container"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            resolve(&ids, "ff", "container"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            resolve(&ids, "", "container"),
            Err(Error::InvalidArgument(_))
        ));
    }
}
