//! Hostile images and registries, served by a scripted [`FakeRegistry`]:
//! every case is refused with a clear gRPC code and message, leaves nothing
//! half-written in crustd's image store (no ingest file, no unindexed
//! snapshot directory, no image record) and, for the escape attempts,
//! leaves a canary directory outside the store untouched.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::bench::memory::ProcessMemory;
use crust_e2e::crafted::{
    Canary, CraftedImage, CraftedLayer, LayerFormat, RawTar, expect_clean_store,
    expect_pull_refused,
};
use crust_e2e::fake_registry::{FakeRegistry, Reply};
use crust_e2e::image_builder::{OCI_INDEX, OCI_MANIFEST, sha256_digest};
use crust_e2e::{TestEnv, run};
use serde_json::json;
use tonic::Code;

/// A small valid layer tar; `case` makes it (and so the image) unique, so
/// that no case finds blobs an earlier one left in the content store.
fn hello_tar(case: &str) -> Result<Vec<u8>> {
    Ok(RawTar::new()
        .dir("etc/", 0o755)?
        .file("etc/hello", b"hello\n", 0o644)?
        .file("etc/case", case.as_bytes(), 0o644)?
        .finish())
}

fn hello_image(format: LayerFormat, case: &str) -> Result<(CraftedImage, CraftedLayer)> {
    let layer = CraftedLayer::new(&hello_tar(case)?, format)?;
    Ok((CraftedImage::new(std::slice::from_ref(&layer)), layer))
}

/// Serves `image` as `hostile/<case>:1` and requires its pull to fail.
async fn refuse(
    env: &TestEnv,
    fake: &FakeRegistry,
    case: &str,
    image: &CraftedImage,
    code: Code,
    needles: &[&str],
) -> Result<String> {
    let repo = format!("hostile/{case}");
    image.serve(fake, &repo, "1");
    let reference = format!("{}/{repo}:1", fake.host());
    expect_pull_refused(env, &reference, code, needles, case).await
}

/// Blob GETs the fake registry saw for `repo`.
fn blob_gets(fake: &FakeRegistry, repo: &str) -> Vec<String> {
    let prefix = format!("/v2/{repo}/blobs/");
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.starts_with(&prefix))
        .map(|r| r.path)
        .collect()
}

#[test]
fn hostile_manifests_are_refused() {
    run("hostile_manifests_are_refused", hostile_manifests);
}

