//! Registry authorizations kept across pulls: a bearer token (until the
//! token response says it expires) or the knowledge that a host wants Basic
//! credentials, per host, repository and set of credentials. A pull with
//! other credentials (or none) never sees another pull's token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Lifetime assumed for a token whose response names none (or less), as the
/// Docker token spec says.
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Longest a grant is kept, whatever the token response says: a day.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long knowing that a host wants Basic credentials is kept.
const BASIC_LIFETIME: Duration = Duration::from_secs(600);
/// A token is dropped this much (at most) before it expires, so that it does
/// not run out in the middle of a pull.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Entries kept; beyond that expired ones go, then everything.
const MAX_ENTRIES: usize = 1024;

/// How a host authorizes requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Grant {
    /// With this bearer token.
    Bearer(String),
    /// With the pull's Basic credentials.
    Basic,
}

/// What a cached grant is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GrantKey {
    /// `scheme://host` of the registry host.
    origin: String,
    /// The repository path on it.
    repository: String,
    /// SHA-256 of the credentials sent to it (all zero: none).
    credentials: [u8; 32],
}

impl GrantKey {
    /// The key for `repository` on `origin` with `credentials`
    /// (`[username, password, auth, identity token]`, all empty for none).
    pub(crate) fn new(origin: &str, repository: &str, credentials: [&str; 4]) -> GrantKey {
        let credentials = if credentials.iter().all(|c| c.is_empty()) {
            [0; 32]
        } else {
            let mut h = Sha256::new();
            for c in credentials {
                h.update((c.len() as u64).to_le_bytes());
                h.update(c.as_bytes());
            }
            h.finalize().into()
        };
        GrantKey {
            origin: origin.to_string(),
            repository: repository.to_string(),
            credentials,
        }
    }
}

/// The cache shared by every pull of one image store.
#[derive(Debug, Default)]
pub(crate) struct GrantCache {
    entries: Mutex<HashMap<GrantKey, (Grant, Instant)>>,
}

