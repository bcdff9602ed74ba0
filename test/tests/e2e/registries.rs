//! Pulling from registries as clusters configure them: token auth with every
//! AuthConfig form, htpasswd Basic auth, HTTPS with a private CA (hosts.toml
//! `ca`, `skip_verify`, client certificates), and mirrors configured in
//! hosts.toml (order, fall-through, capabilities, credentials kept from them).
//! All on loopback: the shared docker-registry, extra docker-registry
//! processes, and fake registry fronts forwarding to the shared one.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::cri::AuthConfig;
use crust_e2e::fake_registry::{FakeRegistry, Reply};
use crust_e2e::secured_registry::{SecuredRegistry, base64};
use crust_e2e::{TestEnv, run};
use tonic::Code;

/// Writes `<config_path>/<registry>/hosts.toml`; returns the directory.
fn write_hosts(env: &TestEnv, registry: &str, text: &str) -> Result<PathBuf> {
    let dir = env.daemon.paths().certs_d.join(registry);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("hosts.toml"), text)
        .with_context(|| format!("writing {}/hosts.toml", dir.display()))?;
    Ok(dir)
}

fn user_pass(user: &str, password: &str) -> AuthConfig {
    AuthConfig {
        username: user.into(),
        password: password.into(),
        ..Default::default()
    }
}

/// Pulls `image` with `auth`, checks its repo tags, removes it again.
async fn pull_and_remove(env: &TestEnv, image: &str, auth: Option<AuthConfig>) -> Result<()> {
    let id = env
        .cri
        .pull_image_with_auth(image, auth)
        .await
        .with_context(|| format!("PullImage {image}"))?;
    let status = env
        .cri
        .image_status(&id)
        .await?
        .context("ImageStatus after the pull")?;
    ensure!(
        status.repo_tags.iter().any(|t| t == image),
        "repo_tags {:?} lack {image}",
        status.repo_tags
    );
    env.cri.remove_image(&id).await.context("RemoveImage")?;
    Ok(())
}

/// Requires `result` to fail with `code` and a message containing `says`.
fn expect_error<T: std::fmt::Debug>(
    result: std::result::Result<T, tonic::Status>,
    code: Code,
    says: &str,
    what: &str,
) -> Result<()> {
    if let Err(status) = &result {
        ensure!(
            status.message().contains(says),
            "{what}: the message does not say {says:?}: {}",
            status.message()
        );
    }
    expect_code(result, code, what)
}

#[test]
fn token_auth_with_every_credential_form() {
    run("token_auth_with_every_credential_form", token_auth);
}

async fn token_auth(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(Some(env.images.registry.clone())).await?;
    fake.require_bearer(Some(("alice", "s3cret")));
    let image = format!("{}/busybox:1.0", fake.host());

    expect_error(
        env.cri.pull_image(&image).await,
        Code::Unauthenticated,
        "bad credentials for the token",
        "PullImage without credentials",
    )?;
    expect_error(
        env.cri
            .pull_image_with_auth(&image, Some(user_pass("alice", "wrong")))
            .await,
        Code::Unauthenticated,
        "bad credentials for the token",
        "PullImage with a wrong password",
    )?;
    ensure!(fake.tokens_issued() == 0);

    // Username and password; the token then serves another tag of the repository.
    pull_and_remove(env, &image, Some(user_pass("alice", "s3cret"))).await?;
    ensure!(
        fake.tokens_issued() == 1,
        "{} tokens for one pull",
        fake.tokens_issued()
    );
    let latest = format!("{}/busybox:latest", fake.host());
    pull_and_remove(env, &latest, Some(user_pass("alice", "s3cret"))).await?;
    ensure!(
        fake.tokens_issued() == 1,
        "the second pull from the repository fetched a new token ({} issued)",
        fake.tokens_issued()
    );

    // `auth`: base64 of user:password.
    let encoded = AuthConfig {
        auth: base64(b"alice:s3cret"),
        ..Default::default()
    };
    pull_and_remove(env, &image, Some(encoded)).await?;

    // `identity_token`: a refresh token for the token endpoint.
    let before = fake.requests().len();
    let identity = AuthConfig {
        identity_token: "s3cret".into(),
        ..Default::default()
    };
    pull_and_remove(env, &image, Some(identity)).await?;
    let refreshed = fake.requests()[before..]
        .iter()
        .any(|r| r.method == "POST" && r.path.starts_with("/token"));
    ensure!(refreshed, "no refresh-token POST to /token was seen");

    // `registry_token`: a token the caller got itself, sent as it is.
    let body = reqwest::Client::new()
        .get(format!(
            "http://{}/token?scope=repository:busybox:pull&service=crust-fake",
            fake.host()
        ))
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let token: serde_json::Value = serde_json::from_slice(&body)?;
    let token = token["token"].as_str().context("no token")?.to_string();
    let issued = fake.tokens_issued();
    let given = AuthConfig {
        registry_token: token.clone(),
        ..Default::default()
    };
    pull_and_remove(env, &image, Some(given)).await?;
    ensure!(
        fake.tokens_issued() == issued,
        "crustd fetched a token although it was given one"
    );
    let bad = AuthConfig {
        registry_token: "not-a-token".into(),
        ..Default::default()
    };
    expect_code(
        env.cri.pull_image_with_auth(&image, Some(bad)).await,
        Code::Unauthenticated,
        "PullImage with a bogus registry_token",
    )
}