async fn hostile_manifests(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(None).await?;
    let host = fake.host();
    let manifest_route = |case: &str, reference: &str, reply: Reply| {
        fake.route(
            "GET",
            &format!("/v2/hostile/{case}/manifests/{reference}"),
            reply,
        );
        format!("{host}/hostile/{case}:{reference}")
    };

    let r = manifest_route(
        "not-json",
        "1",
        Reply::ok(OCI_MANIFEST, "<html>sorry</html>"),
    );
    expect_pull_refused(env, &r, Code::InvalidArgument, &["not JSON"], "not JSON").await?;

    let helm = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.cncf.helm.chart.v1+json",
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": sha256_digest(b"x"), "size": 1},
        "layers": [],
    });
    let r = manifest_route(
        "unknown-type",
        "1",
        Reply::ok("application/vnd.cncf.helm.chart.v1+json", helm.to_string()),
    );
    expect_pull_refused(
        env,
        &r,
        Code::InvalidArgument,
        &[
            "application/vnd.cncf.helm.chart.v1+json",
            "not an image manifest",
        ],
        "unknown manifest type",
    )
    .await?;

    let schema1 = json!({
        "schemaVersion": 1, "name": "hostile/schema1", "tag": "1", "architecture": "amd64",
        "fsLayers": [{"blobSum": sha256_digest(b"")}], "history": [], "signatures": [],
    });
    let r = manifest_route(
        "schema1",
        "1",
        Reply::ok(
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            schema1.to_string(),
        ),
    );
    expect_pull_refused(
        env,
        &r,
        Code::Unimplemented,
        &["schema 1", "deprecated"],
        "schema 1 manifest",
    )
    .await?;

    // A pull by digest that gets some other manifest.
    let (image, _) = hello_image(LayerFormat::Gzip, "manifests")?;
    image.serve(&fake, "hostile/wrong-digest", "1");
    let claimed = sha256_digest(b"some other manifest");
    let served = image.manifest_blob();
    fake.route(
        "GET",
        &format!("/v2/hostile/wrong-digest/manifests/{claimed}"),
        Reply::ok(OCI_MANIFEST, served.data.clone()),
    );
    expect_pull_refused(
        env,
        &format!("{host}/hostile/wrong-digest@{claimed}"),
        Code::InvalidArgument,
        &["whose digest is", &served.digest],
        "manifest with the wrong digest",
    )
    .await?;

    // A manifest beyond the 4 MiB cap.
    let mut huge = image.manifest.clone();
    huge["annotations"] = json!({"padding": "x".repeat(5 << 20)});
    let r = manifest_route("huge", "1", Reply::ok(OCI_MANIFEST, huge.to_string()));
    expect_pull_refused(
        env,
        &r,
        Code::InvalidArgument,
        &["larger than", "refusing"],
        "manifest over the size cap",
    )
    .await?;

    // An index whose entry serves a manifest other than the one it names.
    let mut tampered = image.clone();
    tampered.manifest["annotations"] = json!({"tampered": "yes"});
    let named = image.manifest_blob();
    let index = |digest: &str, size: u64| {
        json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                           "platform": {"os": "linux", "architecture": crust_e2e::image_builder::Platform::node().architecture}}],
        })
        .to_string()
    };
    tampered.serve(&fake, "hostile/index-tampered", "unused");
    fake.route(
        "GET",
        &format!("/v2/hostile/index-tampered/manifests/{}", named.digest),
        Reply::ok(OCI_MANIFEST, tampered.manifest_blob().data),
    );
    let r = manifest_route(
        "index-tampered",
        "1",
        Reply::ok(OCI_INDEX, index(&named.digest, named.data.len() as u64)),
    );
    expect_pull_refused(
        env,
        &r,
        Code::InvalidArgument,
        &["hashing to", &named.digest],
        "index entry with the wrong content",
    )
    .await?;

    // An index entry claiming a 1 PiB manifest.
    let r = manifest_route(
        "index-huge-entry",
        "1",
        Reply::ok(OCI_INDEX, index(&named.digest, 1 << 50)),
    );
    expect_pull_refused(
        env,
        &r,
        Code::InvalidArgument,
        &["1125899906842624 bytes", "refusing"],
        "index entry over the size cap",
    )
    .await?;

    // A manifest whose config is not an image config.
    let mut not_image = image.clone();
    not_image.manifest["config"]["mediaType"] = json!("application/vnd.cncf.helm.config.v1+json");
    refuse(
        env,
        &fake,
        "not-an-image",
        &not_image,
        Code::InvalidArgument,
        &["not a container image"],
    )
    .await?;
    ensure!(
        env.cri.list_images().await?.is_empty(),
        "a refused manifest left an image record"
    );
    Ok(())
}

#[test]
fn hostile_blobs_are_refused() {
    run("hostile_blobs_are_refused", hostile_blobs);
}

