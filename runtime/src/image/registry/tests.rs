//! The auth flows and error mapping against a scripted fake registry on loopback.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// One request as the fake registry saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    authorization: Option<String>,
    /// Every header, names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

type Handler = dyn Fn(&Seen, &str) -> (u16, Vec<(String, String)>, String) + Send + Sync;

/// Serves each connection one request, answering with `handler(request, own address)`.
async fn fake_registry(handler: Arc<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    fake_registry_on("127.0.0.1", handler).await
}

/// [`fake_registry`] on loopback address `ip`.
async fn fake_registry_on(ip: &str, handler: Arc<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (log, own) = (seen.clone(), addr.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (handler, log, own) = (handler.clone(), log.clone(), own.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let header_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_string();
                let target = first.next().unwrap_or("").to_string();
                let mut authorization = None;
                let mut headers = Vec::new();
                let mut length = 0usize;
                for line in lines {
                    if let Some((k, v)) = line.split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                        match k.trim().to_ascii_lowercase().as_str() {
                            "authorization" => authorization = Some(v.trim().to_string()),
                            "content-length" => length = v.trim().parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                while buf.len() < header_end + length {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[header_end..]).into_owned();
                let req = Seen {
                    method,
                    target,
                    authorization,
                    headers,
                    body,
                };
                log.lock().unwrap().push(req.clone());
                let (status, headers, body) = handler(&req, &own);
                let mut resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                resp.push_str(&body);
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, seen)
}

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":1},"layers":[]}"#;

fn ok_manifest() -> (u16, Vec<(String, String)>, String) {
    (
        200,
        vec![("Content-Type".into(), OCI_MANIFEST_TYPE.into())],
        MANIFEST.into(),
    )
}

const OCI_MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn unknown() -> (u16, Vec<(String, String)>, String) {
    (
        404,
        vec![],
        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.into(),
    )
}

/// A config directory removed when dropped.
struct ConfigDir(PathBuf);

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config_dir() -> ConfigDir {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("crust-registry-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ConfigDir(dir)
}

fn client_with(config: &Path) -> RegistryClient {
    RegistryClient::new(&ImageOptions {
        config_path: config.to_path_buf(),
        ..ImageOptions::default()
    })
    .unwrap()
}

fn repo_for(addr: &str, auth: RegistryAuth) -> Repository {
    let config = config_dir();
    client_with(&config.0)
        .repository(
            &Reference::parse(&format!("{addr}/team/app:1")).unwrap(),
            &auth,
        )
        .unwrap()
}

async fn fetch(repo: &Repository) -> Result<FetchedManifest> {
    repo.manifest("1", "application/json", 1 << 20, "image \"x\"")
        .await
}

/// Registry wanting a bearer token `good` from its `/token` realm.
fn bearer_registry() -> Arc<Handler> {
    Arc::new(|req: &Seen, own: &str| {
        if req.target.starts_with("/token") {
            return (
                200,
                vec![],
                r#"{"access_token":"good","expires_in":300}"#.into(),
            );
        }
        if req.authorization.as_deref() == Some("Bearer good") {
            return ok_manifest();
        }
        let challenge = format!(
            r#"Bearer realm="http://{own}/token",service="fake.io",scope="repository:team/app:pull""#
        );
        (
            401,
            vec![("WWW-Authenticate".into(), challenge)],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.into(),
        )
    })
}

#[tokio::test]
async fn anonymous_bearer_token_flow() {
    let (addr, seen) = fake_registry(bearer_registry()).await;
    let repo = repo_for(&addr, RegistryAuth::default());
    let m = fetch(&repo).await.unwrap();
    assert_eq!(m.bytes, MANIFEST.as_bytes());
    assert_eq!(m.content_type.as_deref(), Some(OCI_MANIFEST_TYPE));
    // A second request reuses the token: no new challenge.
    fetch(&repo).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let targets: Vec<_> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets.len(), 4, "{targets:?}");
    assert_eq!(targets[0], "/v2/team/app/manifests/1");
    assert!(targets[1].starts_with("/token?"), "{targets:?}");
    assert!(
        targets[1].contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{targets:?}"
    );
    assert!(targets[1].contains("service=fake.io"), "{targets:?}");
    assert_eq!(seen[1].authorization, None);
    assert_eq!(seen[3].authorization.as_deref(), Some("Bearer good"));
}

#[tokio::test]
async fn credentials_go_to_the_token_request() {
    let (addr, seen) = fake_registry(bearer_registry()).await;
    let auth = RegistryAuth {
        username: "user".into(),
        password: "pass".into(),
        ..Default::default()
    };
    fetch(&repo_for(&addr, auth)).await.unwrap();
    let token_req = seen.lock().unwrap()[1].clone();
    assert_eq!(
        token_req.authorization.as_deref(),
        Some("Basic dXNlcjpwYXNz")
    );
    assert!(token_req.target.contains("account=user"));

    // The pre-encoded form works the same.
    let (addr, seen) = fake_registry(bearer_registry()).await;
    let auth = RegistryAuth {
        auth: "dXNlcjpwYXNz".into(),
        ..Default::default()
    };
    fetch(&repo_for(&addr, auth)).await.unwrap();
    assert_eq!(
        seen.lock().unwrap()[1].authorization.as_deref(),
        Some("Basic dXNlcjpwYXNz")
    );
}

#[tokio::test]
async fn identity_token_is_a_refresh_token() {
    let (addr, seen) = fake_registry(bearer_registry()).await;
    let auth = RegistryAuth {
        identity_token: "refresh-me".into(),
        ..Default::default()
    };
    fetch(&repo_for(&addr, auth)).await.unwrap();
    let token_req = seen.lock().unwrap()[1].clone();
    assert_eq!(token_req.method, "POST");
    assert!(
        token_req.body.contains("grant_type=refresh_token"),
        "{}",
        token_req.body
    );
    assert!(
        token_req.body.contains("refresh_token=refresh-me"),
        "{}",
        token_req.body
    );
    assert!(
        token_req.body.contains("service=fake.io"),
        "{}",
        token_req.body
    );
}

#[tokio::test]
async fn registry_token_is_sent_as_is() {
    let (addr, seen) = fake_registry(bearer_registry()).await;
    let auth = RegistryAuth {
        registry_token: "good".into(),
        ..Default::default()
    };
    fetch(&repo_for(&addr, auth)).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (addr, _) = fake_registry(bearer_registry()).await;
    let auth = RegistryAuth {
        registry_token: "stale".into(),
        ..Default::default()
    };
    match fetch(&repo_for(&addr, auth)).await {
        Err(Error::Unauthenticated(m)) => assert!(m.contains("authentication required"), "{m}"),
        other => panic!("{:?}", other.map(|m| m.bytes)),
    }
}

#[tokio::test]
async fn basic_challenge() {
    let handler: Arc<Handler> = Arc::new(|req: &Seen, _: &str| {
        if req.authorization.as_deref() == Some("Basic dXNlcjpwYXNz") {
            return unknown();
        }
        (
            401,
            vec![("WWW-Authenticate".into(), r#"Basic realm="fake""#.into())],
            String::new(),
        )
    });
    let (addr, seen) = fake_registry(handler.clone()).await;
    let auth = RegistryAuth {
        username: "user".into(),
        password: "pass".into(),
        ..Default::default()
    };
    let repo = repo_for(&addr, auth);
    match fetch(&repo).await {
        Err(Error::NotFound(m)) => {
            assert_eq!(m, "image \"x\" not found in registry: manifest unknown")
        }
        other => panic!("{:?}", other.map(|m| m.bytes)),
    }
    // Later requests send the credentials straight away.
    let _ = fetch(&repo).await;
    assert_eq!(seen.lock().unwrap().len(), 3);

    let (addr, _) = fake_registry(handler).await;
    match fetch(&repo_for(&addr, RegistryAuth::default())).await {
        Err(Error::Unauthenticated(m)) => assert!(m.contains("without valid credentials"), "{m}"),
        other => panic!("{:?}", other.map(|m| m.bytes)),
    }
}

#[tokio::test]
async fn status_codes_map_to_error_kinds() {
    let handler: Arc<Handler> = Arc::new(|req: &Seen, _: &str| {
        let status = req
            .target
            .rsplit('/')
            .next()
            .unwrap_or("500")
            .parse()
            .unwrap_or(500);
        (
            status,
            vec![],
            r#"{"errors":[{"code":"X","message":"the registry says no"}]}"#.into(),
        )
    });
    let (addr, _) = fake_registry(handler).await;
    let repo = repo_for(&addr, RegistryAuth::default());
    for (status, check) in [
        (
            403u16,
            (|e: &Error| matches!(e, Error::PermissionDenied(_))) as fn(&Error) -> bool,
        ),
        (404, |e| matches!(e, Error::NotFound(_))),
        (429, |e| matches!(e, Error::Unavailable(_))),
        (503, |e| matches!(e, Error::Unavailable(_))),
        (400, |e| matches!(e, Error::InvalidArgument(_))),
    ] {
        let e = match repo
            .manifest(
                &status.to_string(),
                "application/json",
                1 << 20,
                "image \"x\"",
            )
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("{status} succeeded"),
        };
        assert!(check(&e), "{status}: {e:?}");
        assert!(
            e.to_string().contains("the registry says no"),
            "{status}: {e}"
        );
    }
    // A 401 without a challenge is not retried.
    let e = repo
        .manifest("401", "application/json", 1 << 20, "image \"x\"")
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
}

#[tokio::test]
async fn oversized_manifests_are_refused() {
    let handler: Arc<Handler> = Arc::new(|_: &Seen, _: &str| (200, vec![], "x".repeat(5000)));
    let (addr, _) = fake_registry(handler).await;
    let repo = repo_for(&addr, RegistryAuth::default());
    match repo
        .manifest("1", "application/json", 4096, "image \"x\"")
        .await
    {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("larger than 4096"), "{m}"),
        other => panic!("{:?}", other.map(|m| m.bytes)),
    }
}

fn write_hosts(config: &Path, registry: &str, text: &str) {
    let dir = config.join(registry);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), text).unwrap();
}

fn targets(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|s| s.target.clone())
        .collect()
}

