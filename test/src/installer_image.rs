//! The installer image that `make image` builds (`crust-image`): crustd,
//! crust-shim, the shared libraries they load, the default config and the
//! systemd unit in one deterministic gzip layer, written as an OCI image
//! layout directory that `skopeo copy oci:<dir>:<version> ...` pushes.
//!
//! The image needs nothing from the host and holds no shell: its entrypoint
//! is crustd itself, run as `crustd install --host-root /host`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::image_builder::{
    Blob, Image, ImageMeta, Layer, LayerBuilder, ManifestFormat, OCI_INDEX, Platform, RunConfig,
    build_image_with,
};

/// Where crustd is in the image.
pub const CRUSTD: &str = "usr/local/bin/crustd";
/// Where crust-shim is in the image.
pub const CRUST_SHIM: &str = "usr/local/bin/crust-shim";
/// Where the default config is in the image.
pub const CONFIG: &str = "usr/local/share/crust/config.toml";
/// Where the systemd unit is in the image.
pub const UNIT: &str = "usr/local/share/crust/crust.service";
/// The mount point of the node's root filesystem (the DaemonSet's hostPath).
pub const HOST_ROOT: &str = "/host";
/// The directories the image holds besides the parents of its files, with
/// their modes.
pub const DIRECTORIES: [(&str, u32); 3] = [("etc", 0o755), ("host", 0o755), ("tmp", 0o1777)];
/// The index annotation that names a manifest in an OCI layout (the tag in
/// `oci:<dir>:<tag>`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Where the source lives, for the `org.opencontainers.image.source` label.
pub const SOURCE_URL: &str = "https://github.com/crust-runtime/crust";
/// The image's title label.
pub const TITLE: &str = "crust";
/// `PATH` in the image config.
pub const PATH_ENV: &str = "PATH=/usr/local/bin:/usr/bin:/bin";
/// crustd's embedded default config, the same file `crustd config default` prints.
pub const DEFAULT_CONFIG: &str = include_str!("../../cri/src/default_config.toml");
/// The `imageLayoutVersion` written to `oci-layout`.
pub const LAYOUT_VERSION: &str = "1.0.0";

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The directory holding the `crustd` and `crust-shim` to ship.
    pub bin_dir: PathBuf,
    /// The repository's `manifests/` (for `crust.service`).
    pub manifests_dir: PathBuf,
    /// The version: the image's tag and `org.opencontainers.image.version`.
    pub version: String,
    /// Modification time of every entry, seconds since the epoch; also the
    /// image's `created` time.
    pub mtime: u64,
}

impl Inputs {
    /// Inputs for the binaries in `bin_dir`, with this repository's
    /// `manifests/` and the mtime of [`source_date_epoch`].
    pub fn new(bin_dir: &Path, version: &str) -> Result<Self> {
        Ok(Self {
            bin_dir: bin_dir.to_path_buf(),
            manifests_dir: default_manifests_dir(),
            version: version.to_string(),
            mtime: source_date_epoch()?,
        })
    }
}

/// This repository's `manifests/` directory (as of the build of this crate).
pub fn default_manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("/"))
        .join("manifests")
}

/// `$SOURCE_DATE_EPOCH` when set (reproducible-builds.org), else 0.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")),
        _ => Ok(0),
    }
}

