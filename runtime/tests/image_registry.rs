//! Pulls through `ImageStore` from a real registry (Debian's `docker-registry`)
//! started on a loopback port, holding images this test builds and pushes.
//!
//! Needs root (whiteouts, chown) and /usr/bin/docker-registry and
//! /usr/bin/busybox (`make test` installs them); without them it says why it skips.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crust_runtime::Error;
use crust_runtime::image::{ImageOptions, ImageStore, Platform, RegistryAuth};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

const REGISTRY: &str = "/usr/bin/docker-registry";
const BUSYBOX: &str = "/usr/bin/busybox";

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The registry child process, killed (by its own handle) on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_registry(dir: &Path) -> Registry {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("config.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .unwrap();
    let registry = Registry { child, addr };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = client
            .get(format!("http://{}/v2/", registry.addr))
            .send()
            .await
            && r.status().is_success()
        {
            return registry;
        }
        assert!(Instant::now() < deadline, "registry did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pushes blobs and manifests with the distribution API.
struct Pusher {
    http: reqwest::Client,
    base: String,
}

impl Pusher {
    async fn blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha(data);
        let r = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "start upload");
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.base)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let r = self
            .http
            .put(format!("{url}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            201,
            "finish upload: {:?}",
            r.text().await
        );
        digest
    }

    async fn mount(&self, repo: &str, from: &str, digest: &str) {
        let r = self
            .http
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}",
                self.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "mount {digest}");
    }

    async fn manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let r = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            201,
            "put manifest: {:?}",
            r.text().await
        );
        sha(body)
    }
}

/// A tar layer built from (path, kind) entries.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Built {
    config_digest: String,
    config_size: u64,
    layers: Vec<(String, u64, &'static str)>,
    diff_ids: Vec<String>,
}

impl Built {
    fn manifest(&self, oci: bool) -> (Vec<u8>, &'static str) {
        let (mt, ct) = if oci {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            )
        } else {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            )
        };
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|(d, s, t)| {
                let t = if oci {
                    *t
                } else if t.ends_with("gzip") {
                    "application/vnd.docker.image.rootfs.diff.tar.gzip"
                } else {
                    "application/vnd.docker.image.rootfs.diff.tar"
                };
                json!({"mediaType": t, "digest": d, "size": s})
            })
            .collect();
        let m = json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": ct, "digest": self.config_digest, "size": self.config_size},
            "layers": layers,
        });
        (serde_json::to_vec(&m).unwrap(), mt)
    }

    fn size(&self) -> u64 {
        self.config_size + self.layers.iter().map(|l| l.1).sum::<u64>()
    }
}

