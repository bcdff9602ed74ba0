//! The installer image of `make image` (`crust_e2e::installer_image`, the
//! library behind `crust-image`): built from debug-stripped copies of the
//! binaries under test, it is a valid OCI layout (index, manifest, config and
//! layer agree with their descriptors; the layer holds exactly the binaries,
//! their libraries and the shared files, and no shell), the same inputs give
//! the same digest, and `skopeo` pushes it to the test registry, from which
//! crustd pulls it and runs its `crustd --version`.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use crust_e2e::cri::{ContainerState, Mount, NamespaceMode, NamespaceOption};
use crust_e2e::image_builder::{
    OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, Platform, sha256_digest,
};
use crust_e2e::installer_image::{self, Inputs};
use crust_e2e::pod_config::{sandbox_security_mut, security_mut};
use crust_e2e::registry::{Registry, RegistryClient};
use crust_e2e::{TestEnv, binaries, cri_log, requirements, run_with_timeout, unique, wait};
use serde_json::Value;

/// The version the image is tagged with and `crustd --version` prints.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest a `skopeo copy` may take.
const PUSH_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn the_installer_image_is_a_valid_oci_image_that_crust_pulls_and_runs() {
    const NAME: &str = "the_installer_image_is_a_valid_oci_image_that_crust_pulls_and_runs";
    for (program, package) in [("skopeo", "skopeo"), ("objcopy", "binutils")] {
        if requirements::find_program(program).is_none() {
            requirements::note_skip(
                &format!("installer_image::{NAME}"),
                &format!("`{program}` is not installed (Debian's {package}; make deps-test)"),
            );
            return;
        }
    }
    // Stripping, two builds (gzip and sha256 in a debug build) and a pull of
    // a ~20 MiB layer take longer than the default limit on a busy machine.
    run_with_timeout(NAME, Duration::from_secs(300), installer_image);
}

