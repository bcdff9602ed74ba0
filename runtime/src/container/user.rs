//! Who a container runs as: the CRI security context over the image's `User`,
//! with names resolved in the image's own /etc/passwd and /etc/group (read with
//! the container's root as `/`, so symlinks in the image cannot reach host files).

use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;

use super::ResolvedUser;
use super::config::SecurityContext;
use crate::{Error, Result};

/// Largest passwd/group file read.
const MAX_DB_SIZE: u64 = 4 << 20;

/// One line of /etc/passwd.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One line of /etc/group.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// What a user or group field of an image's `User` names. ImageStatus (whose
/// `uid` kubelet's runAsNonRoot check trusts) and CreateContainer both read
/// the field through [`parse_id`], so what the one reports is what the other runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdSpec<'a> {
    /// Nothing is named: the default (root, or the user's primary group).
    Unset,
    /// A numeric id: ASCII digits only, below 4294967295 (`(uid_t)-1`).
    Id(u32),
    /// A name to look up in the image's /etc/passwd or /etc/group.
    Name(&'a str),
    /// Neither: a sign, surrounding whitespace, a leading digit followed by
    /// more than digits, or a number out of range. Refused, since a name
    /// like `-1` could map to uid 0 in the image's /etc/passwd while
    /// looking numeric and non-zero to a careless reader.
    Invalid(&'a str),
}

/// Classifies one user or group field of an image's `User`.
pub fn parse_id(field: &str) -> IdSpec<'_> {
    if field.is_empty() {
        return IdSpec::Unset;
    }
    if field.bytes().all(|b| b.is_ascii_digit()) {
        return match field.parse::<u32>() {
            Ok(id) if id != u32::MAX => IdSpec::Id(id),
            _ => IdSpec::Invalid(field),
        };
    }
    let looks_numeric = field.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-');
    if looks_numeric || field.trim() != field {
        return IdSpec::Invalid(field);
    }
    IdSpec::Name(field)
}

/// The user part (before any `:group`) of an image's `User`.
pub fn image_user(user: &str) -> IdSpec<'_> {
    parse_id(user.split_once(':').map_or(user, |(u, _)| u))
}

fn invalid_field(what: &str, field: &str) -> Error {
    Error::invalid(format!(
        "the image's {what} {field:?} is neither a numeric id (decimal digits only, below 4294967295) nor a name; refusing it"
    ))
}

/// Resolves the user of a container whose root filesystem is mounted at `rootfs`.
pub fn resolve(rootfs: &Path, sec: &SecurityContext, image_user: &str) -> Result<ResolvedUser> {
    let passwd = parse_passwd(&read_in_root(rootfs, "etc/passwd")?);
    let groups = parse_group(&read_in_root(rootfs, "etc/group")?);
    resolve_with(&passwd, &groups, sec, image_user)
}

fn resolve_with(
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
    sec: &SecurityContext,
    image_user: &str,
) -> Result<ResolvedUser> {
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let (uid, mut gid, name) = if let Some(uid) = sec.run_as_user {
        let uid = to_id(uid, "run_as_user")?;
        let entry = passwd.iter().find(|p| p.uid == uid);
        (
            uid,
            entry.map_or(0, |p| p.gid),
            entry.map(|p| p.name.clone()),
        )
    } else if !sec.run_as_username.is_empty() {
        let entry = passwd
            .iter()
            .find(|p| p.name == sec.run_as_username)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "user {:?} does not exist in the image's /etc/passwd",
                    sec.run_as_username
                ))
            })?;
        (entry.uid, entry.gid, Some(entry.name.clone()))
    } else {
        match parse_id(user_part) {
            IdSpec::Unset => {
                let entry = passwd.iter().find(|p| p.uid == 0);
                (0, entry.map_or(0, |p| p.gid), entry.map(|p| p.name.clone()))
            }
            IdSpec::Id(uid) => {
                let entry = passwd.iter().find(|p| p.uid == uid);
                (
                    uid,
                    entry.map_or(0, |p| p.gid),
                    entry.map(|p| p.name.clone()),
                )
            }
            IdSpec::Name(name) => {
                let entry = passwd.iter().find(|p| p.name == name).ok_or_else(|| {
                    Error::invalid(format!(
                        "the image's user {name:?} does not exist in its /etc/passwd"
                    ))
                })?;
                (entry.uid, entry.gid, Some(entry.name.clone()))
            }
            IdSpec::Invalid(field) => return Err(invalid_field("user", field)),
        }
    };
    let image_group_applies = sec.run_as_user.is_none() && sec.run_as_username.is_empty();
    if let (true, Some(g)) = (image_group_applies, group_part) {
        gid = match parse_id(g) {
            IdSpec::Id(gid) => gid,
            IdSpec::Invalid(field) => return Err(invalid_field("group", field)),
            IdSpec::Unset | IdSpec::Name(_) => {
                groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "the image's group {g:?} does not exist in its /etc/group"
                        ))
                    })?
                    .gid
            }
        };
    }
    if let Some(g) = sec.run_as_group {
        gid = to_id(g, "run_as_group")?;
    }
    // The primary group comes first, as the peers report it: it is among the
    // groups the process holds, whichever policy applies.
    let mut additional = vec![gid];
    if !sec.supplemental_groups_strict
        && let Some(name) = &name
    {
        for g in groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
        {
            additional.push(g.gid);
        }
    }
    for g in &sec.supplemental_groups {
        additional.push(to_id(*g, "supplemental group")?);
    }
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| seen.insert(*g));
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
    })
}

