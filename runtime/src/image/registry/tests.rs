//! The auth flows and error mapping against a scripted fake registry on loopback.

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
    body: String,
}

type Handler = dyn Fn(&Seen, &str) -> (u16, Vec<(String, String)>, String) + Send + Sync;

/// Serves each connection one request, answering with `handler(request, own address)`.
async fn fake_registry(handler: Arc<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
                let mut length = 0usize;
                for line in lines {
                    if let Some((k, v)) = line.split_once(':') {
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

fn repo_for(addr: &str, auth: RegistryAuth) -> Repository {
    let client = RegistryClient::new().unwrap();
    client.repository(
        &Reference::parse(&format!("{addr}/team/app:1")).unwrap(),
        &auth,
    )
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
