//! Image references as kubelet and people write them, normalized the way Docker does.
//!
//! `busybox` means `docker.io/library/busybox:latest`; `user/repo` means
//! `docker.io/user/repo:latest`; a first component with a `.` or a `:`, or
//! `localhost`, or with upper-case letters, is a registry host. A reference may
//! carry a tag, a digest, or both (`repo:tag@sha256:...`, where the digest is
//! what gets pulled).

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// The registry that references without a host name refer to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// An old spelling of [`DEFAULT_DOMAIN`] that is normalized to it.
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Prefix of single-component repositories on the default registry.
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// Tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest allowed `domain/path` name, as in the distribution spec.
const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// Longest allowed tag.
const TAG_LENGTH_MAX: usize = 128;

/// A parsed, normalized image reference: registry domain, repository path,
/// optional tag and optional `sha256:` digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses and normalizes `s`; a reference with neither tag nor digest gets
    /// the tag `latest`. Malformed references are [`Error::InvalidArgument`].
    pub fn parse(s: &str) -> Result<Reference> {
        let invalid = |why: &str| Error::invalid(format!("invalid image reference {s:?}: {why}"));
        if s.is_empty() {
            return Err(invalid("it is empty"));
        }
        if s.len() == 64 && is_lower_hex(s) {
            return Err(invalid(
                "a repository name must not be 64 hex characters (is it an image id?)",
            ));
        }
        let (named, digest) = match s.split_once('@') {
            Some((named, digest)) => {
                check_digest(digest).map_err(|why| invalid(&why))?;
                (named, Some(digest.to_string()))
            }
            None => (s, None),
        };
        let (domain, remainder) = split_domain(named);
        let (path, tag) = match remainder.split_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (remainder, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(|why| invalid(&why))?;
        }
        if path.to_lowercase() != path {
            return Err(invalid("the repository name must be lowercase"));
        }
        check_domain(domain).map_err(|why| invalid(&why))?;
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_REPO_PREFIX}{path}")
        } else {
            path.to_string()
        };
        check_path(&path).map_err(|why| invalid(&why))?;
        if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(invalid(&format!(
                "the repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters"
            )));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            domain: domain.to_string(),
            path,
            tag,
            digest,
        })
    }

    /// The registry host, with port if any: `docker.io`, `127.0.0.1:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry: `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The full repository name: `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, if the reference has one (always, unless it has a digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The manifest digest, `sha256:<hex>`, if the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `name:tag`, if the reference has a tag.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `name@digest` for the given manifest digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

/// Splits off the registry host the way Docker's `splitDockerDomain` does.
fn split_domain(named: &str) -> (&str, &str) {
    let (domain, remainder) = match named.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first, rest)
        }
        _ => (DEFAULT_DOMAIN, named),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        (DEFAULT_DOMAIN, remainder)
    } else {
        (domain, remainder)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a `sha256:<64 lowercase hex>` digest.
pub(crate) fn check_digest(digest: &str) -> std::result::Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} has no algorithm prefix"));
    };
    if algorithm != "sha256" {
        return Err(format!(
            "digest algorithm {algorithm:?} is not supported (only sha256)"
        ));
    }
    if hex.len() != 64 || !is_lower_hex(hex) {
        return Err(format!(
            "digest {digest:?} is not 64 lowercase hex characters"
        ));
    }
    Ok(())
}

fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = match tag.as_bytes() {
        [first, rest @ ..] => {
            word(*first) && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        [] => false,
    };
    if !ok || tag.len() > TAG_LENGTH_MAX {
        return Err(format!(
            "tag {tag:?} must be 1 to {TAG_LENGTH_MAX} letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

fn check_domain(domain: &str) -> std::result::Result<(), String> {
    let bad = || format!("registry host {domain:?} is not a valid host[:port]");
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(bad());
        }
        match after {
            "" => ("", None),
            p => ("", Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    if !domain.starts_with('[') {
        let component_ok = |c: &str| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        };
        if !host.split('.').all(component_ok) {
            return Err(bad());
        }
    }
    Ok(())
}

/// Checks the repository path: `/`-separated components of lowercase letters
/// and digits, joined inside by `.`, `_`, `__` or runs of `-`.
fn check_path(path: &str) -> std::result::Result<(), String> {
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
            if !ok {
                return false;
            }
        }
        true
    };
    if !path.split('/').all(component_ok) {
        return Err(format!(
            "repository path {path:?} must be lowercase letters and digits separated by '/', '.', '_', '__' or '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_like_docker() {
        type Case<'a> = (&'a str, &'a str, &'a str, &'a str, Option<&'a str>);
        let cases: &[Case] = &[
            // input, normalized, domain, path, tag
            (
                "busybox",
                "docker.io/library/busybox:latest",
                "docker.io",
                "library/busybox",
                Some("latest"),
            ),
            (
                "library/busybox",
                "docker.io/library/busybox:latest",
                "docker.io",
                "library/busybox",
                Some("latest"),
            ),
            (
                "docker.io/busybox:1.36",
                "docker.io/library/busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
                "docker.io",
                "library/busybox",
                Some("latest"),
            ),
            (
                "user/repo",
                "docker.io/user/repo:latest",
                "docker.io",
                "user/repo",
                Some("latest"),
            ),
            (
                "user/repo/sub:v1",
                "docker.io/user/repo/sub:v1",
                "docker.io",
                "user/repo/sub",
                Some("v1"),
            ),
            (
                "127.0.0.1:5000/busybox:1.0",
                "127.0.0.1:5000/busybox:1.0",
                "127.0.0.1:5000",
                "busybox",
                Some("1.0"),
            ),
            (
                "localhost/foo",
                "localhost/foo:latest",
                "localhost",
                "foo",
                Some("latest"),
            ),
            (
                "localhost:5000/a/b-c__d.e:T_1",
                "localhost:5000/a/b-c__d.e:T_1",
                "localhost:5000",
                "a/b-c__d.e",
                Some("T_1"),
            ),
            (
                "[::1]:5000/foo",
                "[::1]:5000/foo:latest",
                "[::1]:5000",
                "foo",
                Some("latest"),
            ),
            (
                "Registry.Example/foo",
                "Registry.Example/foo:latest",
                "Registry.Example",
                "foo",
                Some("latest"),
            ),
            (
                "quay.io/coreos/etcd:v3.5.0",
                "quay.io/coreos/etcd:v3.5.0",
                "quay.io",
                "coreos/etcd",
                Some("v3.5.0"),
            ),
        ];
        for (input, normalized, domain, path, tag) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), *normalized, "{input}");
            assert_eq!(r.domain(), *domain, "{input}");
            assert_eq!(r.path(), *path, "{input}");
            assert_eq!(r.tag(), *tag, "{input}");
            assert_eq!(r.digest(), None, "{input}");
        }
    }

    #[test]
    fn digest_references() {
        let r = Reference::parse(&format!("reg:5000/x@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.to_string(), format!("reg:5000/x@{D}"));
        assert_eq!(r.name(), "reg:5000/x");

        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));

        let r = Reference::parse(&format!("reg/x:tag@{D}")).unwrap();
        assert_eq!(r.domain(), "docker.io");
        assert_eq!(r.path(), "reg/x");
        assert_eq!(r.tag(), Some("tag"));
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.to_string(), format!("docker.io/reg/x:tag@{D}"));
        assert_eq!(r.with_digest(D), format!("docker.io/reg/x@{D}"));
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            "Busybox",
            "docker.io/Library/busybox",
            "busybox:",
            "busybox:-tag",
            "busybox:a:b",
            "reg:5000/x@sha256:abc",
            "reg/x@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "reg/x@md5:0123456789abcdef0123456789abcdef",
            "reg/x@",
            "/busybox",
            "busybox/",
            "a//b",
            "-a/b",
            "a/b-",
            "a/b..c",
            "a/b___c",
            "reg:port/x",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "bad_host.io:5000/x",
            "foo bar",
        ] {
            match Reference::parse(bad) {
                Err(Error::InvalidArgument(_)) => {}
                other => panic!("{bad:?} should be invalid, got {other:?}"),
            }
        }
        let long = format!("reg.io/{}", "a".repeat(250));
        assert!(Reference::parse(&long).is_err());
        let long_tag = format!("busybox:{}", "a".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
    }
}
