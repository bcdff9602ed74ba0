//! The `docker-registry` the tests pull from: one per test process (the
//! whole end-to-end suite is one binary, so one for the suite), on a free
//! loopback port with a temporary storage directory, killed by pid and its
//! directory removed when the test process exits, whether tests passed or
//! not; and a small client for its HTTP API (push and fetch).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::image_builder::{Blob, Image};
use crate::{processes, requirements, unique};

/// A running registry process.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:<port>`, the host part of image references.
    pub addr: String,
    /// Pid of the `docker-registry` process.
    pub pid: i32,
    /// Temporary directory with the registry's config, storage and log.
    pub dir: PathBuf,
    exited: Arc<AtomicBool>,
}

static SHARED: OnceLock<Result<Registry, String>> = OnceLock::new();

impl Registry {
    /// The registry shared by all tests of this process, started on first use
    /// and stopped (its directory removed) by an `atexit` handler.
    pub fn shared() -> Result<&'static Registry> {
        let registry = SHARED.get_or_init(|| {
            let started = Self::start_with_retries().map_err(|e| format!("{e:#}"));
            if started.is_ok() {
                // SAFETY: registering a plain extern "C" function with atexit.
                unsafe { libc::atexit(stop_shared_registry) };
            }
            started
        });
        registry
            .as_ref()
            .map_err(|e| anyhow!("starting docker-registry: {e}"))
    }

    /// The registry's base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn start_with_retries() -> Result<Registry> {
        Self::start_configured("", |status| status == 200)
    }

    /// Starts a registry of its own (not shared) on a free port, with
    /// `extra_config` appended to its YAML config right after `http.addr`
    /// (so it may continue the `http:` section with indented keys, e.g.
    /// `  tls:`, then add top-level sections such as `auth:`). It counts as
    /// up once `GET /v2/` over plain HTTP answers with a status `ready`
    /// accepts. The caller stops it with [`Registry::stop`].
    pub fn start_configured(extra_config: &str, ready: fn(u16) -> bool) -> Result<Registry> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start(extra_config, ready) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
    }

    /// Starts a registry on a free port and waits until `GET /v2/` answers
    /// with a status `ready` accepts.
    fn start(extra_config: &str, ready: fn(u16) -> bool) -> Result<Registry> {
        let program = requirements::find_program("docker-registry")
            .context("docker-registry is not installed")?;
        let dir = std::env::temp_dir().join(format!("crust-e2e-registry-{}", unique::suffix()));
        std::fs::create_dir_all(dir.join("storage"))?;
        let port = crate::network::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{extra_config}",
                dir.join("storage").display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let mut command = Command::new(program);
        command
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only arranges for the registry to
        // get SIGKILL when its parent (the keeper thread, which lives as long as
        // the test process) goes away.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let exited = Arc::new(AtomicBool::new(false));
        let pid = spawn_kept(command, exited.clone())?;
        let registry = Registry {
            addr,
            pid,
            dir,
            exited,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if registry.exited.load(Ordering::SeqCst) {
                let log =
                    std::fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default();
                registry.stop();
                bail!("docker-registry exited at startup:\n{log}");
            }
            if http_status(&registry.addr, "/v2/").is_ok_and(ready) {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                registry.stop();
                bail!("docker-registry did not answer GET /v2/ within 20s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the registry (by pid) and removes its directory.
    pub fn stop(&self) {
        if !self.exited.load(Ordering::SeqCst) {
            processes::kill_and_wait(self.pid, Duration::from_secs(2));
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.exited.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

extern "C" fn stop_shared_registry() {
    if let Some(Ok(registry)) = SHARED.get() {
        registry.stop();
    }
}

/// Spawns `command` from a thread that stays alive (waiting for it) for as long
/// as the process lives, so the child's parent-death signal fires only when the
/// test process ends, and the child is reaped as soon as it exits.
fn spawn_kept(mut command: Command, exited: Arc<AtomicBool>) -> Result<i32> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("registry-keeper".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id() as i32));
                let _ = child.wait();
                exited.store(true, Ordering::SeqCst);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                exited.store(true, Ordering::SeqCst);
            }
        })?;
    Ok(rx.recv()??)
}

/// A blocking `GET` returning only the HTTP status, for readiness checks
/// outside any async runtime.
fn http_status(addr: &str, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line {text:?}"))
}

/// A manifest fetched back from the registry.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The Content-Type the registry served it with.
    pub media_type: String,
    /// The `Docker-Content-Digest` header.
    pub digest: String,
    /// The manifest bytes.
    pub data: Vec<u8>,
}