impl GrantCache {
    /// The grant for `key`, unless it expired.
    pub(crate) fn get(&self, key: &GrantKey) -> Option<Grant> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((grant, until)) if *until > Instant::now() => Some(grant.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `grant` for `key` for `lifetime`, at most a day (nothing for a
    /// zero lifetime).
    pub(crate) fn put(&self, key: GrantKey, grant: Grant, lifetime: Duration) {
        if lifetime.is_zero() {
            return;
        }
        let now = Instant::now();
        let Some(until) = now.checked_add(lifetime.min(MAX_LIFETIME)) else {
            return;
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (grant, until));
    }

    /// Keeps Basic for `key`.
    pub(crate) fn put_basic(&self, key: GrantKey) {
        self.put(key, Grant::Basic, BASIC_LIFETIME);
    }

    /// Forgets `key` (its grant was refused).
    pub(crate) fn forget(&self, key: &GrantKey) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// How long a token may be reused, from the token response's `expires_in`
/// (seconds) and `issued_at` (RFC 3339), measured from `now`. A token whose
/// issue time lies in the future still counts only from now; one already
/// (nearly) expired gets zero; none is kept longer than a day.
pub(crate) fn token_lifetime(
    expires_in: Option<u64>,
    issued_at: Option<&str>,
    now: SystemTime,
) -> Duration {
    let lifetime = Duration::from_secs(expires_in.unwrap_or(0))
        .max(MIN_TOKEN_LIFETIME)
        .min(MAX_LIFETIME);
    let remaining = match issued_at.and_then(parse_rfc3339) {
        Some(issued) => match issued.checked_add(lifetime) {
            Some(expires) => expires
                .duration_since(now)
                .unwrap_or(Duration::ZERO)
                .min(lifetime),
            None => lifetime,
        },
        None => lifetime,
    };
    remaining.saturating_sub(EXPIRY_MARGIN.min(lifetime / 10))
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:30:00Z`, with optional
/// fractional seconds and a `Z` or `±hh:mm` offset), as a token response's
/// `issued_at` carries it. A time before 1970 is none a token can have.
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let at = SystemTime::from(s.parse::<jiff::Timestamp>().ok()?);
    (at >= UNIX_EPOCH).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(at("1970-01-01T00:00:00Z"), UNIX_EPOCH);
        assert_eq!(
            at("2024-03-01T12:30:15Z"),
            UNIX_EPOCH + Duration::from_secs(1_709_296_215)
        );
        assert_eq!(
            at("2024-03-01T14:30:15.5+02:00"),
            UNIX_EPOCH + Duration::new(1_709_296_215, 500_000_000)
        );
        assert_eq!(
            at("2024-03-01T12:30:15.123456789Z"),
            UNIX_EPOCH + Duration::new(1_709_296_215, 123_456_789)
        );
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-03-01T00:00:00",
            "2024-03-01T00:00:00.Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn token_lifetimes() {
        let now = at("2024-03-01T12:00:00Z");
        // expires_in alone, less the margin (a tenth, at most 30 s).
        assert_eq!(
            token_lifetime(Some(300), None, now),
            Duration::from_secs(270)
        );
        assert_eq!(
            token_lifetime(Some(3600), None, now),
            Duration::from_secs(3570)
        );
        // Nothing or too little: the spec's 60 s minimum.
        assert_eq!(token_lifetime(None, None, now), Duration::from_secs(54));
        assert_eq!(token_lifetime(Some(5), None, now), Duration::from_secs(54));
        // issued_at counts: issued two minutes ago, five minute lifetime.
        assert_eq!(
            token_lifetime(Some(300), Some("2024-03-01T11:58:00Z"), now),
            Duration::from_secs(150)
        );
        // Already expired by the issuer's clock.
        assert_eq!(
            token_lifetime(Some(300), Some("2024-03-01T11:00:00Z"), now),
            Duration::ZERO
        );
        // Issued "in the future" (clock skew): never longer than expires_in.
        assert_eq!(
            token_lifetime(Some(300), Some("2024-03-01T13:00:00Z"), now),
            Duration::from_secs(270)
        );
        // Absurd lifetimes neither overflow nor last longer than a day.
        let day_less_margin = Duration::from_secs(24 * 3600 - 30);
        assert_eq!(token_lifetime(Some(u64::MAX), None, now), day_less_margin);
        assert_eq!(
            token_lifetime(Some(u64::MAX), Some("9999-12-31T23:59:59Z"), now),
            day_less_margin
        );
        assert_eq!(
            token_lifetime(Some(u64::MAX), Some("2024-03-01T11:00:00Z"), now),
            Duration::from_secs(23 * 3600 - 30)
        );
        // An unreadable issued_at is ignored.
        assert_eq!(
            token_lifetime(Some(300), Some("soon"), now),
            Duration::from_secs(270)
        );
    }

    #[test]
    fn cache_expires_and_separates_credentials() {
        let cache = GrantCache::default();
        let anon = GrantKey::new("https://r", "a/b", ["", "", "", ""]);
        let alice = GrantKey::new("https://r", "a/b", ["alice", "pw", "", ""]);
        let bob = GrantKey::new("https://r", "a/b", ["bob", "pw", "", ""]);
        let split = GrantKey::new("https://r", "a/b", ["alicep", "w", "", ""]);
        let other_repo = GrantKey::new("https://r", "a/c", ["alice", "pw", "", ""]);
        let other_host = GrantKey::new("https://m", "a/b", ["alice", "pw", "", ""]);
        cache.put(
            alice.clone(),
            Grant::Bearer("t".into()),
            Duration::from_secs(60),
        );
        assert_eq!(cache.get(&alice), Some(Grant::Bearer("t".into())));
        for other in [&anon, &bob, &split, &other_repo, &other_host] {
            assert_eq!(cache.get(other), None, "{other:?}");
        }
        cache.forget(&alice);
        assert_eq!(cache.get(&alice), None);
        cache.put(alice.clone(), Grant::Basic, Duration::MAX);
        assert_eq!(cache.get(&alice), Some(Grant::Basic));
        cache.forget(&alice);

        cache.put(
            alice.clone(),
            Grant::Bearer("t".into()),
            Duration::from_millis(20),
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&alice), None);
        cache.put(alice.clone(), Grant::Bearer("t".into()), Duration::ZERO);
        assert_eq!(cache.get(&alice), None);
        cache.put_basic(bob.clone());
        assert_eq!(cache.get(&bob), Some(Grant::Basic));
    }
}