fn answer(status: u16) -> Arc<Handler> {
    Arc::new(move |_: &Seen, _: &str| {
        (
            status,
            vec![],
            format!(r#"{{"errors":[{{"code":"X","message":"status {status}"}}]}}"#),
        )
    })
}

fn serving() -> Arc<Handler> {
    Arc::new(|_: &Seen, _: &str| ok_manifest())
}

fn pull_of(client: &RegistryClient, reference: &str, auth: &RegistryAuth) -> Repository {
    client
        .repository(&Reference::parse(reference).unwrap(), auth)
        .unwrap()
}

#[test]
fn repository_urls_without_configuration() {
    let config = config_dir();
    let c = client_with(&config.0);
    let auth = RegistryAuth::default();
    let base = |r: &str| pull_of(&c, r, &auth).endpoints[0].base.clone();
    assert_eq!(
        base("busybox"),
        "https://registry-1.docker.io/v2/library/busybox"
    );
    assert_eq!(base("127.0.0.1:5000/a/b:1"), "http://127.0.0.1:5000/v2/a/b");
    assert_eq!(base("quay.io/x/y"), "https://quay.io/v2/x/y");
    assert_eq!(pull_of(&c, "quay.io/x/y", &auth).endpoints.len(), 1);
}

#[test]
fn parses_challenges() {
    let (scheme, params) = parse_challenge(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
    )
    .unwrap();
    assert_eq!(scheme, "Bearer");
    assert_eq!(
        params,
        vec![
            ("realm".into(), "https://auth.docker.io/token".into()),
            ("service".into(), "registry.docker.io".into()),
            ("scope".into(), "repository:library/busybox:pull".into()),
        ]
    );
    let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
    assert_eq!(scheme, "Basic");
    assert_eq!(params, vec![("realm".into(), "Registry Realm".into())]);
    let (_, params) =
        parse_challenge(r#"Bearer realm=x, error="insufficient_scope", scope="a:b:pull,push""#)
            .unwrap();
    assert_eq!(params[2], ("scope".into(), "a:b:pull,push".into()));
}

#[test]
fn registry_error_messages() {
    let body =
        br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
    assert_eq!(registry_message(body).unwrap(), "manifest unknown");
    assert_eq!(
        registry_message(br#"{"errors":[{"code":"DENIED"}]}"#).unwrap(),
        "denied"
    );
    assert!(registry_message(b"<html>").is_none());
}

#[test]
fn credentials_belong_to_one_registry() {
    let host = |h: &str, upstream: bool| RegistryHost {
        scheme: "https".into(),
        host: h.into(),
        path: "/v2".into(),
        capabilities: Capabilities::ALL,
        tls: Default::default(),
        headers: Vec::new(),
        upstream,
    };
    let creds = |server: &str| RegistryAuth {
        username: "u".into(),
        password: "p".into(),
        server_address: server.into(),
        ..Default::default()
    };
    // No server address: the image's registry, and its configured server.
    assert!(creds("").applies_to(&host("quay.io", true), "quay.io"));
    assert!(creds("").applies_to(&host("proxy.corp", true), "quay.io"));
    assert!(!creds("").applies_to(&host("mirror.corp", false), "quay.io"));
    assert!(creds("").applies_to(&host("registry-1.docker.io", true), "docker.io"));
    assert!(!creds("").applies_to(&host("mirror.gcr.io", false), "docker.io"));
    // Docker Hub's spellings of its server address.
    for server in [
        "https://index.docker.io/v1/",
        "docker.io",
        "registry-1.docker.io",
    ] {
        assert!(
            creds(server).applies_to(&host("registry-1.docker.io", true), "docker.io"),
            "{server}"
        );
    }
    // A server address names the one host they are for.
    assert!(creds("mirror.corp:5000").applies_to(&host("mirror.corp:5000", false), "quay.io"));
    assert!(!creds("mirror.corp:5000").applies_to(&host("quay.io", true), "quay.io"));
    assert!(!creds("https://other.io").applies_to(&host("quay.io", true), "quay.io"));
    assert!(creds("https://QUAY.io/v2/").applies_to(&host("quay.io", true), "quay.io"));
    // Nothing to send.
    assert!(!RegistryAuth::default().applies_to(&host("quay.io", true), "quay.io"));
}

#[tokio::test]
async fn tokens_are_reused_across_pulls_with_the_same_credentials() {
    let (addr, seen) = fake_registry(bearer_registry()).await;
    let config = config_dir();
    let client = client_with(&config.0);
    let alice = RegistryAuth {
        username: "alice".into(),
        password: "pw".into(),
        ..Default::default()
    };
    let token_requests = || {
        targets(&seen)
            .iter()
            .filter(|t| t.starts_with("/token"))
            .count()
    };
    fetch(&pull_of(&client, &format!("{addr}/team/app:1"), &alice))
        .await
        .unwrap();
    assert_eq!(token_requests(), 1);
    // Another pull from the same repository: the cached token goes first.
    let before = seen.lock().unwrap().len();
    fetch(&pull_of(&client, &format!("{addr}/team/app:2"), &alice))
        .await
        .unwrap();
    assert_eq!(token_requests(), 1);
    let next = seen.lock().unwrap()[before].clone();
    assert_eq!(next.authorization.as_deref(), Some("Bearer good"));
    // Other credentials, or none, never get that token.
    let bob = RegistryAuth {
        username: "bob".into(),
        password: "pw".into(),
        ..Default::default()
    };
    fetch(&pull_of(&client, &format!("{addr}/team/app:1"), &bob))
        .await
        .unwrap();
    assert_eq!(token_requests(), 2);
    let before = seen.lock().unwrap().len();
    fetch(&pull_of(
        &client,
        &format!("{addr}/team/app:1"),
        &RegistryAuth::default(),
    ))
    .await
    .unwrap();
    assert_eq!(token_requests(), 3);
    assert_eq!(seen.lock().unwrap()[before].authorization, None);
}

#[tokio::test]
async fn a_refused_cached_token_is_replaced_once() {
    // Tokens t1, t2, ...; only the newest is accepted.
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = issued.clone();
    let handler: Arc<Handler> = Arc::new(move |req: &Seen, own: &str| {
        use std::sync::atomic::Ordering::SeqCst;
        if req.target.starts_with("/token") {
            let n = counter.fetch_add(1, SeqCst) + 1;
            return (
                200,
                vec![],
                format!(r#"{{"token":"t{n}","expires_in":600}}"#),
            );
        }
        let newest = format!("Bearer t{}", counter.load(SeqCst));
        if req.authorization.as_deref() == Some(newest.as_str()) {
            return ok_manifest();
        }
        let challenge = format!(r#"Bearer realm="http://{own}/token",service="s""#);
        (
            401,
            vec![("WWW-Authenticate".into(), challenge)],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}"#.into(),
        )
    });
    let (addr, _) = fake_registry(handler).await;
    let config = config_dir();
    let client = client_with(&config.0);
    let auth = RegistryAuth::default();
    let reference = format!("{addr}/team/app:1");
    fetch(&pull_of(&client, &reference, &auth)).await.unwrap();
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);
    fetch(&pull_of(&client, &reference, &auth)).await.unwrap();
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The registry revokes t1 (a new token is issued elsewhere).
    issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    fetch(&pull_of(&client, &reference, &auth)).await.unwrap();
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_401_after_a_fresh_token_means_wrong_credentials() {
    let handler: Arc<Handler> = Arc::new(|req: &Seen, own: &str| {
        if req.target.starts_with("/token") {
            return (200, vec![], r#"{"token":"useless"}"#.into());
        }
        let challenge = format!(r#"Bearer realm="http://{own}/token",service="s""#);
        (
            401,
            vec![("WWW-Authenticate".into(), challenge)],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"pull access denied"}]}"#.into(),
        )
    });
    let (addr, seen) = fake_registry(handler).await;
    let auth = RegistryAuth {
        username: "u".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    match fetch(&repo_for(&addr, auth)).await {
        Err(Error::Unauthenticated(m)) => assert!(m.contains("pull access denied"), "{m}"),
        other => panic!("{:?}", other.map(|m| m.bytes)),
    }
    assert_eq!(seen.lock().unwrap().len(), 3, "{:?}", targets(&seen));
}

#[tokio::test]
async fn mirrors_fall_through_in_order_and_keep_the_path() {
    let (failing, failing_seen) = fake_registry(answer(503)).await;
    let (missing, missing_seen) = fake_registry(answer(404)).await;
    let (good, good_seen) = fake_registry(serving()).await;
    let config = config_dir();
    write_hosts(
        &config.0,
        "registry.example.invalid",
        &format!(
            "[host.\"http://{failing}\"]\n[host.\"http://{missing}\"]\n[host.\"http://{good}\"]\n\
             [host.\"http://{good}\".header]\nx-mirror = \"yes\"\n"
        ),
    );
    let client = client_with(&config.0);
    let repo = pull_of(
        &client,
        "registry.example.invalid/team/app:1",
        &RegistryAuth::default(),
    );
    fetch(&repo).await.unwrap();
    for seen in [&failing_seen, &missing_seen, &good_seen] {
        assert_eq!(targets(seen), ["/v2/team/app/manifests/1"]);
    }
    let mirror_header = good_seen.lock().unwrap()[0]
        .headers
        .iter()
        .find(|(n, _)| n == "x-mirror")
        .map(|(_, v)| v.clone());
    assert_eq!(mirror_header.as_deref(), Some("yes"));
    // The host that failed goes last for the rest of the pull; the one that
    // lacked the object is still asked first.
    repo.blob("sha256:abc", "a blob").await.unwrap();
    assert_eq!(targets(&failing_seen).len(), 1);
    assert_eq!(targets(&missing_seen)[1], "/v2/team/app/blobs/sha256:abc");
    assert_eq!(targets(&good_seen)[1], "/v2/team/app/blobs/sha256:abc");
}

#[tokio::test]
async fn every_host_failing_reports_the_most_telling_error() {
    let (missing, _) = fake_registry(answer(404)).await;
    let (refusing, _) = fake_registry(answer(403)).await;
    let config = config_dir();
    write_hosts(
        &config.0,
        "registry.example.invalid",
        &format!("server = \"http://{refusing}\"\n[host.\"http://{missing}\"]\n"),
    );
    let client = client_with(&config.0);
    let repo = pull_of(
        &client,
        "registry.example.invalid/team/app:1",
        &RegistryAuth::default(),
    );
    match fetch(&repo).await {
        Err(Error::PermissionDenied(m)) => {
            assert!(m.contains("status 403"), "{m}");
            assert!(m.contains("other hosts tried"), "{m}");
            assert!(m.contains("status 404"), "{m}");
        }
        other => panic!("{:?}", other.map(|m| m.bytes)),
    }
    // Only "not found" everywhere: NotFound.
    write_hosts(
        &config.0,
        "registry.example.invalid",
        &format!("server = \"http://{missing}\"\n[host.\"http://{missing}\"]\n"),
    );
    let repo = pull_of(
        &client,
        "registry.example.invalid/team/app:1",
        &RegistryAuth::default(),
    );
    assert!(matches!(fetch(&repo).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn tags_resolve_only_on_hosts_that_may_resolve() {
    let (mirror, mirror_seen) = fake_registry(serving()).await;
    let (upstream, upstream_seen) = fake_registry(serving()).await;
    let config = config_dir();
    write_hosts(
        &config.0,
        "registry.example.invalid",
        &format!(
            "server = \"http://{upstream}\"\n[host.\"http://{mirror}\"]\ncapabilities = [\"pull\"]\n"
        ),
    );
    let client = client_with(&config.0);
    let repo = pull_of(
        &client,
        "registry.example.invalid/team/app:1",
        &RegistryAuth::default(),
    );
    fetch(&repo).await.unwrap();
    let digest = format!("sha256:{}", "a".repeat(64));
    repo.manifest(&digest, "application/json", 1 << 20, "m")
        .await
        .unwrap();
    repo.blob("sha256:abc", "a blob").await.unwrap();
    assert_eq!(targets(&upstream_seen), ["/v2/team/app/manifests/1"]);
    assert_eq!(
        targets(&mirror_seen),
        [
            format!("/v2/team/app/manifests/{digest}"),
            "/v2/team/app/blobs/sha256:abc".to_string()
        ]
    );

    // No host may resolve: a clear error naming the file.
    write_hosts(
        &config.0,
        "registry.example.invalid",
        &format!("server = \"http://{upstream}\"\ncapabilities = [\"pull\"]\n"),
    );
    let repo = pull_of(
        &client,
        "registry.example.invalid/team/app:1",
        &RegistryAuth::default(),
    );
    match fetch(&repo).await {
        Err(Error::FailedPrecondition(m)) => {
            assert!(m.contains("registry.example.invalid/hosts.toml"), "{m}");
            assert!(m.contains("resolve"), "{m}");
        }
        other => panic!("{:?}", other.map(|m| m.bytes)),
    }
}

/// A registry wanting Basic `user:pass` (dXNlcjpwYXNz).
fn basic_registry() -> Arc<Handler> {
    Arc::new(|req: &Seen, _: &str| {
        if req.authorization.as_deref() == Some("Basic dXNlcjpwYXNz") {
            return ok_manifest();
        }
        (
            401,
            vec![("WWW-Authenticate".into(), r#"Basic realm="fake""#.into())],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}"#.into(),
        )
    })
}

#[tokio::test]
async fn credentials_never_reach_a_mirror_on_another_host() {
    let (mirror, mirror_seen) = fake_registry(basic_registry()).await;
    let (upstream, upstream_seen) = fake_registry(basic_registry()).await;
    let config = config_dir();
    write_hosts(
        &config.0,
        "registry.example.invalid",
        &format!("server = \"http://{upstream}\"\n[host.\"http://{mirror}\"]\n"),
    );
    let client = client_with(&config.0);
    let auth = RegistryAuth {
        username: "user".into(),
        password: "pass".into(),
        ..Default::default()
    };
    let reference = "registry.example.invalid/team/app:1";
    fetch(&pull_of(&client, reference, &auth)).await.unwrap();
    assert!(
        mirror_seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.authorization.is_none())
    );
    assert_eq!(
        upstream_seen
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .authorization
            .as_deref(),
        Some("Basic dXNlcjpwYXNz")
    );

    // Credentials for the mirror's host go to the mirror, and only there.
    mirror_seen.lock().unwrap().clear();
    upstream_seen.lock().unwrap().clear();
    let for_mirror = RegistryAuth {
        server_address: format!("http://{mirror}"),
        ..auth
    };
    fetch(&pull_of(&client, reference, &for_mirror))
        .await
        .unwrap();
    assert_eq!(
        mirror_seen
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .authorization
            .as_deref(),
        Some("Basic dXNlcjpwYXNz")
    );
    assert!(upstream_seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_host() {
    let (elsewhere, elsewhere_seen) =
        fake_registry_on("127.0.0.2", Arc::new(|_: &Seen, _: &str| ok_manifest())).await;
    let target = format!("http://{elsewhere}/storage/blob");
    let handler: Arc<Handler> = Arc::new(move |req: &Seen, _: &str| {
        if req.authorization.as_deref() != Some("Basic dXNlcjpwYXNz") {
            return (
                401,
                vec![("WWW-Authenticate".into(), r#"Basic realm="fake""#.into())],
                String::new(),
            );
        }
        (
            307,
            vec![("Location".into(), target.clone())],
            String::new(),
        )
    });
    let (addr, _) = fake_registry(handler).await;
    let auth = RegistryAuth {
        username: "user".into(),
        password: "pass".into(),
        ..Default::default()
    };
    let repo = repo_for(&addr, auth);
    let resp = repo.blob("sha256:abc", "a blob").await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = elsewhere_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/storage/blob");
    assert_eq!(seen[0].authorization, None);
}
