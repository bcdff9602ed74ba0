//! Seccomp: crust's runtime/default profile (Docker's never-allowed system
//! calls, refused with EPERM) and Localhost profiles read from the node.

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
};

use super::internal;
use crate::container::config::Profile;
use crate::{Error, Result};

/// System calls the runtime/default seccomp profile refuses with EPERM. The list
/// follows what Docker's default profile never allows an unprivileged container;
/// the ones that need CAP_SYS_ADMIN are allowed when the container holds it.
const SECCOMP_BLOCKED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "move_pages",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// Blocked by runtime/default unless the container holds CAP_SYS_ADMIN.
const SECCOMP_BLOCKED_WITHOUT_SYS_ADMIN: &[&str] = &[
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "open_tree",
    "pivot_root",
    "setns",
    "umount",
    "umount2",
    "unshare",
];

/// A Localhost seccomp profile file as read from the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProfileFile {
    /// Its content.
    Read(Vec<u8>),
    /// It could not be opened: the system's reason.
    CannotOpen(String),
    /// It was opened but not read, worded to follow "seccomp profile PATH"
    /// ("is a FIFO, not a regular file", "is N bytes, more than ...").
    Refused(String),
}

/// The seccomp filter of a container: none for a privileged one or an
/// unconfined one; runtime/default with the CAP_SYS_ADMIN system calls
/// allowed when `caps` holds it; a Localhost profile parsed from `file`,
/// the profile as read from the node.
pub(super) fn seccomp(
    privileged: bool,
    profile: &Profile,
    caps: &HashSet<Capability>,
    file: Option<&ProfileFile>,
) -> Result<Option<LinuxSeccomp>> {
    if privileged {
        return Ok(None);
    }
    match profile {
        Profile::Unset | Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => runtime_default(caps).map(Some),
        Profile::Localhost(path) => {
            if !path.starts_with('/') {
                return Err(Error::invalid(format!(
                    "seccomp profile path {path:?} must be absolute"
                )));
            }
            let data = match file {
                Some(ProfileFile::Read(data)) => data,
                Some(ProfileFile::CannotOpen(e)) => {
                    return Err(Error::invalid(format!(
                        "cannot read seccomp profile {path:?}: {e}"
                    )));
                }
                Some(ProfileFile::Refused(why)) => {
                    return Err(Error::invalid(format!("seccomp profile {path:?} {why}")));
                }
                None => {
                    return Err(Error::invalid(format!(
                        "cannot read seccomp profile {path:?}: it was not read from the node"
                    )));
                }
            };
            let profile: LinuxSeccomp = serde_json::from_slice(data).map_err(|e| {
                Error::invalid(format!("seccomp profile {path:?} is not valid: {e}"))
            })?;
            Ok(Some(profile))
        }
    }
}

/// crust's runtime/default profile for a container holding `caps`.
fn runtime_default(caps: &HashSet<Capability>) -> Result<LinuxSeccomp> {
    let mut names: Vec<String> = SECCOMP_BLOCKED.iter().map(|s| s.to_string()).collect();
    if !caps.contains(&Capability::SysAdmin) {
        names.extend(
            SECCOMP_BLOCKED_WITHOUT_SYS_ADMIN
                .iter()
                .map(|s| s.to_string()),
        );
    }
    let rule = LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()
        .map_err(internal)?;
    let arches = match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    };
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(arches)
        .syscalls(vec![rule])
        .build()
        .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(filter: &LinuxSeccomp) -> Vec<String> {
        filter.syscalls().as_ref().unwrap()[0].names().clone()
    }

    #[test]
    fn runtime_default_allows_mount_only_with_sys_admin() {
        let plain = seccomp(false, &Profile::RuntimeDefault, &HashSet::new(), None)
            .unwrap()
            .unwrap();
        assert!(blocked(&plain).contains(&"mount".to_string()));
        assert!(blocked(&plain).contains(&"kexec_load".to_string()));
        let admin = HashSet::from([Capability::SysAdmin]);
        let admin = seccomp(false, &Profile::RuntimeDefault, &admin, None)
            .unwrap()
            .unwrap();
        assert!(!blocked(&admin).contains(&"mount".to_string()));
        assert!(blocked(&admin).contains(&"kexec_load".to_string()));
        assert_eq!(
            seccomp(true, &Profile::RuntimeDefault, &HashSet::new(), None).unwrap(),
            None
        );
    }

    #[test]
    fn a_localhost_profile_comes_from_the_file_read() {
        let path = Profile::Localhost("/etc/seccomp/p.json".into());
        let none = HashSet::new();
        let file = ProfileFile::Read(br#"{"defaultAction":"SCMP_ACT_ERRNO"}"#.to_vec());
        let filter = seccomp(false, &path, &none, Some(&file)).unwrap().unwrap();
        assert_eq!(filter.default_action(), LinuxSeccompAction::ScmpActErrno);

        let invalid = |file: Option<&ProfileFile>| match seccomp(false, &path, &none, file) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        assert!(invalid(Some(&ProfileFile::Read(b"nope".to_vec()))).contains("is not valid"));
        assert_eq!(
            invalid(Some(&ProfileFile::CannotOpen("gone".into()))),
            "cannot read seccomp profile \"/etc/seccomp/p.json\": gone"
        );
        assert_eq!(
            invalid(Some(&ProfileFile::Refused(
                "is a FIFO, not a regular file".into()
            ))),
            "seccomp profile \"/etc/seccomp/p.json\" is a FIFO, not a regular file"
        );
        assert!(invalid(None).contains("was not read"));

        let relative = Profile::Localhost("p.json".into());
        assert!(matches!(
            seccomp(false, &relative, &none, Some(&file)),
            Err(Error::InvalidArgument(m)) if m.contains("must be absolute")
        ));
    }
}