async fn installer_image(env: &mut TestEnv) -> Result<()> {
    // Under the test's own directory, which the harness removes whatever happens.
    let work = env.daemon.paths().base.join("installer-image");
    let layout = work.join("layout");
    let built = {
        let (work, layout) = (work.clone(), layout.clone());
        tokio::task::spawn_blocking(move || build_and_check(&work, &layout)).await??
    };

    let registry = Registry::shared()?;
    let repo = format!("installer-image-{}", unique::suffix());
    let reference = format!("{}/{repo}:{VERSION}", registry.addr);
    push(&layout, &reference).await?;
    let pushed = RegistryClient::new(&registry.addr)?
        .get_manifest(&repo, VERSION)
        .await?;
    ensure!(
        pushed.digest == built,
        "the registry holds manifest {} for {reference}, the layout {built}",
        pushed.digest
    );

    env.pull(&reference).await?;
    let pod = env.run_pod("installer-image").await?;
    let mut config = env.container_config(&pod, "crustd", &reference)?;
    config.command = vec![format!("/{}", installer_image::CRUSTD)];
    config.args = vec!["--version".into()];
    let id = env.start_container(&pod, &config).await?;
    let status = env
        .wait_for_state(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(30),
        )
        .await?;
    let log = pod.log_file(&config);
    let expected = format!("crustd {VERSION}");
    let logged = wait::until(
        "crustd --version in the container's log",
        Duration::from_secs(10),
        || async {
            Ok(cri_log::read_log(&log)
                .ok()
                .filter(|records| records.iter().any(|r| r.content == expected)))
        },
    )
    .await;
    ensure!(
        status.exit_code == 0,
        "crustd --version exited {} ({}), log: {:?}",
        status.exit_code,
        status.reason,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    logged.with_context(|| {
        format!(
            "log of crustd --version: {:?}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;

    env.cri.remove_container(&id).await?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    install_from_the_image(env, &reference, &work.join("bin")).await?;
    env.assert_no_leaks()
}

/// The image's own command, as the DaemonSet runs it: a privileged pod in
/// the host's PID namespace with a host root at `/host` that has systemd's
/// marker, runc and a CNI plugin. The installer runs `systemctl` in the
/// mount namespace of the host's PID 1, since the image has none, and
/// copies the image's binaries into that root. No systemd runs here, so the
/// install fails: either the host's systemctl says so, or (on this machine,
/// whose PID 1 hides its namespaces even from root) the installer says it
/// cannot reach the host's and writes nothing. `host_command`'s own test
/// shows a command run through another process's mount namespace.
async fn install_from_the_image(env: &mut TestEnv, reference: &str, bins: &Path) -> Result<()> {
    let host = env.daemon.paths().base.join("installer-host");
    for dir in ["run/systemd/system", "usr/sbin", "opt/cni/bin"] {
        std::fs::create_dir_all(host.join(dir))?;
    }
    for file in ["usr/sbin/runc", "opt/cni/bin/loopback"] {
        std::fs::write(host.join(file), "#!/bin/sh\n")?;
    }
    let mut config = env.pod_config("installer")?;
    let security = sandbox_security_mut(&mut config);
    security.privileged = true;
    security.namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Node as i32,
        ..Default::default()
    });
    let pod = env.run_pod_with(config).await?;
    let mut config = env.container_config(&pod, "install", reference)?;
    let security = security_mut(&mut config);
    security.privileged = true;
    security.namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Node as i32,
        ..Default::default()
    });
    config.mounts.push(Mount {
        container_path: "/host".into(),
        host_path: host.to_string_lossy().into_owned(),
        ..Default::default()
    });
    let id = env.start_container(&pod, &config).await?;
    let status = env
        .wait_for_state(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(60),
        )
        .await?;
    let log = std::fs::read_to_string(pod.log_file(&config)).unwrap_or_default();
    ensure!(
        status.exit_code == 1,
        "the installer exited {}: {log}",
        status.exit_code
    );
    let installed = host.join("usr/local/bin/crustd").exists();
    if log.contains("the host's own could not be reached, /proc/1/ns/mnt") {
        // This machine: refused before anything was written.
        ensure!(
            log.contains("cannot run the host's systemctl; nothing was installed") && !installed,
            "the installer could not reach the host's systemctl, yet: {log}"
        );
    } else {
        // A host whose PID 1 shows its namespaces: its own systemctl ran
        // (the image has none) and refused, as no systemd runs here.
        ensure!(
            log.contains("System has not been booted with systemd"),
            "the installer did not reach the host's systemctl: {log}"
        );
        for name in ["crustd", "crust-shim"] {
            ensure!(
                std::fs::read(host.join("usr/local/bin").join(name))?
                    == std::fs::read(bins.join(name))?,
                "the host's /usr/local/bin/{name} is not the image's; log: {log}"
            );
        }
    }
    env.cri.remove_container(&id).await?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    Ok(())
}