async fn hostile_blobs(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(None).await?;

    // A config that does not hash to its digest.
    let (mut image, _) = hello_image(LayerFormat::Gzip, "config-digest")?;
    let config_digest = image.config_digest();
    let mut forged = image.config.clone();
    let last = forged.len() - 2;
    forged[last] = b' ';
    image.blobs.insert(config_digest.clone(), forged);
    refuse(
        env,
        &fake,
        "config-digest",
        &image,
        Code::InvalidArgument,
        &["hashing to", &config_digest],
    )
    .await?;

    // A layer that does not hash to its digest (same size, one byte changed).
    let (mut image, layer) = hello_image(LayerFormat::Tar, "layer-digest")?;
    let mut forged = layer.data.clone();
    let at = forged
        .windows(6)
        .position(|w| w == b"hello\n")
        .context("the file content is not in the plain tar")?;
    forged[at] = b'j';
    image.blobs.insert(layer.digest(), forged);
    refuse(
        env,
        &fake,
        "layer-digest",
        &image,
        Code::InvalidArgument,
        &["does not match its digest", &layer.digest()],
    )
    .await?;

    // Truncated layers: the connection cut mid-body, a body shorter than
    // its Content-Length, and an honest Content-Length shorter than the
    // descriptor.
    let big_tar = RawTar::new()
        .file("noise", &noise(256 << 10), 0o644)?
        .finish();
    let big = CraftedLayer::new(&big_tar, LayerFormat::Gzip)?;
    let image = CraftedImage::new(std::slice::from_ref(&big));
    let half = big.data.len() / 2;
    let cases: [(&str, Reply, Code, &str); 3] = [
        (
            "cut",
            Reply {
                cut_after: Some(half),
                ..Reply::ok("application/octet-stream", big.data.clone())
            },
            Code::Unavailable,
            "broke off",
        ),
        (
            "short-body",
            Reply {
                declared_length: Some(big.data.len() as u64),
                ..Reply::ok("application/octet-stream", big.data[..half].to_vec())
            },
            Code::Unavailable,
            "broke off",
        ),
        (
            "short-length",
            Reply::ok("application/octet-stream", big.data[..half].to_vec()),
            Code::InvalidArgument,
            "where the manifest says",
        ),
    ];
    for (case, reply, code, needle) in cases {
        let repo = format!("hostile/{case}");
        image.serve(&fake, &repo, "1");
        fake.route("GET", &format!("/v2/{repo}/blobs/{}", big.digest()), reply);
        let message = expect_pull_refused(
            env,
            &format!("{}/{repo}:1", fake.host()),
            code,
            &[needle, &big.digest()],
            case,
        )
        .await?;
        ensure!(
            code != Code::Unavailable || message.contains(&format!("of {} bytes", big.data.len())),
            "{case}: {message:?} does not say how much arrived"
        );
    }

    // Absurd sizes are refused before anything is fetched.
    let (image, _) = hello_image(LayerFormat::Gzip, "sizes")?;
    let mut peta = image.clone();
    peta.manifest["layers"][0]["size"] = json!(1u64 << 50);
    refuse(
        env,
        &fake,
        "peta-layer",
        &peta,
        Code::InvalidArgument,
        &["1125899906842624 bytes", "more than the"],
    )
    .await?;
    let mut big_config = image.clone();
    big_config.manifest["config"]["size"] = json!(9u64 << 20);
    refuse(
        env,
        &fake,
        "big-config",
        &big_config,
        Code::InvalidArgument,
        &["image config is 9437184 bytes"],
    )
    .await?;
    let mut many = image.clone();
    let one = many.manifest["layers"][0].clone();
    many.manifest["layers"] = json!(vec![one; 5000]);
    refuse(
        env,
        &fake,
        "many-layers",
        &many,
        Code::InvalidArgument,
        &["5000 layers", "at most 128"],
    )
    .await?;
    for repo in [
        "hostile/peta-layer",
        "hostile/big-config",
        "hostile/many-layers",
    ] {
        let gets = blob_gets(&fake, repo);
        ensure!(gets.is_empty(), "{repo}: blobs were fetched: {gets:?}");
    }
    let mut many_diff_ids = image.clone();
    let mut config = image.config_json()?;
    config["rootfs"]["diff_ids"] = json!(vec![sha256_digest(b"x"); 5000]);
    many_diff_ids.set_config(&config);
    refuse(
        env,
        &fake,
        "many-diff-ids",
        &many_diff_ids,
        Code::InvalidArgument,
        &["config lists 5000 layers", "at most 128"],
    )
    .await?;

    // The config lies about the layer's content.
    let mut lying = image.clone();
    let mut config = image.config_json()?;
    config["rootfs"]["diff_ids"] = json!([sha256_digest(b"not this layer")]);
    lying.set_config(&config);
    refuse(
        env,
        &fake,
        "diff-id",
        &lying,
        Code::InvalidArgument,
        &["hashes to", &sha256_digest(b"not this layer")],
    )
    .await?;

    // Not a layer, and not what it says it is.
    let mut text = image.clone();
    text.manifest["layers"][0]["mediaType"] = json!("text/plain");
    refuse(
        env,
        &fake,
        "text-layer",
        &text,
        Code::InvalidArgument,
        &["\"text/plain\" is not a container image layer"],
    )
    .await?;
    let garbage = CraftedLayer {
        media_type: LayerFormat::Gzip.media_type().into(),
        data: b"\x1f\x8b\x08\x00 this is not gzip at all".to_vec(),
        diff_id: sha256_digest(b""),
        urls: Vec::new(),
    };
    refuse(
        env,
        &fake,
        "garbage-layer",
        &CraftedImage::new(&[garbage]),
        Code::InvalidArgument,
        &["not valid gzip"],
    )
    .await?;

    // One bad layer stops the others at once (a stalled one would take the
    // default 60 s progress timeout), and their half-written files go too.
    let slow = CraftedLayer::new(
        &RawTar::new()
            .file("slow", &noise(384 << 10), 0o644)?
            .finish(),
        LayerFormat::Gzip,
    )?;
    let bad = CraftedLayer {
        media_type: LayerFormat::Gzip.media_type().into(),
        data: b"\x1f\x8b\x08\x00 not gzip either".to_vec(),
        diff_id: sha256_digest(b"bad"),
        urls: Vec::new(),
    };
    let image = CraftedImage::new(&[slow.clone(), bad]);
    image.serve(&fake, "hostile/one-bad-layer", "1");
    fake.route(
        "GET",
        &format!("/v2/hostile/one-bad-layer/blobs/{}", slow.digest()),
        Reply {
            stall_after: Some(slow.data.len() / 2),
            ..Reply::ok("application/octet-stream", slow.data.clone())
        },
    );
    let started = Instant::now();
    expect_pull_refused(
        env,
        &format!("{}/hostile/one-bad-layer:1", fake.host()),
        Code::InvalidArgument,
        &["not valid gzip"],
        "one bad layer among slow ones",
    )
    .await?;
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "the failed pull waited {:?} for the stalled layer",
        started.elapsed()
    );
    ensure!(
        env.cri.list_images().await?.is_empty(),
        "a refused pull left an image record"
    );
    Ok(())
}

