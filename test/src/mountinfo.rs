//! Reading `/proc/self/mountinfo`, to find the mounts a test left behind.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique id of the mount; later mounts have larger ids in practice.
    pub mount_id: u32,
    /// Where it is mounted, with the kernel's octal escapes decoded.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `overlay`, `tmpfs`, `nsfs`, `cgroup2`.
    pub fs_type: String,
}

/// Reads every mount of the calling process's mount namespace, in mount order.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// Returns the mounts at or below `dir`, deepest (and then most recent) first:
/// the order in which they can be unmounted.
pub fn mounts_under(dir: &Path) -> std::io::Result<Vec<MountEntry>> {
    let mut found: Vec<MountEntry> = read()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    found.sort_by_key(|m| {
        (
            std::cmp::Reverse(m.mount_point.components().count()),
            std::cmp::Reverse(m.mount_id),
        )
    });
    Ok(found)
}

/// Parses one mountinfo line:
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let mount_point = fields.nth(3)?;
    let fs_type = fields.skip_while(|f| *f != "-").nth(1)?;
    Some(MountEntry {
        mount_id,
        mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
        fs_type: fs_type.to_string(),
    })
}

/// Decodes the `\NNN` octal escapes the kernel uses for space, tab, newline and `\`.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(digits) => {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |acc, d| acc.wrapping_mul(8) + (d - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_escapes() {
        let line = "731 29 0:55 / /tmp/a\\040b/rootfs rw,relatime shared:1 - overlay overlay rw,lowerdir=/x";
        let entry = parse_line(line).unwrap();
        assert_eq!(entry.mount_id, 731);
        assert_eq!(entry.mount_point, PathBuf::from("/tmp/a b/rootfs"));
        assert_eq!(entry.fs_type, "overlay");
    }

    #[test]
    fn parses_lines_without_optional_fields() {
        let entry =
            parse_line("40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw")
                .unwrap();
        assert_eq!(entry.fs_type, "cgroup2");
    }
}