fn to_id(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(format!("{what} {v} is not a valid id")))
}

/// Reads `rel` inside `root` as if `root` were `/`; missing or unreadable is empty.
/// The image's file at `rel`, resolved with `root` as `/`: empty when it
/// does not exist; refused when it is not a regular file or is too large.
fn read_in_root(root: &Path, rel: &str) -> Result<String> {
    let Ok(dir) = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(String::new());
    };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let Ok(fd) = openat2(dir.as_fd(), rel, how) else {
        return Ok(String::new());
    };
    let data = crate::fsutil::read_regular_capped(std::fs::File::from(fd), MAX_DB_SIZE)
        .map_err(|why| Error::FailedPrecondition(format!("the image's /{rel} {why}")))?;
    Ok(String::from_utf8_lossy(&data).into_owned())
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (Vec<PasswdEntry>, Vec<GroupEntry>) {
        (
            parse_passwd("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"),
            parse_group("root:x:0:\nappgrp:x:1001:\nextra:x:2000:app,other\nstaff:x:50:\n"),
        )
    }

    #[test]
    fn image_user_forms() {
        let (p, g) = db();
        let sec = SecurityContext::default();
        let u = resolve_with(&p, &g, &sec, "").unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        let u = resolve_with(&p, &g, &sec, "app").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1001, vec![1001, 2000])
        );
        let u = resolve_with(&p, &g, &sec, "1000:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        let u = resolve_with(&p, &g, &sec, "4242:4343").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 4343));
        assert!(resolve_with(&p, &g, &sec, "nobody-here").is_err());
    }

    #[test]
    fn users_that_only_look_numeric_are_refused() {
        let (mut p, mut g) = db();
        let lookalikes = [
            "-1",
            "+1",
            " 1000",
            "1000 ",
            "4294967296",
            "4294967295",
            "1e3",
        ];
        for name in lookalikes {
            p.extend(parse_passwd(&format!("{name}:x:0:0::/:/bin/sh\n")));
            g.extend(parse_group(&format!("{name}:x:0:\n")));
        }
        let sec = SecurityContext::default();
        for user in lookalikes.into_iter().chain([" "]) {
            assert!(
                matches!(image_user(user), IdSpec::Invalid(u) if u == user),
                "{user:?}"
            );
            let err = resolve_with(&p, &g, &sec, user).unwrap_err().to_string();
            assert!(err.contains("neither a numeric id"), "{user:?}: {err}");
            let err = resolve_with(&p, &g, &sec, &format!("1000:{user}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("group"), "{user:?}: {err}");
        }
        assert_eq!(image_user("0007:x"), IdSpec::Id(7));
        assert_eq!(image_user("app:-1"), IdSpec::Name("app"));
        assert_eq!(image_user(":0"), IdSpec::Unset);
        assert_eq!(image_user("4294967294"), IdSpec::Id(4294967294));
    }

    #[test]
    fn security_context_wins() {
        let (p, g) = db();
        let sec = SecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(7),
            supplemental_groups: vec![9, 2000],
            ..Default::default()
        };
        let u = resolve_with(&p, &g, &sec, "root").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids),
            (1000, 7, vec![7, 2000, 9])
        );
        let sec = SecurityContext {
            run_as_username: "app".into(),
            supplemental_groups_strict: true,
            ..Default::default()
        };
        let u = resolve_with(&p, &g, &sec, "").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 1001, vec![1001]));
    }
}