#[test]
fn basic_auth_htpasswd_registry() {
    run("basic_auth_htpasswd_registry", basic_auth);
}

async fn basic_auth(env: &mut TestEnv) -> Result<()> {
    let registry =
        tokio::task::spawn_blocking(|| SecuredRegistry::with_htpasswd("bob", "hunter2")).await??;
    registry
        .push("busybox", "1.0", &env.images.busybox.image)
        .await?;
    let image = format!("{}/busybox:1.0", registry.host());
    expect_code(
        env.cri.pull_image(&image).await,
        Code::Unauthenticated,
        "PullImage without credentials",
    )?;
    expect_code(
        env.cri
            .pull_image_with_auth(&image, Some(user_pass("bob", "wrong")))
            .await,
        Code::Unauthenticated,
        "PullImage with a wrong password",
    )?;
    pull_and_remove(env, &image, Some(user_pass("bob", "hunter2"))).await?;
    // Credentials for another registry are not sent here.
    let elsewhere = AuthConfig {
        server_address: "https://other-registry.example.invalid".into(),
        ..user_pass("bob", "hunter2")
    };
    expect_code(
        env.cri.pull_image_with_auth(&image, Some(elsewhere)).await,
        Code::Unauthenticated,
        "PullImage with credentials of another registry",
    )?;
    let here = AuthConfig {
        server_address: format!("http://{}/", registry.host()),
        ..user_pass("bob", "hunter2")
    };
    pull_and_remove(env, &image, Some(here)).await
}

#[test]
fn tls_registry_with_ca_or_skip_verify() {
    run("tls_registry_with_ca_or_skip_verify", tls_registry);
}

async fn tls_registry(env: &mut TestEnv) -> Result<()> {
    let registry = tokio::task::spawn_blocking(|| SecuredRegistry::with_tls(false)).await??;
    registry
        .push("busybox", "1.0", &env.images.busybox.image)
        .await?;
    let host = registry.host().to_string();
    let image = format!("{host}/busybox:1.0");
    let server = format!("server = \"https://{host}\"\n");

    // HTTPS without trusting the CA: a clear certificate error.
    let dir = write_hosts(env, &host, &server)?;
    expect_error(
        env.cri.pull_image(&image).await,
        Code::FailedPrecondition,
        "certificate",
        "PullImage from a TLS registry whose CA is not trusted",
    )?;

    // The CA next to hosts.toml, by a relative path.
    let certs = registry.certs.as_ref().context("no certificates")?;
    std::fs::copy(&certs.ca, dir.join("ca.pem"))?;
    write_hosts(env, &host, &format!("{server}ca = \"ca.pem\"\n"))?;
    pull_and_remove(env, &image, None).await?;

    // skip_verify instead.
    write_hosts(env, &host, &format!("{server}skip_verify = true\n"))?;
    pull_and_remove(env, &image, None).await?;

    // Docker's certs.d layout, without hosts.toml: `*.crt` are CA bundles
    // (and the loopback registry is then spoken to over HTTPS).
    std::fs::remove_file(dir.join("hosts.toml"))?;
    std::fs::rename(dir.join("ca.pem"), dir.join("ca.crt"))?;
    pull_and_remove(env, &image, None).await?;

    // A malformed hosts.toml is named.
    write_hosts(env, &host, "server = \n")?;
    expect_error(
        env.cri.pull_image(&image).await,
        Code::FailedPrecondition,
        "hosts.toml",
        "PullImage with a malformed hosts.toml",
    )
}

#[test]
fn tls_registry_with_client_certificate() {
    run("tls_registry_with_client_certificate", client_certificate);
}