/// `n` bytes that do not compress.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn layers_cannot_escape_their_snapshot() {
    run("layers_cannot_escape_their_snapshot", escapes);
}

async fn escapes(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(None).await?;
    let canary = Canary::new("escape")?;
    let abs = canary.dir.display().to_string();
    let rel = canary.relative();
    let up = "../".repeat(12);
    ensure!(
        up.len() + rel.len() + 10 <= 100,
        "the canary path {abs} is too long for a tar name"
    );

    type Build = Box<dyn Fn(&mut RawTar) -> Result<()>>;
    let cases: Vec<(&str, Build, &str)> = vec![
        (
            "dotdot",
            Box::new({
                let name = format!("{up}{rel}/pwned");
                move |t| t.file(&name, b"pwned", 0o644).map(drop)
            }),
            "escapes the layer directory",
        ),
        (
            "symlink-parent",
            Box::new({
                let abs = abs.clone();
                move |t| {
                    t.symlink("evil", &abs)?
                        .file("evil/pwned", b"pwned", 0o644)?;
                    Ok(())
                }
            }),
            "not a directory in this layer",
        ),
        (
            "symlink-root",
            Box::new({
                let name = format!("evil/{rel}/pwned");
                move |t| {
                    t.symlink("evil", "/")?.file(&name, b"pwned", 0o644)?;
                    Ok(())
                }
            }),
            "not a directory in this layer",
        ),
        (
            "symlink-chain",
            Box::new({
                let abs = abs.clone();
                move |t| {
                    t.symlink("b", &abs)?
                        .symlink("a", "b")?
                        .dir("a/sub/", 0o777)?;
                    Ok(())
                }
            }),
            "not a directory in this layer",
        ),
        (
            "hardlink-absolute",
            Box::new({
                let target = format!("{abs}/canary");
                move |t| t.hardlink("h", &target).map(drop)
            }),
            "not a file in this layer",
        ),
        (
            "hardlink-dotdot",
            Box::new({
                let target = format!("{up}{rel}/canary");
                move |t| t.hardlink("h", &target).map(drop)
            }),
            "outside the layer",
        ),
        (
            "whiteout-dotdot",
            Box::new(|t| t.file("../.wh.canary", b"", 0o644).map(drop)),
            "escapes the layer directory",
        ),
        (
            "whiteout-dots",
            Box::new(|t| t.file(".wh...", b"", 0o644).map(drop)),
            "whiteout of nothing",
        ),
        (
            "whiteout-through-symlink",
            Box::new({
                let abs = abs.clone();
                move |t| {
                    t.symlink("evil", &abs)?
                        .file("evil/.wh.canary", b"", 0o644)?;
                    Ok(())
                }
            }),
            "not a directory in this layer",
        ),
        (
            "opaque-through-symlink",
            Box::new({
                let abs = abs.clone();
                move |t| {
                    t.symlink("evil", &abs)?
                        .file("evil/.wh..wh..opq", b"", 0o644)?;
                    Ok(())
                }
            }),
            "not a directory in this layer",
        ),
    ];
    for (case, build, needle) in &cases {
        let mut tar = RawTar::new();
        build(&mut tar)?;
        let layer = CraftedLayer::new(&tar.finish(), LayerFormat::Gzip)?;
        refuse(
            env,
            &fake,
            case,
            &CraftedImage::new(std::slice::from_ref(&layer)),
            Code::InvalidArgument,
            &[needle, &layer.digest()],
        )
        .await?;
        canary.check(case)?;
    }

    // What tar tools accept stays inside: an absolute name lands under the
    // snapshot, a file replaces a symlink to the outside instead of writing
    // through it, a hardlink to such a symlink links the symlink.
    let absolute = format!("/{rel}/pwned");
    let target = format!("{abs}/canary");
    let tar = RawTar::new()
        .file(&absolute, b"inside", 0o644)?
        .symlink("replaced", &target)?
        .file("replaced", b"pwned", 0o644)?
        .symlink("link", &target)?
        .hardlink("hard", "link")?
        .finish();
    let layer = CraftedLayer::new(&tar, LayerFormat::Gzip)?;
    let image = CraftedImage::new(std::slice::from_ref(&layer));
    image.serve(&fake, "hostile/confined", "1");
    let reference = format!("{}/hostile/confined:1", fake.host());
    let id = env.pull(&reference).await?;
    ensure!(
        id == image.config_digest(),
        "pulled {id}, expected {}",
        image.config_digest()
    );
    canary.check("confined entries")?;
    let root = env.daemon.paths().root.clone();
    let mut landed = Vec::new();
    for entry in std::fs::read_dir(root.join("snapshots"))? {
        let candidate = entry?.path().join(&rel).join("pwned");
        if std::fs::read(&candidate).is_ok_and(|c| c == b"inside") {
            landed.push(candidate);
        }
    }
    ensure!(
        landed.len() == 1,
        "the absolutely named file is not inside exactly one snapshot: {landed:?}"
    );
    env.cri.remove_image(&reference).await?;
    expect_clean_store(&root, "after removing the confined image")?;
    canary.check("after removing the confined image")?;

    // Directory times are applied last: a directory the layer later
    // replaced with a symlink to the outside is skipped, not followed.
    let tar = RawTar::new()
        .dir("x/", 0o755)?
        .dir("x/sub/", 0o755)?
        .symlink("x", &abs)?
        .finish();
    let layer = CraftedLayer::new(&tar, LayerFormat::Gzip)?;
    let image = CraftedImage::new(std::slice::from_ref(&layer));
    image.serve(&fake, "hostile/dir-times", "1");
    let reference = format!("{}/hostile/dir-times:1", fake.host());
    env.pull(&reference).await?;
    canary.check("directory times through a later symlink")?;
    env.cri.remove_image(&reference).await?;
    Ok(())
}

