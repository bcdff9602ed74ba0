//! `make conformance`, part three: crictl, a client-go client, drives exec,
//! attach and port-forward through crustd's streaming server over both of its
//! transports; its WebSocket port-forward is SPDY tunnelled in WebSocket,
//! which the test crate's own client does not speak. Ignored by `make test`:
//! it needs crictl from `../shared/tools`, named in `CRUST_CRICTL`.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use crust_e2e::conformance::{self, CRICTL_ENV};
use crust_e2e::{TestEnv, run, wait};

/// crictl's two transports.
const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

/// How long one crictl command may take.
const LIMIT: Duration = Duration::from_secs(30);

#[test]
#[ignore = "needs crictl from ../shared/tools: run by `make conformance`"]
fn crictl_streams_through_crustd() {
    run("crictl_streams_through_crustd", crictl_streams);
}

/// crictl against this test's crustd.
struct Crictl {
    program: std::path::PathBuf,
    endpoint: String,
}

impl Crictl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env("CONTAINER_RUNTIME_ENDPOINT", &self.endpoint)
            .env("IMAGE_SERVICE_ENDPOINT", &self.endpoint)
            .args(args);
        cmd
    }

    /// Runs crictl with `input` on its stdin and waits (at most [`LIMIT`]);
    /// prints the exchange like a terminal session.
    async fn run(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        let out = self.run_quietly(args, input).await?;
        let shown = if input.is_empty() {
            String::new()
        } else {
            format!("printf {:?} | ", text(input))
        };
        let quoted: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains([' ', '>', ';', '&']) {
                    format!("'{a}'")
                } else {
                    a.to_string()
                }
            })
            .collect();
        println!("$ {shown}crictl {}", quoted.join(" "));
        print!("{}", text(&out.stdout));
        for line in text(&out.stderr)
            .lines()
            .filter(|l| !l.contains("crictl.yaml"))
        {
            println!("{line}");
        }
        println!("[exit {}]", out.status.code().unwrap_or(-1));
        Ok(out)
    }

    async fn run_quietly(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting crictl")?;
        let mut stdin = child.stdin.take().context("crictl's stdin")?;
        let input = input.to_vec();
        let what = format!("crictl {args:?}");
        tokio::time::timeout(
            LIMIT,
            tokio::task::spawn_blocking(move || {
                stdin.write_all(&input)?;
                drop(stdin);
                child.wait_with_output()
            }),
        )
        .await
        .with_context(|| format!("{what} did not finish"))??
        .with_context(|| format!("running {what}"))
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn crictl_streams(env: &mut TestEnv) -> Result<()> {
    let crictl = Crictl {
        program: conformance::tool(CRICTL_ENV)?,
        endpoint: format!("unix://{}", env.daemon.paths().socket.display()),
    };
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("crictl").await?;
    let web = env.shell_container(
        &pod,
        "web",
        "mkdir /www; echo from-the-pod > /www/index.html; httpd -p 8080 -h /www; exec sleep 3600",
    )?;
    let web_id = env.start_container(&pod, &web).await?;
    let mut cat = env.shell_container(&pod, "cat", "exec cat")?;
    cat.stdin = true;
    let cat_id = env.start_container(&pod, &cat).await?;

    for transport in TRANSPORTS {
        let t = ["--transport", transport];
        let out = crictl
            .run(
                &[&["exec"], &t[..], &[&web_id, "echo", "hello"]].concat(),
                b"",
            )
            .await?;
        ensure!(
            out.status.success() && text(&out.stdout) == "hello\n",
            "{transport}: crictl exec echo: {out:?}"
        );
        let seven = [
            &["exec"],
            &t[..],
            &[&web_id, "sh", "-c", "echo err >&2; exit 7"],
        ]
        .concat();
        let out = crictl.run(&seven, b"").await?;
        ensure!(
            !out.status.success() && text(&out.stderr).contains("exit code 7"),
            "{transport}: crictl exec of exit 7: {out:?}"
        );
        let out = crictl
            .run(
                &[&["exec", "-i"], &t[..], &[&web_id, "cat"]].concat(),
                b"piped in\n",
            )
            .await?;
        ensure!(
            out.status.success() && text(&out.stdout) == "piped in\n",
            "{transport}: crictl exec -i cat: {out:?}"
        );
        let line = format!("attached over {transport}\n");
        let out = crictl
            .run(
                &[&["attach", "-i"], &t[..], &[&cat_id]].concat(),
                line.as_bytes(),
            )
            .await?;
        ensure!(
            out.status.success() && text(&out.stdout) == line,
            "{transport}: crictl attach -i: {out:?}"
        );
        port_forward(&crictl, &pod.id, transport).await?;
    }
    exec_on_a_terminal(&crictl, &web_id).await
}

/// `crictl exec -it`, run on a terminal of its own that `script` provides.
async fn exec_on_a_terminal(crictl: &Crictl, id: &str) -> Result<()> {
    let line = format!(
        "{} exec -it {id} sh -c 'tty; echo on-a-terminal'",
        crictl.program.display()
    );
    let mut script = Command::new("script");
    script
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("CONTAINER_RUNTIME_ENDPOINT", &crictl.endpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = script.spawn().context("starting script (bsdutils)")?;
    let out = tokio::time::timeout(
        LIMIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .context("crictl exec -it did not finish")???;
    let shown = text(&out.stdout).replace('\r', "");
    println!(
        "$ crictl exec -it {id} sh -c 'tty; echo on-a-terminal'\n{shown}[exit {}]",
        out.status.code().unwrap_or(-1)
    );
    ensure!(
        out.status.success() && shown.contains("/dev/pts/") && shown.contains("on-a-terminal"),
        "crictl exec -it: {out:?}"
    );
    Ok(())
}

/// `crictl port-forward` to the pod's web server, then three GETs through it.
async fn port_forward(crictl: &Crictl, pod: &str, transport: &str) -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let local = listener.local_addr()?.port();
    drop(listener);
    let mapping = format!("{local}:8080");
    let mut child = crictl
        .command(&["port-forward", "--transport", transport, pod, &mapping])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting crictl port-forward")?;
    let result = async {
        wait::until("crictl port-forward to listen", LIMIT, || async {
            Ok(std::net::TcpStream::connect(("127.0.0.1", local))
                .ok()
                .map(drop))
        })
        .await?;
        println!("$ crictl port-forward --transport {transport} {pod} {mapping} &");
        for _ in 0..3 {
            let body = tokio::task::spawn_blocking(move || get(local)).await??;
            println!(
                "(GET http://127.0.0.1:{local}/index.html through it: {:?})",
                body.lines().last().unwrap_or("")
            );
            ensure!(
                body.ends_with("from-the-pod\n"),
                "{transport}: GET through crictl port-forward: {body:?}"
            );
        }
        Ok(())
    }
    .await;
    let _ = child.kill();
    let out = child.wait_with_output()?;
    result.with_context(|| {
        format!(
            "crictl port-forward said {:?} {:?}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

fn get(port: u16) -> Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(LIMIT))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