async fn build_image(pusher: &Pusher, repo: &str, layers: &[(Vec<u8>, bool)], cmd: &str) -> Built {
    let mut built = Built {
        config_digest: String::new(),
        config_size: 0,
        layers: Vec::new(),
        diff_ids: Vec::new(),
    };
    for (tar, compress) in layers {
        built.diff_ids.push(sha(tar));
        let (blob, mt) = if *compress {
            (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (tar.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let d = pusher.blob(repo, &blob).await;
        built.layers.push((d, blob.len() as u64, mt));
    }
    let host = Platform::host();
    let config = json!({
        "architecture": host.architecture,
        "os": "linux",
        "config": {
            "User": "1000:1000",
            "Env": ["PATH=/bin", "GREETING=hi"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": [cmd],
            "WorkingDir": "/var",
            "StopSignal": "SIGQUIT",
            "Labels": {"org.example": "crust"},
            "ExposedPorts": {"8080/tcp": {}},
            "Volumes": {"/data": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": built.diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    built.config_digest = pusher.blob(repo, &config).await;
    built.config_size = config.len() as u64;
    built
}

fn have_prerequisites() -> bool {
    let missing: Vec<_> = [REGISTRY, BUSYBOX]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        eprintln!("skipping: {missing:?} not installed");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root for whiteouts and ownership");
        return false;
    }
    true
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_real_registry() {
    if !have_prerequisites() {
        return;
    }
    let tmp = TempDir(std::env::temp_dir().join(format!("crust-image-it-{}", std::process::id())));
    fs::create_dir_all(&tmp.0).unwrap();
    let registry = start_registry(&tmp.0).await;
    let addr = registry.addr.clone();
    let pusher = Pusher {
        http: reqwest::Client::new(),
        base: format!("http://{addr}"),
    };

    // Image A: busybox, a whiteout layer, an uncompressed layer.
    let busybox = fs::read(BUSYBOX).unwrap();
    let base = tar(&[
        E::Dir("bin"),
        E::File("bin/busybox", &busybox, 0o755),
        E::Symlink("bin/sh", "busybox"),
        E::Dir("etc"),
        E::File("etc/hello", b"hello\n", 0o644),
        E::Dir("var"),
        E::File("var/keep", b"old\n", 0o644),
    ]);
    let upper = tar(&[
        E::Dir("etc"),
        E::File("etc/.wh.hello", b"", 0o644),
        E::Dir("var"),
        E::File("var/.wh..wh..opq", b"", 0o644),
        E::File("var/new", b"new\n", 0o644),
        E::File("bin/su-thing", b"x", 0o4755),
    ]);
    let plain = tar(&[E::File("top.txt", b"top\n", 0o600)]);
    let a = build_image(
        &pusher,
        "test/busybox",
        &[(base.clone(), true), (upper, true), (plain, false)],
        "echo a",
    )
    .await;
    let (a_manifest, a_mt) = a.manifest(true);
    let a_manifest_digest = pusher
        .manifest("test/busybox", &sha(&a_manifest), a_mt, &a_manifest)
        .await;
    let host = Platform::host();
    let mut platform = json!({"os": "linux", "architecture": host.architecture});
    if let Some(v) = &host.variant {
        platform["variant"] = json!(v);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": a_mt, "digest": a_manifest_digest, "size": a_manifest.len(),
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": a_mt, "digest": a_manifest_digest, "size": a_manifest.len(), "platform": platform},
        ],
    }))
    .unwrap();
    let index_digest = pusher
        .manifest(
            "test/busybox",
            "1.0",
            "application/vnd.oci.image.index.v1+json",
            &index,
        )
        .await;
    // The same image as a Docker schema 2 manifest under another tag.
    let (a_docker, a_docker_mt) = a.manifest(false);
    let a_docker_digest = pusher
        .manifest("test/busybox", "single", a_docker_mt, &a_docker)
        .await;

    // Image B in another repository shares A's base layer.
    pusher
        .mount("test/other", "test/busybox", &a.layers[0].0)
        .await;
    let b_top = tar(&[E::File("b.txt", b"b\n", 0o644)]);
    let b = build_image(
        &pusher,
        "test/other",
        &[(base.clone(), true), (b_top, true)],
        "echo b",
    )
    .await;
    let (b_manifest, b_mt) = b.manifest(true);
    let b_manifest_digest = pusher.manifest("test/other", "1", b_mt, &b_manifest).await;
    // An index with no entry for this node.
    let foreign = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": b_mt, "digest": b_manifest_digest, "size": b_manifest.len(),
                       "platform": {"os": "linux", "architecture": "s390x"}}],
    }))
    .unwrap();
    pusher
        .manifest(
            "test/other",
            "foreign",
            "application/vnd.oci.image.index.v1+json",
            &foreign,
        )
        .await;

    let root = tmp.0.join("root");
    let store = Arc::new(ImageStore::open(&root, ImageOptions::default()).unwrap());
    let auth = RegistryAuth::default();
    let a_ref = format!("{addr}/test/busybox:1.0");
    let b_ref = format!("{addr}/test/other:1");

    // Concurrent pulls of the same image and of one sharing a layer.
    let (p1, p2, p3) = tokio::join!(
        store.pull(&a_ref, &auth),
        store.pull(&a_ref, &auth),
        store.pull(&b_ref, &auth)
    );
    let (img_a, img_a2, img_b) = (p1.unwrap(), p2.unwrap(), p3.unwrap());
    assert_eq!(img_a.id, a.config_digest);
    assert_eq!(img_a2.id, a.config_digest);
    assert_eq!(img_b.id, b.config_digest);
    assert_eq!(img_a.repo_tags, vec![a_ref.clone()]);
    assert_eq!(
        img_a.repo_digests,
        vec![format!("{addr}/test/busybox@{index_digest}")]
    );
    assert_eq!(img_a.manifest_digests, vec![a_manifest_digest.clone()]);
    assert_eq!(img_a.size, a.size());
    let c = &img_a.config;
    assert_eq!(c.user, "1000:1000");
    assert_eq!(c.env, vec!["PATH=/bin", "GREETING=hi"]);
    assert_eq!(c.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(c.cmd, vec!["echo a"]);
    assert_eq!(c.working_dir, "/var");
    assert_eq!(c.stop_signal, "SIGQUIT");
    assert_eq!(
        c.labels,
        BTreeMap::from([("org.example".to_string(), "crust".to_string())])
    );
    assert_eq!(c.exposed_ports, vec!["8080/tcp"]);
    assert_eq!(c.volumes, vec!["/data"]);
    assert!(c.raw.contains("\"diff_ids\""));

    // Snapshots: topmost first, base shared with B, contents as layered.
    let dirs = store.layer_dirs(&img_a).unwrap();
    assert_eq!(dirs.len(), 3);
    let b_dirs = store.layer_dirs(&img_b).unwrap();
    assert_eq!(b_dirs.len(), 2);
    assert_eq!(dirs[2], b_dirs[1], "the shared base layer is unpacked once");
    assert_eq!(count(&root.join("snapshots/by-chain")), 4);
    for d in dirs.iter().chain(&b_dirs) {
        assert!(d.starts_with(root.join("snapshots")));
        assert!(
            d.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .parse::<u64>()
                .is_ok(),
            "{}",
            d.display()
        );
    }
    assert_eq!(fs::read(dirs[2].join("bin/busybox")).unwrap(), busybox);
    assert_eq!(
        fs::read_link(dirs[2].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let wh = fs::symlink_metadata(dirs[1].join("etc/hello")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        fs::symlink_metadata(dirs[1].join("bin/su-thing"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert_eq!(fs::read(dirs[0].join("top.txt")).unwrap(), b"top\n");
    assert_eq!(fs::read(b_dirs[0].join("b.txt")).unwrap(), b"b\n");
    // content: index, manifest, config, 3 layers of A; manifest, config, 1 own layer of B.
    assert_eq!(count(&root.join("content/blobs/sha256")), 9);
    assert_eq!(count(&root.join("content/ingest")), 0);
    overlay_check(&dirs, &tmp.0);

    // Lookups.
    let short = &img_a.id[7..19];
    for name in [
        img_a.id.clone(),
        short.to_string(),
        format!("sha256:{short}"),
        a_ref.clone(),
        format!("{addr}/test/busybox@{index_digest}"),
    ] {
        assert_eq!(
            store.get(&name).map(|i| i.id),
            Some(img_a.id.clone()),
            "{name}"
        );
    }
    assert!(store.get(&format!("{addr}/test/busybox:2.0")).is_none());
    assert!(store.get("NOT A REF").is_none());
    assert!(store.get("ab").is_none());
    assert_eq!(store.list().len(), 2);

    // By digest: present, no network needed, same record.
    let by_digest = store
        .pull(&format!("{addr}/test/busybox@{index_digest}"), &auth)
        .await
        .unwrap();
    assert_eq!(by_digest.id, img_a.id);
    // Another tag of the same image adds the tag and the digest.
    let single = store
        .pull(&format!("{addr}/test/busybox:single"), &auth)
        .await
        .unwrap();
    assert_eq!(single.id, img_a.id);
    assert_eq!(
        single.repo_tags,
        vec![a_ref.clone(), format!("{addr}/test/busybox:single")]
    );
    assert_eq!(
        single.repo_digests,
        vec![
            format!("{addr}/test/busybox@{index_digest}"),
            format!("{addr}/test/busybox@{a_docker_digest}")
        ]
    );
    assert_eq!(store.list().len(), 2);

    // Errors name the problem.
    match store
        .pull(&format!("{addr}/test/busybox:nope"), &auth)
        .await
    {
        Err(Error::NotFound(m)) => assert!(
            m.contains("manifest unknown") && m.contains("test/busybox:nope"),
            "{m}"
        ),
        other => panic!("missing tag: {other:?}"),
    }
    match store
        .pull(&format!("{addr}/test/other:foreign"), &auth)
        .await
    {
        Err(Error::NotFound(m)) => assert!(m.contains("linux/s390x"), "{m}"),
        other => panic!("foreign platform: {other:?}"),
    }
    match store.pull("Bad/Ref", &auth).await {
        Err(Error::InvalidArgument(_)) => {}
        other => panic!("bad reference: {other:?}"),
    }
    match store.pull("127.0.0.1:1/nothing:here", &auth).await {
        Err(Error::Unavailable(m)) => assert!(m.contains("127.0.0.1:1"), "{m}"),
        other => panic!("unreachable registry: {other:?}"),
    }

    // A config whose diff id does not match its layer: the pull fails and
    // leaves nothing half-written.
    let c_gz = gzip(&tar(&[E::File("c.txt", b"c\n", 0o644)]));
    let c_layer = pusher.blob("test/bad", &c_gz).await;
    let bad_config = serde_json::to_vec(&json!({
        "architecture": host.architecture, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(b"wrong")]},
    }))
    .unwrap();
    let bad_config_digest = pusher.blob("test/bad", &bad_config).await;
    let bad_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": bad_config_digest, "size": bad_config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": c_layer, "size": c_gz.len()}],
    }))
    .unwrap();
    pusher
        .manifest(
            "test/bad",
            "1",
            "application/vnd.oci.image.manifest.v1+json",
            &bad_manifest,
        )
        .await;
    match store.pull(&format!("{addr}/test/bad:1"), &auth).await {
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains("hashes to") && m.contains(&c_layer), "{m}")
        }
        other => panic!("diff id mismatch: {other:?}"),
    }
    assert_clean(&root);
    assert!(
        !root
            .join("content/blobs/sha256")
            .join(&c_layer[7..])
            .exists()
    );

    // A pull cancelled halfway (kubelet's deadline) leaves nothing behind either.
    let mut x = 0x9e3779b97f4a7c15u64;
    let noise: Vec<u8> = (0..(24 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let big = build_image(
        &pusher,
        "test/big",
        &[(tar(&[E::File("noise", &noise, 0o644)]), true)],
        "big",
    )
    .await;
    let (big_manifest, big_mt) = big.manifest(true);
    pusher
        .manifest("test/big", "1", big_mt, &big_manifest)
        .await;
    let big_ref = format!("{addr}/test/big:1");
    let cancelled =
        tokio::time::timeout(Duration::from_millis(150), store.pull(&big_ref, &auth)).await;
    eprintln!("cancelled pull finished in time: {}", cancelled.is_ok());
    // The unpacker notices the cancel between chunks: give it a moment (about
    // one second in a debug build on a busy machine) to remove its files.
    let cancelled_at = std::time::Instant::now();
    while count(&root.join("content/ingest")) > 0
        && cancelled_at.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_clean(&root);
    let big_img = store.pull(&big_ref, &auth).await.unwrap();
    assert_eq!(
        fs::read(store.layer_dirs(&big_img).unwrap()[0].join("noise")).unwrap(),
        noise
    );
    store.remove(&big_ref).await.unwrap();
    assert!(store.get(&big_img.id).is_none());
    assert_clean(&root);
    assert_eq!(count(&root.join("snapshots/by-chain")), 4);

    let a_dirs_before = store.layer_dirs(&img_a).unwrap();

    // Restart: records, leases and snapshots survive.
    drop(store);
    let store = ImageStore::open(&root, ImageOptions::default()).unwrap();
    assert_eq!(store.list().len(), 2);
    // Opening collected the blobs of the failed pull: A's 7 (index, two
    // manifests, config, 3 layers) and B's 3 remain.
    assert_eq!(count(&root.join("content/blobs/sha256")), 10);
    assert_eq!(store.layer_dirs(&img_a).unwrap(), a_dirs_before);

    // A lost snapshot whose blob is still stored is unpacked again from the
    // content store (the registry is not asked for the blob).
    let top_chain = &img_a.layers[2].chain_id[7..];
    let link = root.join("snapshots/by-chain").join(top_chain);
    let lost = root
        .join("snapshots")
        .join(fs::read_link(&link).unwrap().file_name().unwrap());
    fs::remove_file(&link).unwrap();
    fs::remove_dir_all(&lost).unwrap();
    assert!(store.layer_dirs(&img_a).is_err());
    store.pull(&a_ref, &auth).await.unwrap();
    let a_dirs_before = store.layer_dirs(&img_a).unwrap();
    assert_eq!(
        fs::read(a_dirs_before[0].join("top.txt")).unwrap(),
        b"top\n"
    );
    assert_clean(&root);

    // A container holds A's snapshots across the removal of A.
    store.hold("ctr1", &img_a).unwrap();
    store.hold("ctr1", &img_a).unwrap();
    store
        .remove(&format!("{addr}/test/busybox:single"))
        .await
        .unwrap();
    let still = store.get(&img_a.id).unwrap();
    assert_eq!(still.repo_tags, vec![a_ref.clone()]);
    store.remove(&img_a.id).await.unwrap();
    store.remove(&img_a.id).await.unwrap();
    assert!(store.get(&img_a.id).is_none());
    assert_eq!(
        store.layer_dirs(&img_a).unwrap(),
        a_dirs_before,
        "held snapshots stay"
    );
    // Only B's blobs remain: manifest, config, two layers.
    assert_eq!(count(&root.join("content/blobs/sha256")), 4);
    store.release("ctr1").unwrap();
    store.release("ctr1").unwrap();
    assert!(store.layer_dirs(&img_a).is_err());
    assert_eq!(count(&root.join("snapshots/by-chain")), 2);
    assert!(dirs[2].exists(), "the base layer stays for B");
    assert!(!dirs[0].exists() && !dirs[1].exists());

    // A moved tag: pulling A again under B's tag takes it from B, which keeps its digest.
    for d in a.layers.iter().map(|l| &l.0).chain([&a.config_digest]) {
        pusher.mount("test/other", "test/busybox", d).await;
    }
    pusher.manifest("test/other", "1", a_mt, &a_manifest).await;
    let moved = store.pull(&b_ref, &auth).await.unwrap();
    assert_eq!(moved.id, img_a.id);
    let old_b = store.get(&img_b.id).unwrap();
    assert!(old_b.repo_tags.is_empty());
    assert_eq!(
        old_b.repo_digests,
        vec![format!("{addr}/test/other@{b_manifest_digest}")]
    );
    // Removing B by its digest reference removes it.
    store
        .remove(&format!("{addr}/test/other@{b_manifest_digest}"))
        .await
        .unwrap();
    assert!(store.get(&img_b.id).is_none());
    // Removing the last tag removes the image and everything goes.
    store.remove(&format!("{addr}/test/other:1")).await.unwrap();
    assert!(store.list().is_empty());
    assert_eq!(count(&root.join("content/blobs/sha256")), 0);
    assert_eq!(count(&root.join("snapshots/by-chain")), 0);
    assert_eq!(count(&root.join("snapshots")), 1);
    let usage = store.usage().unwrap();
    assert_eq!(usage.mountpoint, root.join("snapshots"));
    assert!(usage.inodes_used >= 4 && usage.used_bytes > 0);
    assert_eq!(count(&root.join("meta/images")), 0);
    assert_eq!(count(&root.join("meta/leases")), 0);
    drop(registry);
}

/// No ingest file and no snapshot directory without an index entry.
fn assert_clean(root: &Path) {
    assert_eq!(count(&root.join("content/ingest")), 0, "ingest files left");
    let indexed = count(&root.join("snapshots/by-chain"));
    assert_eq!(
        count(&root.join("snapshots")),
        indexed + 1,
        "unindexed snapshot dirs left"
    );
}

/// Mounts the layers with overlayfs and checks the merged view, when the
/// kernel lets this process mount.
fn overlay_check(dirs: &[PathBuf], tmp: &Path) {
    let merged = tmp.join("merged");
    fs::create_dir_all(&merged).unwrap();
    let lower: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let opts = format!("lowerdir={}", lower.join(":"));
    let mounted = nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    );
    if let Err(e) = mounted {
        eprintln!("skipping the overlay check: mount failed: {e}");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        assert!(merged.join("bin/busybox").exists());
        assert!(
            !merged.join("etc/hello").exists(),
            "whiteout hides etc/hello"
        );
        assert!(merged.join("etc").is_dir());
        assert!(
            !merged.join("var/keep").exists(),
            "opaque var hides var/keep"
        );
        assert_eq!(fs::read(merged.join("var/new")).unwrap(), b"new\n");
        assert_eq!(fs::read(merged.join("top.txt")).unwrap(), b"top\n");
        let out = Command::new("chroot")
            .arg(&merged)
            .args(["/bin/sh", "-c", "echo hi from $0"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "hi from /bin/sh"
        );
    });
    nix::mount::umount(&merged).unwrap();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
