//! The shape of a `hosts.toml` as serde reads it: which keys there are and
//! what type each value has. What the values mean (URLs, capability names,
//! paths, header syntax) is the parent module's business.
//!
//! Keys that are none of these are collected rather than refused: containerd
//! ignores them, so a `certs.d` written for a newer containerd still works;
//! the parent module warns about them.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A whole `hosts.toml`: the upstream `server` with its settings at the top
/// level, and the mirrors.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct HostsFile {
    /// The upstream's URL; absent or empty means the registry's own server.
    pub(super) server: Option<String>,
    /// `[host."<url>"]` tables: the mirrors, in file order.
    pub(super) host: Ordered<HostSettings>,
    /// The upstream's settings, as in [`HostSettings`].
    pub(super) capabilities: Option<Strings>,
    /// The upstream's CA bundles.
    pub(super) ca: Option<Strings>,
    /// The upstream's client certificates.
    pub(super) client: Option<Clients>,
    /// Whether the upstream's certificate goes unchecked.
    pub(super) skip_verify: bool,
    /// Headers sent to the upstream.
    pub(super) header: Ordered<Strings>,
    /// Whether `server`'s path is the API root.
    pub(super) override_path: bool,
    /// containerd's connect timeout; accepted, not used.
    #[serde(rename = "dial_timeout")]
    _dial_timeout: Option<IgnoredAny>,
    /// Any other key.
    #[serde(flatten)]
    pub(super) unknown: BTreeMap<String, IgnoredAny>,
}

/// The settings of one host: a `[host."<url>"]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table of host settings")]
pub(super) struct HostSettings {
    /// `pull`, `resolve`, `push`; absent or empty means all of them.
    pub(super) capabilities: Option<Strings>,
    /// CA bundles trusted besides the system roots.
    pub(super) ca: Option<Strings>,
    /// Client certificates (the first is presented).
    pub(super) client: Option<Clients>,
    /// Accept any server certificate.
    pub(super) skip_verify: bool,
    /// Extra headers, each with one value or several.
    pub(super) header: Ordered<Strings>,
    /// The URL's path is the API root (no `/v2` appended).
    pub(super) override_path: bool,
    /// containerd's connect timeout; accepted, not used.
    #[serde(rename = "dial_timeout")]
    _dial_timeout: Option<IgnoredAny>,
    /// Any other key.
    #[serde(flatten)]
    pub(super) unknown: BTreeMap<String, IgnoredAny>,
}

impl HostsFile {
    /// The top level's settings, which apply to `server`.
    pub(super) fn take_upstream_settings(&mut self) -> HostSettings {
        HostSettings {
            capabilities: self.capabilities.take(),
            ca: self.ca.take(),
            client: self.client.take(),
            skip_verify: self.skip_verify,
            header: std::mem::take(&mut self.header),
            override_path: self.override_path,
            _dial_timeout: None,
            unknown: BTreeMap::new(),
        }
    }
}

/// A table's entries in file order.
#[derive(Debug)]
pub(super) struct Ordered<T>(pub(super) Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Entries<T> {
            type Value = Ordered<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }

        d.deserialize_map(Entries(PhantomData))
    }
}

/// A string or a list of strings.
#[derive(Debug, Default)]
pub(super) struct Strings(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrMore;

        impl<'de> Visitor<'de> for OneOrMore {
            type Value = Strings;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Strings, E> {
                Ok(Strings(vec![s.to_string()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strings, A::Error> {
                let mut all = Vec::new();
                while let Some(s) = seq.next_element()? {
                    all.push(s);
                }
                Ok(Strings(all))
            }
        }

        d.deserialize_any(OneOrMore)
    }
}

/// `client`: a path, or a list of paths and `[cert, key]` pairs.
#[derive(Debug, Default)]
pub(super) struct Clients(pub(super) Vec<ClientCert>);

/// A client certificate, and its key unless the certificate file holds it.
#[derive(Debug)]
pub(super) struct ClientCert {
    /// The certificate file.
    pub(super) cert: String,
    /// The key file.
    pub(super) key: Option<String>,
}

impl<'de> Deserialize<'de> for Clients {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrMore;

        impl<'de> Visitor<'de> for OneOrMore {
            type Value = Clients;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path, a list of paths, or a list of [cert, key] pairs")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Clients, E> {
                Ok(Clients(vec![ClientCert {
                    cert: s.to_string(),
                    key: None,
                }]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Clients, A::Error> {
                let mut all = Vec::new();
                while let Some(client) = seq.next_element()? {
                    all.push(client);
                }
                Ok(Clients(all))
            }
        }

        d.deserialize_any(OneOrMore)
    }
}

impl<'de> Deserialize<'de> for ClientCert {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PathOrPair;

        impl<'de> Visitor<'de> for PathOrPair {
            type Value = ClientCert;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path or a [cert, key] pair")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<ClientCert, E> {
                Ok(ClientCert {
                    cert: s.to_string(),
                    key: None,
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ClientCert, A::Error> {
                let mut pair: Vec<String> = Vec::with_capacity(2);
                while let Some(path) = seq.next_element()? {
                    pair.push(path);
                }
                match <[String; 2]>::try_from(pair) {
                    Ok([cert, key]) => Ok(ClientCert {
                        cert,
                        key: Some(key),
                    }),
                    Err(_) => Err(de::Error::custom(
                        "a `client` pair must be [\"cert\", \"key\"]",
                    )),
                }
            }
        }

        d.deserialize_any(PathOrPair)
    }
}
