//! Crafted hostile and ordinary layers.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use super::*;
use crate::image::digest::sha256_of;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "crust-unpack-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A tar built entry by entry with raw names, so hostile paths survive.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(path: &str, kind: EntryType, size: u64, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    }

    fn push(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.push(Self::header(path, EntryType::Directory, 0, mode), b"")
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.push(
            Self::header(path, EntryType::Regular, data.len() as u64, mode),
            data,
        )
    }

    fn owned_file(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = Self::header(path, EntryType::Regular, data.len() as u64, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        self.push(h, data)
    }

    fn link(&mut self, kind: EntryType, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(path, kind, 0, 0o777);
        let ln = &mut h.as_old_mut().linkname;
        ln.fill(0);
        ln[..target.len()].copy_from_slice(target.as_bytes());
        self.push(h, b"")
    }

    fn device(
        &mut self,
        path: &str,
        kind: EntryType,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> &mut Self {
        let mut h = Self::header(path, kind, 0, mode);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, b"")
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3; // ' ' '=' '\n'
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let h = Self::header(
            "././@PaxHeader",
            EntryType::XHeader,
            body.len() as u64,
            0o644,
        );
        self.push(h, &body)
    }

    fn tar(&mut self) -> Vec<u8> {
        self.0.finish().unwrap();
        self.0.get_ref().clone()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn unpack(tar: &[u8], dest: &Path) -> Result<String> {
    unpack_layer(tar, dest, uncompressed_limit(tar.len() as u64))
}

fn assert_invalid(r: Result<String>, needle: &str) {
    match r {
        Err(Error::InvalidArgument(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected InvalidArgument({needle}), got {other:?}"),
    }
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn ordinary_layer_and_diff_id() {
    let dest = TempDir::new("ok");
    let tar = Layer::new()
        .dir("./", 0o755)
        .dir("./bin/", 0o755)
        .file("./bin/tool", b"#!/bin/sh\n", 0o755)
        .link(EntryType::Symlink, "./bin/sh", "/bin/tool")
        .link(EntryType::Link, "./bin/tool2", "bin/tool")
        .file("/etc/abs", b"abs", 0o644)
        .tar();
    let diff = unpack(&tar, &dest.0).unwrap();
    assert_eq!(diff, sha256_of(&tar));
    assert_eq!(fs::read(dest.0.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        fs::read_link(dest.0.join("bin/sh")).unwrap(),
        Path::new("/bin/tool")
    );
    let a = fs::metadata(dest.0.join("bin/tool")).unwrap();
    let b = fs::metadata(dest.0.join("bin/tool2")).unwrap();
    assert_eq!(a.ino(), b.ino());
    // A leading "/" is stripped: the file lands inside the layer.
    assert_eq!(fs::read(dest.0.join("etc/abs")).unwrap(), b"abs");
    assert_eq!(a.mtime(), 1_600_000_000);
    assert_eq!(
        fs::metadata(dest.0.join("bin")).unwrap().mtime(),
        1_600_000_000
    );

    // The same layer gzip-compressed gives the same diff id.
    let dest2 = TempDir::new("gz");
    assert_eq!(unpack(&gzip(&tar), &dest2.0).unwrap(), diff);
}

#[test]
fn dotdot_is_rejected() {
    let dest = TempDir::new("dotdot");
    let tar = Layer::new().file("../escape", b"x", 0o644).tar();
    assert_invalid(unpack(&tar, &dest.0), "escapes");
    let tar = Layer::new()
        .dir("a/", 0o755)
        .file("a/../../escape2", b"x", 0o644)
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "escapes");
    assert!(!dest.0.parent().unwrap().join("escape").exists());
    assert!(!dest.0.parent().unwrap().join("escape2").exists());
}

#[test]
fn symlink_parent_is_not_followed() {
    let outside = TempDir::new("outside");
    let dest = TempDir::new("symparent");
    let tar = Layer::new()
        .link(EntryType::Symlink, "evil", outside.0.to_str().unwrap())
        .file("evil/pwned", b"x", 0o644)
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "not a directory");
    assert!(!outside.0.join("pwned").exists());

    // Replacing a checked directory by a symlink later in the layer is caught too.
    let dest = TempDir::new("symparent2");
    let tar = Layer::new()
        .dir("d/", 0o755)
        .file("d/ok", b"x", 0o644)
        .link(EntryType::Symlink, "d", outside.0.to_str().unwrap())
        .file("d/pwned", b"x", 0o644)
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "not a directory");
    assert!(!outside.0.join("pwned").exists());

    // A directory entry through a symlink, too.
    let dest = TempDir::new("symparent3");
    let tar = Layer::new()
        .link(EntryType::Symlink, "evil", outside.0.to_str().unwrap())
        .dir("evil/sub/", 0o755)
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "not a directory");
    assert!(!outside.0.join("sub").exists());
}

#[test]
fn hardlinks_must_stay_inside() {
    let dest = TempDir::new("hl1");
    let tar = Layer::new()
        .link(EntryType::Link, "h", "../../../etc/passwd")
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "outside the layer");

    let dest = TempDir::new("hl2");
    let tar = Layer::new().link(EntryType::Link, "h", "/etc/passwd").tar();
    assert_invalid(unpack(&tar, &dest.0), "not a file in this layer");

    let dest = TempDir::new("hl3");
    let tar = Layer::new()
        .link(EntryType::Symlink, "s", "/etc")
        .link(EntryType::Link, "h", "s/passwd")
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "not a file in this layer");
    assert!(!dest.0.join("h").exists());

    let dest = TempDir::new("hl4");
    let tar = Layer::new()
        .dir("d/", 0o755)
        .link(EntryType::Link, "h", "d")
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "directory");
}