async fn client_certificate(env: &mut TestEnv) -> Result<()> {
    let registry = tokio::task::spawn_blocking(|| SecuredRegistry::with_tls(true)).await??;
    registry
        .push("busybox", "1.0", &env.images.busybox.image)
        .await?;
    let host = registry.host().to_string();
    let image = format!("{host}/busybox:1.0");
    let certs = registry.certs.as_ref().context("no certificates")?;
    let server = format!(
        "server = \"https://{host}\"\nca = \"{}\"\n",
        certs.ca.display()
    );
    write_hosts(env, &host, &server)?;
    let refused = env.cri.pull_image(&image).await;
    ensure!(
        refused.is_err(),
        "a registry demanding a client certificate served a pull without one"
    );
    write_hosts(
        env,
        &host,
        &format!(
            "{server}client = [[\"{}\", \"{}\"]]\n",
            certs.client_cert.display(),
            certs.client_key.display()
        ),
    )?;
    pull_and_remove(env, &image, None).await
}

#[test]
fn mirror_serves_with_the_image_path() {
    run("mirror_serves_with_the_image_path", mirror_path);
}

async fn mirror_path(env: &mut TestEnv) -> Result<()> {
    let mirror = FakeRegistry::start(Some(env.images.registry.clone())).await?;
    write_hosts(
        env,
        "registry.example.invalid",
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host()
        ),
    )?;
    let image = "registry.example.invalid/busybox:1.0";
    let id = env.pull(image).await?;
    ensure!(id == env.images.busybox.config_digest, "pulled {id}");
    let paths: Vec<String> = mirror.requests().into_iter().map(|r| r.path).collect();
    ensure!(
        paths.iter().any(|p| p == "/v2/busybox/manifests/1.0"),
        "the mirror saw no /v2/busybox/manifests/1.0: {paths:?}"
    );
    ensure!(
        paths.iter().any(|p| p.starts_with("/v2/busybox/blobs/")),
        "the mirror served no blob: {paths:?}"
    );
    let status = env
        .cri
        .image_status(image)
        .await?
        .context("ImageStatus by the registry's name")?;
    ensure!(
        status.repo_tags == [image],
        "repo_tags {:?}",
        status.repo_tags
    );
    let digested = format!(
        "registry.example.invalid/busybox@{}",
        env.images.busybox.digest
    );
    ensure!(
        status.repo_digests.contains(&digested),
        "repo_digests {:?} lack {digested}",
        status.repo_digests
    );
    Ok(())
}

#[test]
fn mirrors_fall_through_on_errors() {
    run("mirrors_fall_through_on_errors", mirror_fall_through);
}

async fn mirror_fall_through(env: &mut TestEnv) -> Result<()> {
    let upstream = env.images.registry.clone();
    let failing = FakeRegistry::start(Some(upstream.clone())).await?;
    failing.route(
        "GET",
        "/v2/busybox/manifests/1.0",
        Reply::error(503, "UNAVAILABLE", "down for maintenance"),
    );
    let empty = FakeRegistry::start(None).await?;
    let good = FakeRegistry::start(Some(upstream)).await?;
    write_hosts(
        env,
        "registry.example.invalid",
        &format!(
            "[host.\"http://{}\"]\n[host.\"http://{}\"]\n[host.\"http://{}\"]\n",
            failing.host(),
            empty.host(),
            good.host()
        ),
    )?;
    let image = "registry.example.invalid/busybox:1.0";
    pull_and_remove(env, image, None).await?;
    for (name, mirror) in [("the 503 mirror", &failing), ("the empty mirror", &empty)] {
        ensure!(
            mirror
                .requests()
                .iter()
                .any(|r| r.path == "/v2/busybox/manifests/1.0"),
            "{name} was not tried first"
        );
    }
    ensure!(
        !failing
            .requests()
            .iter()
            .any(|r| r.path.contains("/blobs/")),
        "the mirror that failed was asked for blobs before the others"
    );
    ensure!(
        good.requests()
            .iter()
            .any(|r| r.path.starts_with("/v2/busybox/blobs/")),
        "the working mirror served no blob"
    );

    // Every host failing: the error says so (the upstream does not resolve).
    write_hosts(
        env,
        "registry.example.invalid",
        &format!("[host.\"http://{}\"]\n", empty.host()),
    )?;
    let failed = env.cri.pull_image(image).await;
    let status = failed
        .err()
        .context("a pull with no working host succeeded")?;
    ensure!(
        status.message().contains("other hosts tried"),
        "{:?}: {}",
        status.code(),
        status.message()
    );
    Ok(())
}

