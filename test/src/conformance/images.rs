//! The images critest pulls, built offline and pushed to the loopback registry
//! under their upstream repository paths (`e2e-test-images/busybox`,
//! `k8s-staging-cri-tools/test-image-1`, `pause`, ...). crustd reaches them
//! through `hosts.toml` files that send `registry.k8s.io`, `gcr.io` and
//! `public.ecr.aws` to that registry, so the images keep their upstream names
//! and critest's checks on `RepoTags` hold.
//!
//! What each image must hold is listed in `../shared/tools/README.md`. The base
//! is Debian's dynamically linked busybox (its shell looks applets up in `PATH`,
//! unlike `busybox-static`, so a masked `/bin/ls` really fails) with a hard
//! link per applet in `/bin` (masking a symlink would mask busybox itself),
//! plus the host's `pgrep` and `ipcs`, which busybox lacks; the programs of
//! the web-server, pause and no-new-privileges images are `crust-workload`.
//! Every dynamically linked program comes with the host libraries it loads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use super::programs::{add_libraries, add_parents, shared_libraries};
use crate::fixtures::IMAGE_PATH;
use crate::image_builder::{
    Compression, Image, Layer, LayerBuilder, ManifestFormat, Platform, RunConfig, build_image,
};
use crate::registry::RegistryClient;
use crate::requirements::find_program;

/// The registries critest pulls from; each is mirrored to the test registry.
pub const MIRRORED_HOSTS: [&str; 3] = ["registry.k8s.io", "gcr.io", "public.ecr.aws"];

/// critest's default container image.
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// Environment variable naming Debian's dynamically linked busybox binary
/// (`bin/busybox` of the `busybox` package, unpacked by `make conformance`).
pub const BUSYBOX_ENV: &str = "CRUST_CONFORMANCE_BUSYBOX";

/// The host files the images are made of.
#[derive(Debug, Clone)]
pub struct ImageParts {
    /// Debian's dynamically linked busybox.
    pub busybox: PathBuf,
    /// `crust-workload`, the programs of the web-server, pause and
    /// no-new-privileges images.
    pub workload: PathBuf,
    /// The host's `pgrep` (procps).
    pub pgrep: PathBuf,
    /// The host's `ipcs` (util-linux).
    pub ipcs: PathBuf,
}

impl ImageParts {
    /// Finds the parts: busybox from [`BUSYBOX_ENV`], `crust-workload` in the
    /// directory of the crust binaries, `pgrep` and `ipcs` on the host.
    pub fn locate(bin_dir: &Path) -> Result<Self> {
        let busybox = std::env::var_os(BUSYBOX_ENV)
            .map(PathBuf::from)
            .with_context(|| {
                format!(
                    "{BUSYBOX_ENV} is not set: it names Debian's dynamically linked busybox \
                 (`make conformance` unpacks the `busybox` package and sets it)"
                )
            })?;
        ensure!(
            busybox.is_file(),
            "{BUSYBOX_ENV}={} is not a file",
            busybox.display()
        );
        let workload = bin_dir.join("crust-workload");
        ensure!(
            workload.is_file(),
            "{} not found: run `cargo build --workspace` first",
            workload.display()
        );
        let host = |name: &str, package: &str| {
            find_program(name)
                .with_context(|| format!("`{name}` is not installed (Debian package {package})"))
        };
        Ok(Self {
            busybox,
            workload,
            pgrep: host("pgrep", "procps")?,
            ipcs: host("ipcs", "util-linux")?,
        })
    }
}

/// One image to push: where it goes and what it is.
struct Entry {
    /// Full upstream reference, `host/repository:tag`.
    reference: String,
    image: Image,
}

/// Builds every image critest pulls and pushes it to the registry `client`
/// talks to. Returns the references pushed.
pub async fn push_all(client: &RegistryClient, parts: &ImageParts) -> Result<Vec<String>> {
    let entries = build_all(parts)?;
    let mut pushed = Vec::new();
    for entry in entries {
        let (repository, tag) = registry_path(&entry.reference)?;
        client
            .push_image(&repository, Some(&tag), &entry.image)
            .await
            .with_context(|| format!("pushing {}", entry.reference))?;
        pushed.push(entry.reference);
    }
    Ok(pushed)
}

/// Splits `host/repository:tag` into the repository path (without the host)
/// and the tag.
fn registry_path(reference: &str) -> Result<(String, String)> {
    let (_, path) = reference
        .split_once('/')
        .with_context(|| format!("{reference} has no registry host"))?;
    let (repository, tag) = path
        .rsplit_once(':')
        .with_context(|| format!("{reference} has no tag"))?;
    Ok((repository.to_string(), tag.to_string()))
}

