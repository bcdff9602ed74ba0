//! hosts.toml parsing (containerd's documented examples), directory lookup,
//! ordering, capabilities and URL building.

use super::*;

/// A config directory removed when dropped.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config_dir(tag: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("crust-hosts-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

fn write(root: &Path, host: &str, file: &str, text: &str) {
    let dir = root.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), text).unwrap();
}

fn urls(hosts: &RegistryHosts, repository: &str) -> Vec<String> {
    hosts
        .hosts
        .iter()
        .map(|h| h.repository_url(repository))
        .collect()
}

#[test]
fn containerd_docker_io_example() {
    let root = config_dir("dockerio");
    write(
        &root.0,
        "docker.io",
        "hosts.toml",
        r#"
server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]                   # Requires less trust, won't resolve tag to digest from this host
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"                  # Or absolute path /etc/containerd/certs.d/docker.io/docker-mirror.crt
"#,
    );
    let hosts = load(&root.0, "docker.io").unwrap();
    assert_eq!(
        hosts.source.as_deref(),
        Some(root.0.join("docker.io/hosts.toml").as_path())
    );
    assert_eq!(
        urls(&hosts, "library/busybox"),
        [
            "https://public-mirror.example.com/v2/library/busybox",
            "https://docker-mirror.internal/v2/library/busybox",
            "https://registry-1.docker.io/v2/library/busybox",
        ]
    );
    let h = &hosts.hosts;
    assert!(h[0].capabilities.has(Capabilities::PULL));
    assert!(!h[0].capabilities.has(Capabilities::RESOLVE));
    assert!(
        h[1].capabilities
            .has(Capabilities::PULL.with(Capabilities::RESOLVE))
    );
    assert!(!h[1].capabilities.has(Capabilities::PUSH));
    assert_eq!(h[1].tls.ca, [root.0.join("docker.io/docker-mirror.crt")]);
    assert_eq!(h[2].capabilities, Capabilities::ALL);
    assert!(h[2].upstream && !h[0].upstream && !h[1].upstream);
}