/// Builds the image in memory.
pub fn build(inputs: &Inputs) -> Result<Image> {
    ensure!(
        !inputs.version.is_empty() && is_tag(&inputs.version),
        "version {:?} is not usable as an image tag",
        inputs.version
    );
    let tar = layer_tar(inputs)?;
    let layer = Layer::gzip(tar, flate2::Compression::default())?;
    let labels: BTreeMap<String, String> = [
        ("org.opencontainers.image.version", inputs.version.as_str()),
        ("org.opencontainers.image.title", TITLE),
        ("org.opencontainers.image.source", SOURCE_URL),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let run = RunConfig {
        env: vec![PATH_ENV.into()],
        entrypoint: vec![format!("/{CRUSTD}")],
        cmd: vec!["install".into(), "--host-root".into(), HOST_ROOT.into()],
        labels: labels.clone(),
        ..RunConfig::default()
    };
    let meta = ImageMeta {
        created: rfc3339(inputs.mtime)?,
        created_by: format!("crust-image {}", inputs.version),
        annotations: labels,
    };
    Ok(build_image_with(
        ManifestFormat::Oci,
        Platform::node(),
        &run,
        std::slice::from_ref(&layer),
        &meta,
    ))
}

/// Builds the image and writes it as an OCI layout at `out`, tagged with the
/// version; returns the image.
pub fn build_layout(inputs: &Inputs, out: &Path) -> Result<Image> {
    let image = build(inputs)?;
    write_layout(&image, &inputs.version, out)?;
    Ok(image)
}

/// The paths (relative, without a leading `/`) the layer holds, sorted:
/// every file, every directory, given the shared libraries `libraries`
/// (absolute paths, as [`shared_libraries`] returns them).
pub fn expected_paths(libraries: &[PathBuf]) -> Result<BTreeSet<String>> {
    let mut entries = Entries::default();
    for file in [CRUSTD, CRUST_SHIM, CONFIG, UNIT] {
        entries.file(file, 0o644, Vec::new())?;
    }
    for lib in libraries {
        entries.file(&image_path(lib)?, 0o644, Vec::new())?;
    }
    for (dir, mode) in DIRECTORIES {
        entries.dir(dir, mode)?;
    }
    Ok(entries.0.into_keys().collect())
}

/// The uncompressed layer: entries sorted by path, owner 0:0, all with
/// `inputs.mtime`.
fn layer_tar(inputs: &Inputs) -> Result<Vec<u8>> {
    let mut entries = Entries::default();
    let mut libraries = BTreeSet::new();
    for (name, path) in [("crustd", CRUSTD), ("crust-shim", CRUST_SHIM)] {
        let binary = inputs.bin_dir.join(name);
        let data = std::fs::read(&binary)
            .with_context(|| format!("reading {} (build it first)", binary.display()))?;
        entries.file(path, 0o755, data)?;
        libraries.extend(shared_libraries(&binary)?);
    }
    for lib in &libraries {
        let data = std::fs::read(lib).with_context(|| format!("reading {}", lib.display()))?;
        let mode = std::fs::metadata(lib)
            .with_context(|| format!("stat {}", lib.display()))?
            .permissions()
            .mode()
            & 0o755;
        entries.file(&image_path(lib)?, mode, data)?;
    }
    entries.file(CONFIG, 0o644, DEFAULT_CONFIG.as_bytes().to_vec())?;
    let unit = inputs.manifests_dir.join("crust.service");
    let unit_data = std::fs::read(&unit).with_context(|| format!("reading {}", unit.display()))?;
    entries.file(UNIT, 0o644, unit_data)?;
    for (dir, mode) in DIRECTORIES {
        entries.dir(dir, mode)?;
    }
    let mut builder = LayerBuilder::with_mtime(inputs.mtime);
    for (path, entry) in &entries.0 {
        match entry {
            Entry::Dir(mode) => builder.dir(path, *mode)?,
            Entry::File(mode, data) => builder.file(path, *mode, data)?,
        };
    }
    builder.finish()
}

/// One layer entry.
enum Entry {
    Dir(u32),
    File(u32, Vec<u8>),
}

/// The layer's entries by path; sorted, a directory comes before what it holds.
#[derive(Default)]
struct Entries(BTreeMap<String, Entry>);

impl Entries {
    /// Adds a file, and its parent directories (0755) that are not there yet.
    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<()> {
        self.parents(path)?;
        ensure!(
            !self.0.contains_key(path),
            "{path} would be in the image twice"
        );
        self.0.insert(path.to_string(), Entry::File(mode, data));
        Ok(())
    }

    /// Adds a directory (and its parents), or sets the mode of one added as a
    /// parent before.
    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.parents(path)?;
        match self.0.get_mut(path) {
            Some(Entry::File(..)) => bail!("{path} is a file and a directory"),
            Some(Entry::Dir(m)) => *m = mode,
            None => {
                self.0.insert(path.to_string(), Entry::Dir(mode));
            }
        }
        Ok(())
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        let mut parent = String::new();
        let mut parts = path.split('/').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                break;
            }
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.0.get(&parent) {
                Some(Entry::File(..)) => bail!("{parent} is a file and a directory"),
                Some(Entry::Dir(_)) => {}
                None => {
                    self.0.insert(parent.clone(), Entry::Dir(0o755));
                }
            }
        }
        Ok(())
    }
}

/// `/lib/x/libc.so.6` → `lib/x/libc.so.6`; refuses relative paths and `..`.
fn image_path(absolute: &Path) -> Result<String> {
    ensure!(
        absolute.is_absolute()
            && absolute
                .components()
                .skip(1)
                .all(|c| matches!(c, Component::Normal(_))),
        "{} is not a plain absolute path",
        absolute.display()
    );
    Ok(absolute
        .to_string_lossy()
        .trim_start_matches('/')
        .to_string())
}

/// The shared libraries `binary` loads, the dynamic loader included, as
/// `ldd` reports their paths (none for a static binary).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .context("running ldd (glibc's libc-bin)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if is_static(&stdout) || is_static(&stderr) {
        return Ok(Vec::new());
    }
    ensure!(
        output.status.success(),
        "ldd {}: {}: {}",
        binary.display(),
        output.status,
        stderr.trim()
    );
    parse_ldd(&stdout).with_context(|| format!("ldd {}", binary.display()))
}

fn is_static(ldd_output: &str) -> bool {
    ldd_output.contains("not a dynamic executable") || ldd_output.contains("statically linked")
}