fn build_all(parts: &ImageParts) -> Result<Vec<Entry>> {
    let libraries =
        shared_libraries(&[&parts.busybox, &parts.pgrep, &parts.ipcs, &parts.workload])?;
    let mut made = BTreeSet::new();
    let mut libs = LayerBuilder::new();
    add_libraries(&mut libs, &mut made, &libraries)?;
    let libs = Layer::new(libs.finish()?, Compression::Gzip)?;
    let base = Layer::new(base_layer(parts)?, Compression::Gzip)?;
    let workload = std::fs::read(&parts.workload)
        .with_context(|| format!("reading {}", parts.workload.display()))?;

    let shell = RunConfig {
        env: vec![IMAGE_PATH.into()],
        cmd: vec!["sh".into()],
        ..RunConfig::default()
    };
    let on_base = |extra: Vec<Layer>, run: &RunConfig| {
        let mut layers = vec![libs.clone(), base.clone()];
        layers.extend(extra);
        build_image(ManifestFormat::Docker, Platform::node(), run, &layers)
    };
    let marked =
        |marker: &str| -> Result<Image> { Ok(on_base(vec![marker_layer(marker)?], &shell)) };
    let nginx = |listen: &str| -> Result<Image> {
        let mut layer = LayerBuilder::new();
        for dir in ["usr", "usr/sbin", "etc", "etc/nginx"] {
            layer.dir(dir, 0o755)?;
        }
        layer.file("usr/sbin/nginx", 0o755, &workload)?;
        layer.file("etc/nginx/listen", 0o644, format!("{listen}\n").as_bytes())?;
        let run = RunConfig {
            env: vec![IMAGE_PATH.into()],
            cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            stop_signal: Some("SIGQUIT".into()),
            ..RunConfig::default()
        };
        Ok(on_base(
            vec![Layer::new(layer.finish()?, Compression::Gzip)?],
            &run,
        ))
    };
    let with_user = |user: &str| {
        on_base(
            Vec::new(),
            &RunConfig {
                user: Some(user.into()),
                ..shell.clone()
            },
        )
    };

    let mut entries = Vec::new();
    let mut add = |reference: String, image: Image| entries.push(Entry { reference, image });

    add(BUSYBOX.into(), on_base(Vec::new(), &shell));
    add(
        "registry.k8s.io/e2e-test-images/nginx:1.14-2".into(),
        nginx("0.0.0.0:80")?,
    );
    add(
        format!(
            "gcr.io/k8s-staging-cri-tools/hostnet-nginx-{}:latest",
            Platform::node().architecture
        ),
        nginx("127.0.0.1:12003")?,
    );
    add(
        "registry.k8s.io/e2e-test-images/httpd:2.4.39-4".into(),
        on_base(
            vec![program_layer(
                "usr/local/bin/httpd-foreground",
                0o755,
                &workload,
            )?],
            &RunConfig {
                env: vec![IMAGE_PATH.into()],
                cmd: vec!["httpd-foreground".into()],
                stop_signal: Some("SIGWINCH".into()),
                ..RunConfig::default()
            },
        ),
    );
    add(
        "registry.k8s.io/e2e-test-images/nonewprivs:1.3".into(),
        on_base(
            vec![program_layer(
                "usr/local/bin/nonewprivs",
                0o4755,
                &workload,
            )?],
            &RunConfig {
                env: vec![IMAGE_PATH.into()],
                entrypoint: vec!["/usr/local/bin/nonewprivs".into()],
                ..RunConfig::default()
            },
        ),
    );
    let pause = build_image(
        ManifestFormat::Docker,
        Platform::node(),
        &RunConfig {
            entrypoint: vec!["/pause".into()],
            user: Some("65535:65535".into()),
            ..RunConfig::default()
        },
        &[libs.clone(), program_layer("pause", 0o755, &workload)?],
    );
    for tag in ["3.10", "3.10.1", "3.9"] {
        add(format!("registry.k8s.io/pause:{tag}"), pause.clone());
    }

    let cri_tools = "gcr.io/k8s-staging-cri-tools";
    for (name, user) in [
        ("user-uid", "1002"),
        ("user-username", "www-data"),
        ("user-uid-group", "1003:1004"),
        ("user-username-group", "www-data:1004"),
    ] {
        add(
            format!("{cri_tools}/test-image-{name}:latest"),
            with_user(user),
        );
    }
    add(
        format!("{cri_tools}/test-image-predefined-group:latest"),
        on_base(
            vec![predefined_group_layer()?],
            &RunConfig {
                user: Some("1000".into()),
                ..shell.clone()
            },
        ),
    );
    for name in ["1", "2", "3", "latest"] {
        add(
            format!("{cri_tools}/test-image-{name}:latest"),
            marked(&format!("test-image-{name}"))?,
        );
    }
    let tags = marked("test-image-tags")?;
    for tag in ["1", "2", "3"] {
        add(format!("{cri_tools}/test-image-tags:{tag}"), tags.clone());
    }
    for tag in ["test", "all"] {
        add(
            format!("{cri_tools}/test-image-tag:{tag}"),
            marked(&format!("test-image-tag-{tag}"))?,
        );
    }
    for tag in ["1.35.0-glibc", "1-uclibc", "1", "1-glibc", "1-musl"] {
        add(
            format!("public.ecr.aws/docker/library/busybox:{tag}"),
            marked(&format!("busybox-{tag}"))?,
        );
    }
    Ok(entries)
}