/// Strips the binaries under test into `work/bin`, builds the image into
/// `layout`, checks it, builds it again over it and requires the same
/// bytes; returns the manifest digest.
fn build_and_check(work: &Path, layout: &Path) -> Result<String> {
    let bins = binaries::locate()?;
    let bin_dir = work.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    for (source, name) in [(&bins.crustd, "crustd"), (&bins.shim, "crust-shim")] {
        let output = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(source)
            .arg(bin_dir.join(name))
            .output()
            .context("running objcopy")?;
        ensure!(
            output.status.success(),
            "objcopy --strip-debug {}: {}: {}",
            source.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let inputs = Inputs::new(&bin_dir, VERSION)?;
    let image = installer_image::build_layout(&inputs, layout)?;
    let digest = check_layout(layout, &inputs)?;
    ensure!(
        digest == image.manifest.digest,
        "index.json names {digest}, the build made {}",
        image.manifest.digest
    );
    let index = std::fs::read(layout.join("index.json"))?;

    let again = installer_image::build_layout(&inputs, layout)?;
    ensure!(
        again.manifest.digest == digest,
        "the same inputs gave manifest {} after {digest}",
        again.manifest.digest
    );
    ensure!(
        std::fs::read(layout.join("index.json"))? == index,
        "index.json changed between two builds of the same inputs"
    );
    let blobs = std::fs::read_dir(layout.join("blobs/sha256"))?.count();
    ensure!(
        blobs == 3,
        "the rebuilt layout holds {blobs} blobs, not manifest, config and layer"
    );
    Ok(digest)
}

/// Checks the layout against the OCI image spec and the inputs; returns the
/// manifest digest.
fn check_layout(layout: &Path, inputs: &Inputs) -> Result<String> {
    let oci_layout = read_json(&layout.join("oci-layout"))?;
    ensure!(
        oci_layout["imageLayoutVersion"] == installer_image::LAYOUT_VERSION,
        "oci-layout: {oci_layout}"
    );
    let index = read_json(&layout.join("index.json"))?;
    ensure!(
        index["schemaVersion"] == 2 && index["mediaType"] == OCI_INDEX,
        "index.json: {index}"
    );
    let manifests = index["manifests"]
        .as_array()
        .context("index.json lists no manifests")?;
    ensure!(manifests.len() == 1, "index.json lists {}", manifests.len());
    let descriptor = &manifests[0];
    ensure!(
        descriptor["mediaType"] == OCI_MANIFEST
            && descriptor["annotations"][installer_image::REF_NAME] == VERSION,
        "the index's manifest descriptor: {descriptor}"
    );
    let manifest: Value = serde_json::from_slice(&blob(layout, descriptor)?)?;
    ensure!(
        manifest["schemaVersion"] == 2 && manifest["mediaType"] == OCI_MANIFEST,
        "manifest: {manifest}"
    );
    for (key, value) in [
        ("org.opencontainers.image.version", VERSION),
        ("org.opencontainers.image.title", installer_image::TITLE),
        (
            "org.opencontainers.image.source",
            installer_image::SOURCE_URL,
        ),
    ] {
        ensure!(
            manifest["annotations"][key] == value,
            "manifest annotation {key}: {manifest}"
        );
    }
    ensure!(
        manifest["config"]["mediaType"] == OCI_CONFIG,
        "config descriptor: {}",
        manifest["config"]
    );
    let config: Value = serde_json::from_slice(&blob(layout, &manifest["config"])?)?;
    check_config(&config)?;
    let layers = manifest["layers"]
        .as_array()
        .context("manifest has no layers")?;
    ensure!(layers.len() == 1, "{} layers", layers.len());
    ensure!(
        layers[0]["mediaType"] == OCI_LAYER_GZIP,
        "layer descriptor: {}",
        layers[0]
    );
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&blob(layout, &layers[0])?[..])
        .read_to_end(&mut tar)
        .context("gunzip of the layer")?;
    ensure!(
        config["rootfs"]["diff_ids"] == serde_json::json!([sha256_digest(&tar)]),
        "diff_ids {} are not the layer's",
        config["rootfs"]["diff_ids"]
    );
    check_layer(&tar, inputs)?;
    descriptor["digest"]
        .as_str()
        .map(String::from)
        .context("manifest descriptor without a digest")
}

/// The runtime config: crustd as the entrypoint, `install --host-root /host`
/// as the command, this machine's platform and the labels.
fn check_config(config: &Value) -> Result<()> {
    let platform = Platform::node();
    ensure!(
        config["os"] == "linux" && config["architecture"] == platform.architecture.as_str(),
        "config platform {} / {}",
        config["os"],
        config["architecture"]
    );
    let run = &config["config"];
    ensure!(
        run["Entrypoint"] == serde_json::json!(["/usr/local/bin/crustd"])
            && run["Cmd"] == serde_json::json!(["install", "--host-root", "/host"])
            && run["Env"] == serde_json::json!([installer_image::PATH_ENV])
            && run["Labels"]["org.opencontainers.image.version"] == VERSION
            && run["Labels"]["org.opencontainers.image.source"] == installer_image::SOURCE_URL,
        "image config: {run}"
    );
    Ok(())
}

/// The layer holds exactly the binaries, the libraries ldd names for them,
/// the config and the unit (with the right bytes and modes) and their
/// directories, owned by root with the inputs' mtime; no shell.
fn check_layer(tar: &[u8], inputs: &Inputs) -> Result<()> {
    let mut libraries = BTreeSet::new();
    for name in ["crustd", "crust-shim"] {
        libraries.extend(installer_image::shared_libraries(
            &inputs.bin_dir.join(name),
        )?);
    }
    let names: Vec<String> = libraries
        .iter()
        .filter_map(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    ensure!(
        names.iter().any(|n| n == "libc.so.6") && names.iter().any(|n| n.starts_with("ld-")),
        "ldd names neither libc nor the loader: {libraries:?}"
    );
    let libraries: Vec<PathBuf> = libraries.into_iter().collect();
    let expected = installer_image::expected_paths(&libraries)?;
    let contents = [
        (
            installer_image::CRUSTD,
            std::fs::read(inputs.bin_dir.join("crustd"))?,
            0o755,
        ),
        (
            installer_image::CRUST_SHIM,
            std::fs::read(inputs.bin_dir.join("crust-shim"))?,
            0o755,
        ),
        (
            installer_image::CONFIG,
            installer_image::DEFAULT_CONFIG.as_bytes().to_vec(),
            0o644,
        ),
        (
            installer_image::UNIT,
            std::fs::read(inputs.manifests_dir.join("crust.service"))?,
            0o644,
        ),
    ];

    let mut found = BTreeSet::new();
    let mut archive = tar::Archive::new(tar);
    let mut previous = String::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let header = entry.header();
        ensure!(
            header.uid()? == 0 && header.gid()? == 0 && header.mtime()? == inputs.mtime,
            "{path}: uid {} gid {} mtime {}",
            header.uid()?,
            header.gid()?,
            header.mtime()?
        );
        ensure!(path > previous, "{path} comes after {previous}: not sorted");
        previous = path.clone();
        let mode = header.mode()? & 0o7777;
        let kind = header.entry_type();
        if let Some((_, data, want)) = contents.iter().find(|(p, _, _)| *p == path) {
            let mut got = Vec::new();
            entry.read_to_end(&mut got)?;
            ensure!(
                kind.is_file() && mode == *want && got == *data,
                "{path}: {kind:?} mode {mode:o}, {} bytes, not the {} bytes shipped",
                got.len(),
                data.len()
            );
        } else if libraries
            .iter()
            .any(|l| l.to_string_lossy() == format!("/{path}"))
        {
            let source = std::fs::read(Path::new("/").join(&path))?;
            ensure!(
                kind.is_file() && entry.size() == source.len() as u64,
                "{path}: {kind:?} of {} bytes, the host's has {}",
                entry.size(),
                source.len()
            );
        } else if path == "tmp" {
            ensure!(
                kind.is_dir() && mode == 0o1777,
                "tmp: {kind:?} mode {mode:o}"
            );
        } else if !kind.is_dir() {
            bail!("unexpected {kind:?} {path} in the layer");
        }
        found.insert(path);
    }
    ensure!(
        found == expected,
        "the layer holds {:?} more and lacks {:?}",
        found.difference(&expected).collect::<Vec<_>>(),
        expected.difference(&found).collect::<Vec<_>>()
    );
    for shell in ["bin/sh", "usr/bin/sh", "bin/busybox"] {
        ensure!(!found.contains(shell), "the image holds {shell}");
    }
    Ok(())
}

/// The blob a descriptor names, after checking its size and digest.
fn blob(layout: &Path, descriptor: &Value) -> Result<Vec<u8>> {
    let digest = descriptor["digest"]
        .as_str()
        .with_context(|| format!("descriptor without a digest: {descriptor}"))?;
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("{digest} is not sha256"))?;
    let path = layout.join("blobs/sha256").join(hex);
    let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        descriptor["size"].as_u64() == Some(data.len() as u64),
        "blob {digest} has {} bytes, its descriptor says {}",
        data.len(),
        descriptor["size"]
    );
    ensure!(
        sha256_digest(&data) == digest,
        "blob {digest} hashes to {}",
        sha256_digest(&data)
    );
    Ok(data)
}

fn read_json(path: &Path) -> Result<Value> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("{} is not JSON", path.display()))
}

/// `skopeo copy` of the layout's `VERSION` to `reference` over plain HTTP,
/// as `make image-push SKOPEO_FLAGS=--dest-tls-verify=false` does.
async fn push(layout: &Path, reference: &str) -> Result<()> {
    let mut command = tokio::process::Command::new("skopeo");
    command
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{VERSION}", layout.display()))
        .arg(format!("docker://{reference}"))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(PUSH_LIMIT, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("skopeo copy took longer than {PUSH_LIMIT:?}"))?
        .context("running skopeo")?;
    ensure!(
        output.status.success(),
        "skopeo copy to {reference}: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}