#[test]
fn decompression_bombs_are_stopped() {
    run("decompression_bombs_are_stopped", bombs);
}

/// A layer blob of `format` that expands to a tar holding one file of
/// `mib` MiB of zeros, built from repeated compressed members (gzip) or
/// frames (zstd) so that making it is cheap.
fn bomb(format: LayerFormat, mib: usize) -> Result<Vec<u8>> {
    let header = bomb_header(mib)?;
    let zeros = match format {
        LayerFormat::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            std::io::Write::write_all(&mut gz, &vec![0u8; 1 << 20])?;
            gz.finish()?
        }
        _ => crust_e2e::crafted::compress(&vec![0u8; 1 << 20], format)?,
    };
    let mut out = crust_e2e::crafted::compress(header.as_bytes(), format)?;
    for _ in 0..mib {
        out.extend_from_slice(&zeros);
    }
    out.extend(crust_e2e::crafted::compress(&[0u8; 1024], format)?);
    Ok(out)
}

/// The tar header of [`bomb`]'s one file.
fn bomb_header(mib: usize) -> Result<tar::Header> {
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros")?;
    header.set_size((mib as u64) << 20);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(header)
}

/// The diff id of [`bomb`]`(_, mib)`: the sha256 of its uncompressed tar.
fn bomb_diff_id(mib: usize) -> Result<String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(bomb_header(mib)?.as_bytes());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..mib {
        hasher.update(&zeros);
    }
    hasher.update([0u8; 1024]);
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

async fn bombs(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(None).await?;
    for (case, format) in [
        ("gzip-bomb", LayerFormat::Gzip),
        ("zstd-bomb", LayerFormat::Zstd),
    ] {
        let data = bomb(format, 512)?;
        ensure!(
            data.len() < 1 << 20,
            "{case}: the bomb is {} bytes",
            data.len()
        );
        let layer = CraftedLayer {
            media_type: format.media_type().into(),
            data,
            // Never reached: the expansion limit stops the layer first.
            diff_id: sha256_digest(b"512 MiB of zeros"),
            urls: Vec::new(),
        };
        let started = Instant::now();
        refuse(
            env,
            &fake,
            case,
            &CraftedImage::new(std::slice::from_ref(&layer)),
            Code::InvalidArgument,
            &["decompression bomb", &layer.digest()],
        )
        .await?;
        eprintln!("{case} refused in {:?}", started.elapsed());
    }
    Ok(())
}