#[test]
fn whiteouts_and_opaque_dirs() {
    if !is_root() {
        eprintln!("skipping whiteouts_and_opaque_dirs: needs root for mknod and trusted.* xattrs");
        return;
    }
    let dest = TempDir::new("wh");
    let tar = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/.wh.gone", b"", 0o644)
        .dir("var/", 0o755)
        .file("var/.wh..wh..opq", b"", 0o644)
        .file("var/.wh..wh.plnk", b"", 0o644)
        .file(".wh.top", b"", 0o644)
        .tar();
    unpack(&tar, &dest.0).unwrap();
    for w in ["etc/gone", "top"] {
        let m = fs::symlink_metadata(dest.0.join(w)).unwrap();
        assert!(m.file_type().is_char_device(), "{w}");
        assert_eq!(m.rdev(), 0, "{w}");
    }
    assert!(!dest.0.join("etc/.wh.gone").exists());
    assert!(!dest.0.join("var/.wh..wh..opq").exists());
    assert!(!dest.0.join("var/.wh..wh.plnk").exists());
    assert_eq!(
        lgetxattr(&dest.0.join("var"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert!(lgetxattr(&dest.0.join("etc"), "trusted.overlay.opaque").is_none());
}

#[test]
fn modes_owners_devices_and_xattrs() {
    if !is_root() {
        eprintln!("skipping modes_owners_devices_and_xattrs: needs root for chown and mknod");
        return;
    }
    let dest = TempDir::new("modes");
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let tar = Layer::new()
        .owned_file("su", b"x", 0o4755, 0, 0)
        .owned_file("sg", b"x", 0o2755, 1000, 1001)
        .dir("tmp/", 0o1777)
        .device("null", EntryType::Char, 1, 3, 0o666)
        .device("fifo", EntryType::Fifo, 0, 0, 0o600)
        .pax(&[
            ("SCHILY.xattr.security.capability", cap),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("uid", b"70000"),
        ])
        .file("ping", b"x", 0o755)
        .tar();
    unpack(&tar, &dest.0).unwrap();
    let m = |p: &str| fs::symlink_metadata(dest.0.join(p)).unwrap();
    assert_eq!(m("su").mode() & 0o7777, 0o4755);
    assert_eq!(m("sg").mode() & 0o7777, 0o2755);
    assert_eq!((m("sg").uid(), m("sg").gid()), (1000, 1001));
    assert_eq!(m("tmp").mode() & 0o7777, 0o1777);
    assert!(m("null").file_type().is_char_device());
    assert_eq!(m("null").rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(m("null").mode() & 0o777, 0o666);
    assert!(m("fifo").file_type().is_fifo());
    assert_eq!(m("ping").uid(), 70000);
    assert_eq!(
        lgetxattr(&dest.0.join("ping"), "security.capability").unwrap(),
        cap
    );
    assert!(lgetxattr(&dest.0.join("ping"), "trusted.overlay.opaque").is_none());
}

#[test]
fn decompression_bomb_is_stopped() {
    let dest = TempDir::new("bomb");
    let zeros = vec![0u8; 2 << 20];
    let tar = Layer::new().file("big", &zeros, 0o644).tar();
    let gz = gzip(&tar);
    assert!(gz.len() < 64 << 10, "zeros compress well");
    assert_invalid(
        unpack_layer(&gz[..], &dest.0, 1 << 20),
        "decompression bomb",
    );
    // With the real limit, a small blob may expand to 64 MiB, but not further.
    assert_eq!(uncompressed_limit(1), MIN_UNCOMPRESSED_LIMIT);
    assert_eq!(uncompressed_limit(10 << 20), 1000 << 20);
    assert_eq!(uncompressed_limit(u64::MAX), u64::MAX);
}

#[test]
fn garbage_is_refused_with_the_format_named() {
    let dest = TempDir::new("garbage");
    assert_invalid(
        unpack_layer(&b"\x1f\x8bnot really gzip"[..], &dest.0, 1 << 20),
        "not valid gzip",
    );
    let dest = TempDir::new("garbage-zstd");
    assert_invalid(
        unpack_layer(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0][..], &dest.0, 1 << 20),
        "not valid zstd",
    );
    let dest = TempDir::new("garbage-tar");
    assert_invalid(
        unpack_layer(&[7u8; 1024][..], &dest.0, 1 << 20),
        "not a valid tar",
    );
    // An empty blob is an empty layer.
    let empty = TempDir::new("empty");
    assert_eq!(
        unpack_layer(&b""[..], &empty.0, 1 << 20).unwrap(),
        sha256_of(b"")
    );
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

#[test]
fn zstd_layers_unpack_with_the_same_diff_id() {
    let tar = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/hello", b"zstd\n", 0o644)
        .tar();
    let dest = TempDir::new("zstd");
    assert_eq!(unpack(&zstd(&tar), &dest.0).unwrap(), sha256_of(&tar));
    assert_eq!(fs::read(dest.0.join("etc/hello")).unwrap(), b"zstd\n");

    // Several frames in a row make one stream, as with gzip members.
    let (a, b) = tar.split_at(700);
    let mut frames = zstd(a);
    frames.extend(zstd(b));
    let dest = TempDir::new("zstd-frames");
    assert_eq!(unpack(&frames, &dest.0).unwrap(), sha256_of(&tar));
}

#[test]
fn zstd_bombs_and_huge_windows_are_stopped() {
    let zeros = vec![0u8; 4 << 20];
    let tar = Layer::new().file("big", &zeros, 0o644).tar();
    let z = zstd(&tar);
    assert!(z.len() < 4 << 10, "zeros compress well: {}", z.len());
    let dest = TempDir::new("zbomb");
    assert_invalid(unpack_layer(&z[..], &dest.0, 1 << 20), "decompression bomb");

    // A frame that asks for a 1 GiB window is refused before any memory is taken.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(30).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.write_all(&tar).unwrap();
    let huge = enc.finish().unwrap();
    let dest = TempDir::new("zwindow");
    assert_invalid(unpack(&huge, &dest.0), "not valid zstd");
}

#[test]
fn whiteouts_cannot_escape() {
    let outside = TempDir::new("wh-outside");
    fs::write(outside.0.join("canary"), b"alive").unwrap();
    let dest = TempDir::new("wh-escape");
    let tar = Layer::new().file("../.wh.canary", b"", 0o644).tar();
    assert_invalid(unpack(&tar, &dest.0), "escapes");
    for name in [".wh...", ".wh..", ".wh.", "a/.wh...", "a/.wh.."] {
        let dest = TempDir::new("wh-nothing");
        let tar = Layer::new().dir("a/", 0o755).file(name, b"", 0o644).tar();
        assert_invalid(unpack(&tar, &dest.0), "whiteout of nothing");
        assert!(dest.0.exists(), "{name} removed the layer directory");
    }
    // Neither a whiteout nor an opaque marker goes through a symlinked parent.
    for name in ["evil/.wh.canary", "evil/.wh..wh..opq"] {
        let dest = TempDir::new("wh-symlink");
        let tar = Layer::new()
            .link(EntryType::Symlink, "evil", outside.0.to_str().unwrap())
            .file(name, b"", 0o644)
            .tar();
        assert_invalid(unpack(&tar, &dest.0), "not a directory");
    }
    assert_eq!(fs::read(outside.0.join("canary")).unwrap(), b"alive");
    assert!(lgetxattr(&outside.0, "trusted.overlay.opaque").is_none());
}

#[test]
fn links_pointing_outside_are_never_followed() {
    let outside = TempDir::new("ln-outside");
    let canary = outside.0.join("canary");
    fs::write(&canary, b"alive").unwrap();
    let canary_str = canary.to_str().unwrap();

    // A hardlink to a symlink links the symlink itself.
    let dest = TempDir::new("hl-sym");
    let tar = Layer::new()
        .link(EntryType::Symlink, "s", canary_str)
        .link(EntryType::Link, "h", "s")
        .tar();
    unpack(&tar, &dest.0).unwrap();
    assert!(
        fs::symlink_metadata(dest.0.join("h"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A file written where a symlink to the outside was replaces the symlink.
    let dest = TempDir::new("sym-replaced");
    let tar = Layer::new()
        .link(EntryType::Symlink, "s", canary_str)
        .file("s", b"pwned", 0o644)
        .link(EntryType::Symlink, "d", outside.0.to_str().unwrap())
        .dir("d/", 0o777)
        .tar();
    unpack(&tar, &dest.0).unwrap();
    assert_eq!(fs::read(dest.0.join("s")).unwrap(), b"pwned");
    assert!(fs::symlink_metadata(dest.0.join("d")).unwrap().is_dir());

    // A hardlink to an absolute path outside, or through a chain of symlinks.
    let dest = TempDir::new("hl-abs");
    let tar = Layer::new().link(EntryType::Link, "h", canary_str).tar();
    assert_invalid(unpack(&tar, &dest.0), "not a file in this layer");
    let dest = TempDir::new("sym-chain");
    let tar = Layer::new()
        .link(EntryType::Symlink, "b", outside.0.to_str().unwrap())
        .link(EntryType::Symlink, "a", "b")
        .file("a/pwned", b"x", 0o644)
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "not a directory");

    // An absolute path stays inside the layer.
    let dest = TempDir::new("abs");
    let inside = format!("{}/pwned", outside.0.display());
    let tar = Layer::new().file(&inside, b"inside", 0o644).tar();
    unpack(&tar, &dest.0).unwrap();
    assert_eq!(
        fs::read(dest.0.join(inside.trim_start_matches('/'))).unwrap(),
        b"inside"
    );

    assert_eq!(fs::read(&canary).unwrap(), b"alive");
    assert_eq!(fs::metadata(&canary).unwrap().nlink(), 1);
    assert_eq!(fs::read_dir(&outside.0).unwrap().count(), 1);
    let mode = fs::metadata(&outside.0).unwrap().mode() & 0o7777;
    assert_ne!(
        mode, 0o777,
        "the directory entry changed the outside directory"
    );
}

#[test]
fn long_names_with_dotdot_are_rejected() {
    let dest = TempDir::new("pax-dotdot");
    let tar = Layer::new()
        .pax(&[("path", b"a/../../escape")])
        .file("harmless", b"x", 0o644)
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "escapes");

    let dest = TempDir::new("gnu-dotdot");
    let long = format!("{}/../../../escape", "d".repeat(120));
    let mut name = long.into_bytes();
    name.push(0);
    let tar = Layer::new()
        .push(
            Layer::header(
                "././@LongLink",
                EntryType::GNULongName,
                name.len() as u64,
                0o644,
            ),
            &name,
        )
        .file("short", b"x", 0o644)
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "escapes");

    let dest = TempDir::new("pax-linkpath");
    let tar = Layer::new()
        .file("f", b"x", 0o644)
        .pax(&[("linkpath", b"../../etc/passwd")])
        .link(EntryType::Link, "h", "f")
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "outside the layer");
}

#[test]
fn later_entries_replace_earlier_ones() {
    let dest = TempDir::new("replace");
    let tar = Layer::new()
        .file("a", b"one", 0o644)
        .file("a", b"two", 0o600)
        .dir("d/", 0o755)
        .file("d/x", b"x", 0o644)
        .file("d", b"now a file", 0o644)
        .link(EntryType::Symlink, "s", "a")
        .file("s", b"not through the link", 0o644)
        .tar();
    unpack(&tar, &dest.0).unwrap();
    assert_eq!(fs::read(dest.0.join("a")).unwrap(), b"two");
    assert_eq!(fs::read(dest.0.join("d")).unwrap(), b"now a file");
    assert_eq!(fs::read(dest.0.join("s")).unwrap(), b"not through the link");
    assert!(
        !fs::symlink_metadata(dest.0.join("s"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn directory_times_never_follow_a_later_symlink() {
    let dest = TempDir::new("dirtimes");
    let outside = TempDir::new("dirtimes-outside");
    fs::create_dir(outside.0.join("sub")).unwrap();
    let before = fs::metadata(outside.0.join("sub")).unwrap().mtime();
    let target = outside.0.display().to_string();
    let tar = Layer::new()
        .dir("x/", 0o755)
        .dir("x/sub/", 0o755)
        .dir("x/sub/", 0o755)
        .link(EntryType::Symlink, "x", &target)
        .dir("kept/", 0o755)
        .file("kept/f", b"f", 0o644)
        .tar();
    unpack(&tar, &dest.0).unwrap();
    assert_eq!(
        fs::metadata(outside.0.join("sub")).unwrap().mtime(),
        before,
        "the directory outside got the layer's mtime"
    );
    assert_eq!(
        fs::metadata(dest.0.join("kept")).unwrap().mtime(),
        1_600_000_000
    );
    assert!(
        fs::symlink_metadata(dest.0.join("x"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn huge_mtimes_are_clamped() {
    let dest = TempDir::new("mtime");
    let huge = u64::MAX.to_string();
    let tar = Layer::new()
        .pax(&[("mtime", huge.as_bytes())])
        .file("f", b"f", 0o644)
        .pax(&[("mtime", huge.as_bytes())])
        .dir("d/", 0o755)
        .pax(&[("mtime", huge.as_bytes())])
        .link(EntryType::Symlink, "s", "f")
        .tar();
    unpack(&tar, &dest.0).unwrap();
    assert_eq!(fs::read(dest.0.join("f")).unwrap(), b"f");
}

#[test]
fn huge_extension_headers_are_refused() {
    let dest = TempDir::new("pax-huge");
    let big = vec![b'a'; 2 << 20];
    let tar = Layer::new()
        .pax(&[("comment", &big)])
        .file("f", b"f", 0o644)
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "larger than 1 MiB");

    let dest = TempDir::new("longname-huge");
    let mut tar = Layer::new();
    let h = Layer::header(
        "././@LongLink",
        EntryType::GNULongName,
        big.len() as u64,
        0o644,
    );
    tar.push(h, &big).file("f", b"f", 0o644);
    assert_invalid(unpack(&tar.tar(), &dest.0), "larger than 1 MiB");

    // Large entry data, a large global header and many ordinary extension
    // headers are fine: only one entry's headers count.
    let dest = TempDir::new("pax-fine");
    let mut tar = Layer::new();
    tar.file("big", &big, 0o644);
    let h = Layer::header(
        "././@PaxHeader",
        EntryType::XGlobalHeader,
        big.len() as u64,
        0o644,
    );
    tar.push(h, &big);
    let value = vec![b'v'; 512 << 10];
    for i in 0..8 {
        tar.pax(&[("comment", &value)])
            .file(&format!("f{i}"), b"f", 0o644);
    }
    unpack(&tar.tar(), &dest.0).unwrap();
    assert_eq!(fs::read(dest.0.join("big")).unwrap().len(), big.len());
}

#[test]
fn paths_deeper_than_the_cap_are_refused() {
    let deep = |n: usize| vec!["d"; n].join("/");
    let dest = TempDir::new("deep-ok");
    let path = format!("{}/f", deep(MAX_DEPTH - 1));
    let tar = Layer::new()
        .pax(&[("path", path.as_bytes())])
        .file("placeholder", b"f", 0o644)
        .tar();
    unpack(&tar, &dest.0).unwrap();
    assert_eq!(fs::read(dest.0.join(&path)).unwrap(), b"f");

    let dest = TempDir::new("deep-file");
    let path = format!("{}/f", deep(MAX_DEPTH));
    let tar = Layer::new()
        .pax(&[("path", path.as_bytes())])
        .file("placeholder", b"f", 0o644)
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "at most 256 are accepted");

    let dest = TempDir::new("deep-link");
    let target = format!("{}/f", deep(MAX_DEPTH));
    let tar = Layer::new()
        .pax(&[("linkpath", target.as_bytes())])
        .link(EntryType::Link, "h", "placeholder")
        .tar();
    assert_invalid(unpack(&tar, &dest.0), "at most 256 are accepted");
}

#[test]
fn missing_parents_are_made_and_symlinked_ones_named() {
    let dest = TempDir::new("parents");
    let tar = Layer::new()
        .file("a/b/c/f", b"f", 0o644)
        .file("a/b/x/g", b"g", 0o644)
        .link(EntryType::Symlink, "a/s", "b")
        .file("a/b/c/h", b"h", 0o644)
        .tar();
    unpack(&tar, &dest.0).unwrap();
    assert_eq!(fs::read(dest.0.join("a/b/x/g")).unwrap(), b"g");
    assert_eq!(fs::read(dest.0.join("a/b/c/h")).unwrap(), b"h");
    let tar = Layer::new()
        .dir("a/", 0o755)
        .link(EntryType::Symlink, "a/s", "/tmp")
        .file("a/s/deeper/f", b"f", 0o644)
        .tar();
    assert_invalid(
        unpack(&tar, &TempDir::new("parents-link").0),
        "lies under \"a/s\", which is not a directory",
    );
}
