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
    } else if user_part.is_empty() {
        let entry = passwd.iter().find(|p| p.uid == 0);
        (0, entry.map_or(0, |p| p.gid), entry.map(|p| p.name.clone()))
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let entry = passwd.iter().find(|p| p.uid == uid);
        (
            uid,
            entry.map_or(0, |p| p.gid),
            entry.map(|p| p.name.clone()),
        )
    } else {
        let entry = passwd.iter().find(|p| p.name == user_part).ok_or_else(|| {
            Error::invalid(format!(
                "the image's user {user_part:?} does not exist in its /etc/passwd"
            ))
        })?;
        (entry.uid, entry.gid, Some(entry.name.clone()))
    };
    let image_group_applies = sec.run_as_user.is_none() && sec.run_as_username.is_empty();
    if let (true, Some(g)) = (image_group_applies, group_part) {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
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