#[test]
fn registry_errors_map_to_grpc_codes() {
    run("registry_errors_map_to_grpc_codes", registry_errors);
}

async fn registry_errors(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(None).await?;
    let host = fake.host();
    let codes = [
        (401, "UNAUTHORIZED", Code::Unauthenticated),
        (403, "DENIED", Code::PermissionDenied),
        (404, "MANIFEST_UNKNOWN", Code::NotFound),
        (429, "TOOMANYREQUESTS", Code::Unavailable),
        (500, "INTERNAL_ERROR", Code::Unavailable),
    ];
    for (status, registry_code, code) in codes {
        let case = format!("manifest-{status}");
        let text = format!("the registry's own words for {status}");
        fake.route(
            "GET",
            &format!("/v2/hostile/{case}/manifests/1"),
            Reply::error(status, registry_code, &text),
        );
        expect_pull_refused(
            env,
            &format!("{host}/hostile/{case}:1"),
            code,
            &[&text],
            &case,
        )
        .await?;
    }
    // The same for blobs: the config, then a layer.
    for (status, registry_code, code) in codes {
        for blob in ["config", "layer"] {
            let case = format!("{blob}-{status}");
            let (image, layer) = hello_image(LayerFormat::Gzip, &case)?;
            let digest = if blob == "config" {
                image.config_digest()
            } else {
                layer.digest()
            };
            let repo = format!("hostile/{case}");
            let text = format!("the registry's own words for the {blob} ({status})");
            image.serve(&fake, &repo, "1");
            fake.route(
                "GET",
                &format!("/v2/{repo}/blobs/{digest}"),
                Reply::error(status, registry_code, &text),
            );
            expect_pull_refused(env, &format!("{host}/{repo}:1"), code, &[&text], &case).await?;
        }
    }
    Ok(())
}

#[test]
fn stalled_transfers_time_out() {
    run("stalled_transfers_time_out", stalls);
}

async fn stalls(env: &mut TestEnv) -> Result<()> {
    env.reconfigure("pull_progress_timeout = 2\n").await?;
    let fake = FakeRegistry::start(None).await?;
    let host = fake.host();
    let big_tar = RawTar::new()
        .file("noise", &noise(512 << 10), 0o644)?
        .finish();
    let big = CraftedLayer::new(&big_tar, LayerFormat::Gzip)?;
    let image = CraftedImage::new(std::slice::from_ref(&big));

    // A layer that stops halfway, connection open.
    image.serve(&fake, "hostile/stall-layer", "1");
    fake.route(
        "GET",
        &format!("/v2/hostile/stall-layer/blobs/{}", big.digest()),
        Reply {
            stall_after: Some(big.data.len() / 2),
            ..Reply::ok("application/octet-stream", big.data.clone())
        },
    );
    let started = Instant::now();
    expect_pull_refused(
        env,
        &format!("{host}/hostile/stall-layer:1"),
        Code::DeadlineExceeded,
        &[&big.digest(), &host, "stalled", "sent nothing for 2s"],
        "stalled layer",
    )
    .await?;
    let took = started.elapsed();
    ensure!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "the stalled layer failed after {took:?}, expected about 2s"
    );

    // A config that never starts, and a manifest that never answers.
    let (image, _) = hello_image(LayerFormat::Gzip, "stall-config")?;
    image.serve(&fake, "hostile/stall-config", "1");
    fake.route(
        "GET",
        &format!("/v2/hostile/stall-config/blobs/{}", image.config_digest()),
        Reply {
            stall_after: Some(0),
            ..Reply::ok("application/octet-stream", image.config.clone())
        },
    );
    expect_pull_refused(
        env,
        &format!("{host}/hostile/stall-config:1"),
        Code::DeadlineExceeded,
        &[&host, "config", "stalled"],
        "stalled config",
    )
    .await?;
    fake.route(
        "GET",
        "/v2/hostile/stall-manifest/manifests/1",
        Reply {
            delay: Duration::from_secs(30),
            ..Reply::ok(OCI_MANIFEST, image.manifest_blob().data)
        },
    );
    expect_pull_refused(
        env,
        &format!("{host}/hostile/stall-manifest:1"),
        Code::DeadlineExceeded,
        &[&host, "manifest", "within 2s"],
        "silent manifest",
    )
    .await?;

    // With the registry well again, the same image pulls.
    let image = CraftedImage::new(std::slice::from_ref(&big));
    image.serve(&fake, "hostile/stall-layer", "1");
    env.pull(&format!("{host}/hostile/stall-layer:1")).await?;
    Ok(())
}