/// The busybox layer: Debian's dynamic busybox with a hard link per applet in
/// `/bin`, the host's `pgrep` and `ipcs`, users and groups, and the top-level
/// directories a container expects.
fn base_layer(parts: &ImageParts) -> Result<Vec<u8>> {
    let mut layer = LayerBuilder::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
        ("var", 0o755),
        ("var/run", 0o755),
        ("var/www", 0o755),
    ] {
        layer.dir(dir, mode)?;
    }
    let busybox = std::fs::read(&parts.busybox)
        .with_context(|| format!("reading {}", parts.busybox.display()))?;
    layer.file("bin/busybox", 0o755, &busybox)?;
    for applet in applets(&parts.busybox)? {
        if !["busybox", "pgrep", "ipcs"].contains(&applet.as_str()) {
            layer.hardlink(&format!("bin/{applet}"), "bin/busybox")?;
        }
    }
    for (name, program) in [("pgrep", &parts.pgrep), ("ipcs", &parts.ipcs)] {
        let bytes =
            std::fs::read(program).with_context(|| format!("reading {}", program.display()))?;
        layer.file(&format!("bin/{name}"), 0o755, &bytes)?;
    }
    layer.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n\
          daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
          www-data:x:33:33:www-data:/var/www:/bin/false\n\
          nobody:x:65534:65534:nobody:/home:/bin/false\n",
    )?;
    layer.file(
        "etc/group",
        0o644,
        b"root:x:0:\ndaemon:x:1:\nwww-data:x:33:\nnogroup:x:65534:\n",
    )?;
    layer.finish()
}

/// The applet names `busybox --list` prints.
fn applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(String::from)
        .collect())
}

/// A layer holding one program at `path` with permission bits `mode`.
fn program_layer(path: &str, mode: u32, bytes: &[u8]) -> Result<Layer> {
    let mut layer = LayerBuilder::new();
    add_parents(&mut layer, &mut BTreeSet::new(), path)?;
    layer.file(path, mode, bytes)?;
    Layer::new(layer.finish()?, Compression::Gzip)
}

/// A layer holding `/<marker>`, which makes an image distinct from the others.
fn marker_layer(marker: &str) -> Result<Layer> {
    let mut layer = LayerBuilder::new();
    layer.file(marker, 0o644, format!("{marker}\n").as_bytes())?;
    Layer::new(layer.finish()?, Compression::Gzip)
}

/// `default-user` (uid and gid 1000), member of `group-defined-in-image`
/// (gid 50000) in the image's /etc/group.
fn predefined_group_layer() -> Result<Layer> {
    let mut layer = LayerBuilder::new();
    layer.dir("etc", 0o755)?;
    layer.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n\
          default-user:x:1000:1000:default-user:/home:/bin/sh\n\
          nobody:x:65534:65534:nobody:/home:/bin/false\n",
    )?;
    layer.file(
        "etc/group",
        0o644,
        b"root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\nnogroup:x:65534:\n",
    )?;
    Layer::new(layer.finish()?, Compression::Gzip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_paths() {
        assert_eq!(
            registry_path("registry.k8s.io/e2e-test-images/busybox:1.29-2").unwrap(),
            ("e2e-test-images/busybox".into(), "1.29-2".into())
        );
        assert_eq!(
            registry_path("registry.k8s.io/pause:3.10").unwrap(),
            ("pause".into(), "3.10".into())
        );
        assert!(registry_path("busybox").is_err());
    }
}