#[test]
fn containerd_tls_and_header_examples() {
    let root = config_dir("tls");
    write(
        &root.0,
        "192.168.31.250:5000",
        "hosts.toml",
        r#"
server = "https://registry.example.com"
ca = "/etc/certs/upstream.pem"

[host."https://192.168.31.250:5000"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
  client = [["/etc/certs/client.cert", "client.key"], "both.pem"]
  [host."https://192.168.31.250:5000".header]
    x-custom-1 = "custom header"
    x-custom-2 = ["a", "b"]
"#,
    );
    let hosts = load(&root.0, "192.168.31.250:5000").unwrap();
    let dir = root.0.join("192.168.31.250:5000");
    let mirror = &hosts.hosts[0];
    assert_eq!(mirror.host, "192.168.31.250:5000");
    assert!(mirror.tls.skip_verify);
    assert_eq!(
        mirror.tls.client,
        [
            (
                PathBuf::from("/etc/certs/client.cert"),
                Some(dir.join("client.key"))
            ),
            (dir.join("both.pem"), None),
        ]
    );
    assert_eq!(
        mirror.headers,
        [
            ("x-custom-1".to_string(), "custom header".to_string()),
            ("x-custom-2".to_string(), "a".to_string()),
            ("x-custom-2".to_string(), "b".to_string()),
        ]
    );
    let upstream = &hosts.hosts[1];
    assert_eq!(upstream.origin(), "https://registry.example.com");
    assert_eq!(upstream.tls.ca, [PathBuf::from("/etc/certs/upstream.pem")]);
    assert!(!upstream.tls.skip_verify);
}

#[test]
fn mirrors_keep_file_order_not_alphabetical() {
    let root = config_dir("order");
    write(
        &root.0,
        "registry.k8s.io",
        "hosts.toml",
        r#"
[host."http://zeta.local:5000"]
[host."http://alpha.local:5000"]
  capabilities = ["pull"]
[host."http://mid.local"]
"#,
    );
    let hosts = load(&root.0, "registry.k8s.io").unwrap();
    assert_eq!(
        urls(&hosts, "pause"),
        [
            "http://zeta.local:5000/v2/pause",
            "http://alpha.local:5000/v2/pause",
            "http://mid.local/v2/pause",
            "https://registry.k8s.io/v2/pause",
        ]
    );
}

#[test]
fn a_mirror_keeps_the_image_path() {
    let root = config_dir("path");
    write(
        &root.0,
        "registry.k8s.io",
        "hosts.toml",
        "[host.\"http://127.0.0.1:5000\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
    );
    let hosts = load(&root.0, "registry.k8s.io").unwrap();
    assert_eq!(
        format!("{}/manifests/3.10", hosts.hosts[0].repository_url("pause")),
        "http://127.0.0.1:5000/v2/pause/manifests/3.10"
    );
}

#[test]
fn server_paths_and_override_path() {
    let root = config_dir("override");
    write(
        &root.0,
        "docker.io",
        "hosts.toml",
        r#"
server = "registry-1.docker.io"
[host."https://a.example/"]
[host."https://b.example/v2/"]
[host."https://c.example/prefix"]
[host."https://d.example/api/v2/library"]
  override_path = true
[host."https://e.example"]
  override_path = true
"#,
    );
    let hosts = load(&root.0, "docker.io").unwrap();
    assert_eq!(
        urls(&hosts, "library/busybox"),
        [
            "https://a.example/v2/library/busybox",
            "https://b.example/v2/library/busybox",
            "https://c.example/prefix/v2/library/busybox",
            "https://d.example/api/v2/library/library/busybox",
            "https://e.example/library/busybox",
            "https://registry-1.docker.io/v2/library/busybox",
        ]
    );
}

#[test]
fn default_upstreams() {
    let root = config_dir("defaults");
    for (domain, want) in [
        ("docker.io", "https://registry-1.docker.io/v2/r"),
        ("quay.io", "https://quay.io/v2/r"),
        ("127.0.0.1:5000", "http://127.0.0.1:5000/v2/r"),
        ("localhost:5000", "http://localhost:5000/v2/r"),
        ("[::1]:5000", "http://[::1]:5000/v2/r"),
    ] {
        let hosts = load(&root.0, domain).unwrap();
        assert_eq!(hosts.source, None);
        assert_eq!(urls(&hosts, "r"), [want], "{domain}");
        assert_eq!(hosts.hosts[0].capabilities, Capabilities::ALL);
    }
    // Without `server`, the upstream is still tried last, with every
    // capability and the top-level TLS settings.
    write(
        &root.0,
        "quay.io",
        "hosts.toml",
        "capabilities = [\"pull\"]\nskip_verify = true\n[host.\"https://m.example\"]\n",
    );
    let hosts = load(&root.0, "quay.io").unwrap();
    assert_eq!(
        urls(&hosts, "r"),
        ["https://m.example/v2/r", "https://quay.io/v2/r"]
    );
    assert_eq!(hosts.hosts[1].capabilities, Capabilities::ALL);
    assert!(hosts.hosts[1].tls.skip_verify);
    // A loopback registry with TLS settings is spoken to over HTTPS.
    write(&root.0, "127.0.0.1:5000", "hosts.toml", "ca = \"ca.pem\"\n");
    assert_eq!(
        urls(&load(&root.0, "127.0.0.1:5000").unwrap(), "r"),
        ["https://127.0.0.1:5000/v2/r"]
    );
    write(&root.0, "127.0.0.1:5001", "ca.crt", "x");
    assert_eq!(
        urls(&load(&root.0, "127.0.0.1:5001").unwrap(), "r"),
        ["https://127.0.0.1:5001/v2/r"]
    );
}

#[test]
fn directory_lookup_order() {
    let root = config_dir("lookup");
    write(
        &root.0,
        "_default",
        "hosts.toml",
        "[host.\"http://default-mirror\"]\n",
    );
    let hosts = load(&root.0, "quay.io").unwrap();
    assert_eq!(
        urls(&hosts, "r"),
        ["http://default-mirror/v2/r", "https://quay.io/v2/r"]
    );
    // A registry's own directory wins over _default.
    write(&root.0, "quay.io", "hosts.toml", "[host.\"http://own\"]\n");
    assert_eq!(
        urls(&load(&root.0, "quay.io").unwrap(), "r"),
        ["http://own/v2/r", "https://quay.io/v2/r"]
    );
    // host:port also as containerd's host_port_ spelling, which comes first.
    write(
        &root.0,
        "h.local:5000",
        "hosts.toml",
        "[host.\"http://colon\"]\n",
    );
    assert_eq!(
        urls(&load(&root.0, "h.local:5000").unwrap(), "r")[0],
        "http://colon/v2/r"
    );
    write(
        &root.0,
        "h.local_5000_",
        "hosts.toml",
        "[host.\"http://underscore\"]\n",
    );
    assert_eq!(
        urls(&load(&root.0, "h.local:5000").unwrap(), "r")[0],
        "http://underscore/v2/r"
    );
}

#[test]
fn docker_certs_d_layout_without_hosts_toml() {
    let root = config_dir("certsd");
    write(&root.0, "reg.example:5000", "ca.crt", "x");
    write(&root.0, "reg.example:5000", "client.cert", "x");
    write(&root.0, "reg.example:5000", "client.key", "x");
    write(&root.0, "reg.example:5000", "alone.cert", "x");
    let dir = root.0.join("reg.example:5000");
    let hosts = load(&root.0, "reg.example:5000").unwrap();
    assert_eq!(hosts.hosts.len(), 1);
    let h = &hosts.hosts[0];
    assert_eq!(h.origin(), "https://reg.example:5000");
    assert_eq!(h.tls.ca, [dir.join("ca.crt")]);
    assert_eq!(
        h.tls.client,
        [
            (dir.join("alone.cert"), None),
            (dir.join("client.cert"), Some(dir.join("client.key"))),
        ]
    );
}

#[test]
fn malformed_files_name_themselves() {
    let root = config_dir("bad");
    for (text, says) in [
        ("server = ", "line 1, column 10: "),
        ("\n[host.\"http://m\"]\nca = [\"a\", \n", "line 3, column"),
        (
            "server = 5",
            "line 1, column 10 (`server`): invalid type: integer `5`, expected a string",
        ),
        (
            "[host.\"http://m\"]\ncapabilities = [\"pull\", \"fly\"]\n",
            "[host.\"http://m\"]: unknown capability \"fly\" (known: pull, resolve, push)",
        ),
        (
            "[host.\"http://m\"]\nca = 3\n",
            "line 2, column 6 (`host.\"http://m\".ca`): invalid type: integer `3`, expected a string or a list of strings",
        ),
        (
            "[host.\"http://m\"]\nca = [\"a\", 3]\n",
            "(`host.\"http://m\".ca`): invalid type: integer `3`, expected a string",
        ),
        (
            "[host.\"http://m\"]\nskip_verify = \"yes\"\n",
            "(`host.\"http://m\".skip_verify`): invalid type: string \"yes\", expected a boolean",
        ),
        (
            "skip_verify = 1\n",
            "line 1, column 15 (`skip_verify`): invalid type: integer `1`, expected a boolean",
        ),
        ("[host.\"ftp://m\"]\n", "must be http or https"),
        (
            "host = 1\n",
            "line 1, column 8 (`host`): invalid type: integer `1`, expected a table",
        ),
        (
            "host = { \"http://m\" = 1 }\n",
            "(`host.\"http://m\"`): invalid type: integer `1`, expected a table of host settings",
        ),
        (
            "[host.\"http://m\"]\nclient = [[\"a\"]]\n",
            "(`host.\"http://m\".client`): a `client` pair must be [\"cert\", \"key\"]",
        ),
        (
            "[host.\"http://m\"]\nclient = 5\n",
            "expected a path, a list of paths, or a list of [cert, key] pairs",
        ),
        (
            "[host.\"http://m\".header]\nx = 1\n",
            "(`host.\"http://m\".header.x`): invalid type: integer `1`, expected a string or a list of strings",
        ),
        (
            "[host.\"http://m\".header]\n\"x y\" = \"1\"\n",
            "[host.\"http://m\"]: \"x y\" is not a valid header name",
        ),
    ] {
        write(&root.0, "quay.io", "hosts.toml", text);
        match load(&root.0, "quay.io") {
            Err(Error::FailedPrecondition(m)) => {
                assert!(m.contains("quay.io/hosts.toml"), "{m}");
                assert!(m.contains(says), "{text:?}: {m}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn unknown_keys_are_ignored_as_containerd_does() {
    let root = config_dir("unknown");
    write(
        &root.0,
        "quay.io",
        "hosts.toml",
        r#"
server = "https://quay.io"
dial_timeout = "5s"
future_setting = { any = ["shape", 1] }

[host."https://m.example"]
  capabilities = ["pull"]
  dial_timeout = "1s"
  typo_d_key = true
"#,
    );
    let hosts = load(&root.0, "quay.io").unwrap();
    assert_eq!(
        urls(&hosts, "r"),
        ["https://m.example/v2/r", "https://quay.io/v2/r"]
    );
    assert_eq!(hosts.hosts[0].capabilities, Capabilities::PULL);
    let text = std::fs::read_to_string(root.0.join("quay.io/hosts.toml")).unwrap();
    let file: file::HostsFile = toml::from_str(&text).unwrap();
    assert_eq!(
        unknown_keys(&file),
        ["future_setting", "host.\"https://m.example\".typo_d_key"]
    );
}

#[test]
fn keys_are_named_as_toml_writes_them() {
    assert_eq!(toml_key("skip_verify"), "skip_verify");
    assert_eq!(toml_key("x-custom-1"), "x-custom-1");
    assert_eq!(toml_key("https://m"), "\"https://m\"");
    assert_eq!(toml_key(""), "\"\"");
    let text = "a = 1\n[t.\"k k\"]\nb = [1, 2]\n[t.u]\nc = { d = 3 }\n";
    let at = |needle: &str| text.find(needle).unwrap();
    assert_eq!(key_at(text, at("1")).as_deref(), Some("a"));
    assert_eq!(key_at(text, at("2")).as_deref(), Some("t.\"k k\".b"));
    assert_eq!(key_at(text, at("3")).as_deref(), Some("t.u.c.d"));
    assert_eq!(key_at("not = [toml", 7), None);
}

#[test]
fn capability_sets() {
    let pr = Capabilities::PULL.with(Capabilities::RESOLVE);
    assert!(Capabilities::ALL.has(pr));
    assert!(pr.has(Capabilities::PULL));
    assert!(!Capabilities::PULL.has(pr));
    assert!(!Capabilities::RESOLVE.has(Capabilities::PULL));
}

#[test]
fn loopback_hosts() {
    for h in [
        "localhost",
        "localhost:5000",
        "127.0.0.1:5000",
        "127.1.2.3",
        "[::1]:5000",
        "[::1]",
    ] {
        assert!(is_loopback(h), "{h}");
    }
    for h in [
        "registry-1.docker.io",
        "10.0.0.1:5000",
        "quay.io",
        "[fe80::1]:5000",
        "localhost.example.com",
    ] {
        assert!(!is_loopback(h), "{h}");
    }
}

#[test]
fn a_fifo_hosts_toml_is_refused_without_blocking() {
    let root = config_dir("fifo");
    let dir = root.0.join("registry.example");
    std::fs::create_dir_all(&dir).unwrap();
    nix::unistd::mkfifo(
        &dir.join(HOSTS_FILE),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    match load(&root.0, "registry.example") {
        Err(Error::FailedPrecondition(m)) => assert!(m.contains("FIFO"), "{m}"),
        other => panic!("a FIFO hosts.toml gave {:?}", other.map(|h| h.source)),
    }
}