#[test]
fn image_users_that_only_look_numeric_are_refused() {
    run(
        "image_users_that_only_look_numeric_are_refused",
        numeric_looking_users,
    );
}

/// An image's `User` such as `-1` or ` 1000`, with a passwd line giving
/// that name uid 0: ImageStatus must not call it a non-zero uid (kubelet's
/// runAsNonRoot check trusts that uid), and CreateContainer must not run
/// it as root.
async fn numeric_looking_users(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(None).await?;
    let users = ["-1", " 1000", "1000 ", "4294967296", "+1"];
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
    for user in users {
        passwd.push_str(&format!("{user}:x:0:0::/:/bin/sh\n"));
    }
    let busybox = CraftedLayer::new(&crust_e2e::fixtures::busybox_layer()?, LayerFormat::Gzip)?;
    let passwd_layer = CraftedLayer::new(
        &RawTar::new()
            .dir("etc/", 0o755)?
            .file("etc/passwd", passwd.as_bytes(), 0o644)?
            .finish(),
        LayerFormat::Gzip,
    )?;
    let base = CraftedImage::new(&[busybox, passwd_layer]);
    let pod = env.run_pod("numeric-looking-users").await?;
    for (n, user) in users.iter().enumerate() {
        let mut image = base.clone();
        let mut config = image.config_json()?;
        config["config"]["User"] = json!(user);
        config["config"]["Cmd"] = json!(["sleep", "3600"]);
        image.set_config(&config);
        let repo = format!("hostile/user-{n}");
        image.serve(&fake, &repo, "1");
        let reference = format!("{}/{repo}:1", fake.host());
        env.pull(&reference).await?;
        let status = env
            .cri
            .image_status(&reference)
            .await?
            .with_context(|| format!("ImageStatus {reference} found nothing"))?;
        ensure!(
            status.uid.is_none() && status.username == *user,
            "User {user:?}: ImageStatus reports uid {:?}, username {:?}; expected no uid and the user as a username (which kubelet's runAsNonRoot check refuses)",
            status.uid,
            status.username
        );
        let config = env.container_config(&pod, &format!("user-{n}"), &reference)?;
        let outcome = env
            .cri
            .create_container(&pod.id, &config, &pod.config)
            .await;
        if let Ok(id) = &outcome {
            env.cri.start_container(id).await?;
            let uid = env.sh(id, "id -u").await?;
            ensure!(uid.trim() != "0", "User {user:?} runs as root");
        }
        if let Err(status) = &outcome {
            ensure!(
                status.message().contains("neither a numeric id"),
                "User {user:?}: the refusal does not say why: {:?}",
                status.message()
            );
        }
        expect_code(
            outcome,
            Code::InvalidArgument,
            &format!("CreateContainer with the image's User {user:?}"),
        )?;
    }
    Ok(())
}

#[test]
fn stored_blobs_must_be_the_size_their_descriptor_says() {
    run(
        "stored_blobs_must_be_the_size_their_descriptor_says",
        stored_blob_sizes,
    );
}

/// `image` with `config` (any bytes) as its config blob.
fn with_raw_config(image: &CraftedImage, config: &[u8]) -> CraftedImage {
    let mut image = image.clone();
    image.blobs.remove(&image.config_digest());
    image.config = config.to_vec();
    let digest = sha256_digest(config);
    image.manifest["config"]["digest"] = json!(digest);
    image.manifest["config"]["size"] = json!(config.len());
    image.blobs.insert(digest, config.to_vec());
    image
}