/// A client for the registry's HTTP API v2.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
}

/// Accept header for manifest fetches: every manifest and index type we push.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

impl RegistryClient {
    /// A client for the registry at `base` (`scheme://host:port`) that sends
    /// its requests through `http` (for TLS roots or default credentials).
    pub fn with_client(base: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// A client for the registry at `addr` (`host:port`, plain HTTP, no proxy).
    pub fn new(addr: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            base: format!("http://{addr}"),
            http,
        })
    }

    /// Uploads a blob to `repo` in one request (POST an upload, PUT the bytes),
    /// unless the registry already has it.
    pub async fn push_blob(&self, repo: &str, data: &[u8], digest: &str) -> Result<()> {
        let blob_url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        if self
            .http
            .head(&blob_url)
            .send()
            .await?
            .status()
            .is_success()
        {
            return Ok(());
        }
        let started = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.base))
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await?;
        ensure!(
            started.status() == 202,
            "starting upload to {repo}: {}",
            started.status()
        );
        let location = started
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("upload response has no Location")?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_string()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let finished = self
            .http
            .put(format!("{location}{separator}digest={digest}"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        let status = finished.status();
        ensure!(
            status == 201,
            "uploading {digest} to {repo}: {status} {}",
            finished.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// PUTs a manifest or index under `reference` (a tag or its digest) and
    /// checks the registry computed the same digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, manifest: &Blob) -> Result<()> {
        let response = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header(reqwest::header::CONTENT_TYPE, &manifest.media_type)
            .body(manifest.data.clone())
            .send()
            .await?;
        let status = response.status();
        let digest = header(&response, "docker-content-digest");
        ensure!(
            status == 201,
            "pushing manifest {repo}:{reference}: {status} {}",
            response.text().await.unwrap_or_default()
        );
        ensure!(
            digest == manifest.digest,
            "registry says manifest {repo}:{reference} is {digest}, expected {}",
            manifest.digest
        );
        Ok(())
    }

    /// Pushes an image's layers, config and manifest, tagging it `tag` (or only
    /// by digest when `tag` is `None`).
    pub async fn push_image(&self, repo: &str, tag: Option<&str>, image: &Image) -> Result<()> {
        for blob in image.layers.iter().chain([&image.config]) {
            self.push_blob(repo, &blob.data, &blob.digest).await?;
        }
        self.push_manifest(repo, tag.unwrap_or(&image.manifest.digest), &image.manifest)
            .await
    }

    /// Fetches the manifest or index `repo:reference`.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<FetchedManifest> {
        let response = self
            .http
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "GET manifest {repo}:{reference}: {}",
            response.status()
        );
        Ok(FetchedManifest {
            media_type: header(&response, "content-type"),
            digest: header(&response, "docker-content-digest"),
            data: response.bytes().await?.to_vec(),
        })
    }

    /// Returns the HTTP status of a manifest fetch (e.g. 404 for a missing tag).
    pub async fn manifest_status(&self, repo: &str, reference: &str) -> Result<u16> {
        let response = self
            .http
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// Fetches a blob's bytes.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>> {
        let response = self
            .http
            .get(format!("{}/v2/{repo}/blobs/{digest}", self.base))
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "GET blob {repo}@{digest}: {}",
            response.status()
        );
        Ok(response.bytes().await?.to_vec())
    }
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