/// The library paths in `ldd` output: `name => /path (0x...)` and the
/// loader's `/path (0x...)`; the vDSO (no path) is skipped, and a library
/// ldd did not find is an error.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let location = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                ensure!(
                    !rest.starts_with("not found"),
                    "library {} not found",
                    name.trim()
                );
                rest
            }
            None => line,
        };
        let path = location.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// Writes `image` as an OCI image layout at `out` (`oci-layout`,
/// `index.json` naming its manifest `ref_name`, `blobs/sha256/`), replacing
/// a layout that is there. A non-empty `out` that is not a layout is left
/// alone (an error), so a mistyped path never loses a directory.
pub fn write_layout(image: &Image, ref_name: &str, out: &Path) -> Result<()> {
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        ensure!(
            empty || out.join("oci-layout").is_file(),
            "{} exists and is not an OCI image layout: not replacing it",
            out.display()
        );
    }
    let name = out
        .file_name()
        .with_context(|| format!("{} has no file name", out.display()))?;
    let staging = out.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = write_layout_files(image, ref_name, &staging).and_then(|()| {
        if out.exists() {
            std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
        }
        std::fs::rename(&staging, out)
            .with_context(|| format!("renaming {} to {}", staging.display(), out.display()))
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}

fn write_layout_files(image: &Image, ref_name: &str, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    for blob in image.layers.iter().chain([&image.config, &image.manifest]) {
        write_blob(&blobs, blob)?;
    }
    let layout = json!({ "imageLayoutVersion": LAYOUT_VERSION });
    write(&dir.join("oci-layout"), layout.to_string().as_bytes())?;
    let mut descriptor = image.manifest.descriptor();
    descriptor["annotations"] = json!({ REF_NAME: ref_name });
    descriptor["platform"] =
        json!({ "architecture": image.platform.architecture, "os": image.platform.os });
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor] });
    write(&dir.join("index.json"), index.to_string().as_bytes())
}

fn write_blob(blobs: &Path, blob: &Blob) -> Result<()> {
    let hex = blob
        .digest
        .strip_prefix("sha256:")
        .with_context(|| format!("blob digest {} is not sha256", blob.digest))?;
    write(&blobs.join(hex), &blob.data)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Whether `s` is a valid tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(s: &str) -> bool {
    s.len() <= 128
        && s.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphanumeric() || c == '_' || (i > 0 && (c == '.' || c == '-'))
        })
}

/// Seconds since the epoch as RFC 3339 in UTC (`1970-01-01T00:00:00Z`).
fn rfc3339(seconds: u64) -> Result<String> {
    let seconds = i64::try_from(seconds).context("timestamp out of range")?;
    Ok(jiff::Timestamp::from_second(seconds)
        .context("timestamp out of range")?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_and_loader_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f9a)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f9b)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f9c)\n";
        let paths = parse_ldd(out).unwrap();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn expected_paths_hold_parents_and_directories() {
        let paths = expected_paths(&[PathBuf::from("/lib64/ld-linux-x86-64.so.2")]).unwrap();
        for path in [
            "usr",
            "usr/local",
            "usr/local/bin",
            CRUSTD,
            CRUST_SHIM,
            "usr/local/share",
            "usr/local/share/crust",
            CONFIG,
            UNIT,
            "lib64",
            "lib64/ld-linux-x86-64.so.2",
            "etc",
            "host",
            "tmp",
        ] {
            assert!(paths.contains(path), "{path} missing from {paths:?}");
        }
        assert_eq!(paths.len(), 14, "{paths:?}");
        assert!(image_path(Path::new("/lib/../etc/x")).is_err());
        assert!(image_path(Path::new("lib/x")).is_err());
    }

    /// A directory under the temp dir, removed when dropped.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_layout_is_replaced_and_anything_else_left_alone() {
        use crate::image_builder::{Compression, build_image};
        let scratch = Scratch(
            std::env::temp_dir().join(format!("crust-image-unit-{}", crate::unique::suffix())),
        );
        let out = scratch.0.join("image");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("precious"), b"x").unwrap();
        let layer = Layer::new(LayerBuilder::new().finish().unwrap(), Compression::Gzip).unwrap();
        let image = build_image(
            ManifestFormat::Oci,
            Platform::node(),
            &RunConfig::default(),
            &[layer],
        );
        assert!(write_layout(&image, "1.0", &out).is_err());
        assert!(out.join("precious").exists());
        std::fs::remove_file(out.join("precious")).unwrap();
        write_layout(&image, "1.0", &out).unwrap();
        write_layout(&image, "2.0", &out).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "2.0");
        assert_eq!(index["manifests"][0]["digest"], image.manifest.digest);
        assert_eq!(
            std::fs::read_dir(out.join("blobs/sha256")).unwrap().count(),
            3
        );
        let names: Vec<_> = std::fs::read_dir(&scratch.0).unwrap().collect();
        assert_eq!(names.len(), 1, "staging directories left: {names:?}");
    }

    #[test]
    fn tags_and_times() {
        assert!(is_tag("0.1.0") && is_tag("v1_2-rc.3"));
        assert!(!is_tag(".1") && !is_tag("a/b") && !is_tag("a:b"));
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
    }
}