/// A blob in the content store is not fetched again, so a descriptor
/// naming a stored blob with a larger size (which raises the layer's
/// decompression limit) is refused, and a config is stored only once it
/// parses.
async fn stored_blob_sizes(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(None).await?;
    // 100 MiB of zeros: more than the 64 MiB its blob may expand to.
    let mib = 100;
    let data = bomb(LayerFormat::Gzip, mib)?;
    let bomb_config = with_raw_config(&CraftedImage::new(&[]), &data);
    refuse(
        env,
        &fake,
        "bomb-config",
        &bomb_config,
        Code::InvalidArgument,
        &["not valid JSON"],
    )
    .await?;
    // The same blob as a layer whose descriptor claims 2 MiB (a 200 MiB
    // limit); its diff id is right, so only the size can stop it.
    let layer = CraftedLayer {
        media_type: LayerFormat::Gzip.media_type().into(),
        data,
        diff_id: bomb_diff_id(mib)?,
        urls: Vec::new(),
    };
    let mut inflated = CraftedImage::new(std::slice::from_ref(&layer));
    inflated.manifest["layers"][0]["size"] = json!(2 << 20);
    refuse(
        env,
        &fake,
        "bomb-inflated",
        &inflated,
        Code::InvalidArgument,
        &["2097152"],
    )
    .await?;

    // A stored layer and a stored config named with sizes that are not theirs.
    let bottom = CraftedLayer::new(&hello_tar("stored-bottom")?, LayerFormat::Gzip)?;
    let top = CraftedLayer::new(&hello_tar("stored-top")?, LayerFormat::Gzip)?;
    let both = CraftedImage::new(&[bottom, top.clone()]);
    both.serve(&fake, "hostile/stored", "1");
    env.pull(&format!("{}/hostile/stored:1", fake.host()))
        .await?;
    let mut top_alone = CraftedImage::new(std::slice::from_ref(&top));
    let claimed = top.data.len() + 1000;
    top_alone.manifest["layers"][0]["size"] = json!(claimed);
    refuse(
        env,
        &fake,
        "stored-layer-size",
        &top_alone,
        Code::InvalidArgument,
        &["stored blob", &claimed.to_string(), &top.digest()],
    )
    .await?;
    let mut config_size = both.clone();
    let claimed = both.config.len() + 1;
    config_size.manifest["config"]["size"] = json!(claimed);
    refuse(
        env,
        &fake,
        "stored-config-size",
        &config_size,
        Code::InvalidArgument,
        &["stored blob", &claimed.to_string()],
    )
    .await?;
    Ok(())
}

#[test]
fn huge_tar_extension_headers_are_refused() {
    run(
        "huge_tar_extension_headers_are_refused",
        huge_extension_headers,
    );
}

/// A layer whose first entry is a PAX extension header of 200 MiB of zeros
/// (which the tar reader would hold in memory whole), followed by enough
/// incompressible data that the layer's decompression limit (100 times
/// its blob) is no obstacle: refused quickly, without crustd's memory
/// growing by the header's size.
async fn huge_extension_headers(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(None).await?;
    let mib = 200;
    let mut header = tar::Header::new_gnu();
    header.set_path("././@PaxHeader")?;
    header.set_size((mib as u64) << 20);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_cksum();
    let mut data = crust_e2e::crafted::compress(header.as_bytes(), LayerFormat::Gzip)?;
    let zeros = crust_e2e::crafted::compress(&vec![0u8; 1 << 20], LayerFormat::Gzip)?;
    for _ in 0..mib {
        data.extend_from_slice(&zeros);
    }
    let rest = RawTar::new()
        .file("noise", &noise(3 << 20), 0o644)?
        .finish();
    data.extend(crust_e2e::crafted::compress(&rest, LayerFormat::Gzip)?);
    ensure!(
        // crustd lets a layer expand to 100 times its blob.
        data.len() as u64 * 100 > (mib as u64) << 20,
        "the blob is too small for its limit to let the header through"
    );
    let layer = CraftedLayer {
        media_type: LayerFormat::Gzip.media_type().into(),
        data,
        diff_id: sha256_digest(b"never reached"),
        urls: Vec::new(),
    };
    let pid = env.daemon.pid().context("crustd's pid")?;
    let base = ProcessMemory::rss_mib(pid)?;
    let image = CraftedImage::new(std::slice::from_ref(&layer));
    let digest = layer.digest();
    let needles = ["tar extension header", "larger than 1 MiB", &digest];
    let refused = refuse(
        env,
        &fake,
        "huge-pax-header",
        &image,
        Code::InvalidArgument,
        &needles,
    );
    tokio::pin!(refused);
    let started = Instant::now();
    let mut peak = base;
    let outcome = loop {
        tokio::select! {
            outcome = &mut refused => break outcome,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                peak = peak.max(ProcessMemory::rss_mib(pid)?);
            }
        }
    };
    eprintln!(
        "crustd RSS {base:.1} MiB before, {peak:.1} MiB at peak; refused in {:?}",
        started.elapsed()
    );
    outcome?;
    ensure!(
        peak - base < 100.0,
        "crustd grew from {base:.1} to {peak:.1} MiB reading one tar header"
    );
    Ok(())
}