#[test]
fn pull_only_mirror_and_credentials_stay_upstream() {
    run(
        "pull_only_mirror_and_credentials_stay_upstream",
        pull_only_mirror,
    );
}

async fn pull_only_mirror(env: &mut TestEnv) -> Result<()> {
    let shared = env.images.registry.clone();
    let upstream = FakeRegistry::start(Some(shared.clone())).await?;
    upstream.require_bearer(Some(("alice", "s3cret")));
    // The mirror hands out anonymous tokens: a client that sent the pull's
    // credentials to it would send them with its token request.
    let mirror = FakeRegistry::start(Some(shared)).await?;
    mirror.require_bearer(None);
    let image = format!("{}/busybox:1.0", upstream.host());
    write_hosts(
        env,
        &upstream.host(),
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
            mirror.host()
        ),
    )?;
    let alice = || Some(user_pass("alice", "s3cret"));
    pull_and_remove(env, &image, alice()).await?;
    let at_mirror = mirror.requests();
    ensure!(
        !at_mirror.iter().any(|r| r.path.contains("/manifests/1.0")),
        "a pull-only mirror was asked to resolve the tag"
    );
    ensure!(
        at_mirror.iter().any(|r| r.path.contains("/blobs/")),
        "the pull-only mirror served no blob"
    );
    ensure!(
        upstream
            .requests()
            .iter()
            .any(|r| r.path == "/v2/busybox/manifests/1.0"
                && r.header("authorization")
                    .is_some_and(|a| a.starts_with("Bearer "))),
        "the upstream did not resolve the tag with a token"
    );
    no_basic_credentials_at(&mirror)?;

    // A mirror that may resolve serves everything, without the credentials.
    write_hosts(
        env,
        &upstream.host(),
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host()
        ),
    )?;
    mirror.clear_requests();
    upstream.clear_requests();
    pull_and_remove(env, &image, alice()).await?;
    ensure!(
        mirror
            .requests()
            .iter()
            .any(|r| r.path == "/v2/busybox/manifests/1.0"),
        "the resolving mirror was not asked for the tag"
    );
    ensure!(
        upstream.requests().is_empty(),
        "the upstream was asked although the mirror served"
    );
    no_basic_credentials_at(&mirror)
}

/// Fails if any request to `mirror` carried Basic credentials.
fn no_basic_credentials_at(mirror: &FakeRegistry) -> Result<()> {
    let leaked: Vec<String> = mirror
        .requests()
        .iter()
        .filter(|r| {
            r.header("authorization")
                .is_some_and(|a| a.starts_with("Basic "))
        })
        .map(|r| r.path.clone())
        .collect();
    ensure!(
        leaked.is_empty(),
        "credentials were sent to the mirror: {leaked:?}"
    );
    Ok(())
}

#[test]
fn credentials_that_cannot_be_sent_are_refused() {
    run(
        "credentials_that_cannot_be_sent_are_refused",
        unsendable_credentials,
    );
}

/// `auth` and `registry_token` go into the Authorization header as they
/// are: one holding CR or LF is refused as the caller's mistake
/// (InvalidArgument) before any request, and the registry stays usable.
async fn unsendable_credentials(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(Some(env.images.registry.clone())).await?;
    fake.require_bearer(Some(("alice", "s3cret")));
    let image = format!("{}/busybox:1.0", fake.host());
    let cases = [
        (
            "auth",
            AuthConfig {
                auth: format!("{}\r\nX-Injected: 1", base64(b"alice:s3cret")),
                ..Default::default()
            },
        ),
        (
            "registry_token",
            AuthConfig {
                registry_token: "token\nX-Injected: 1".into(),
                ..Default::default()
            },
        ),
    ];
    for (field, auth) in cases {
        expect_error(
            env.cri.pull_image_with_auth(&image, Some(auth)).await,
            Code::InvalidArgument,
            field,
            &format!("PullImage with CR/LF in {field}"),
        )?;
    }
    ensure!(
        fake.requests().is_empty(),
        "unsendable credentials reached the registry: {:?}",
        fake.requests()
    );
    // A username or password with a newline is base64-encoded, so it can
    // be sent; the registry refuses it.
    expect_error(
        env.cri
            .pull_image_with_auth(&image, Some(user_pass("alice\r\n", "s3cret")))
            .await,
        Code::Unauthenticated,
        "bad credentials",
        "PullImage with CR/LF in the username",
    )?;
    pull_and_remove(env, &image, Some(user_pass("alice", "s3cret"))).await
}
