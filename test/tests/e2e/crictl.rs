//! `make conformance`, part three: crictl, a client-go client, drives exec,
//! attach and port-forward through crustd's streaming server over both of its
//! transports (its WebSocket port-forward is SPDY tunnelled in WebSocket,
//! which the test crate's own client does not speak), and reads crust's
//! stats, metrics, info and events as an operator would. Ignored by `make test`:
//! it needs crictl from `../shared/tools`, named in `CRUST_CRICTL`.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use crust_e2e::conformance::{self, CRICTL_ENV};
use crust_e2e::{Pod, TestEnv, run, wait};
use serde_json::Value;

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
    exec_on_a_terminal(&crictl, &web_id).await?;
    stats_info_and_events(env, &crictl, &pod, &web_id).await
}

/// crictl's JSON output of `args`, which must succeed.
async fn json_of(crictl: &Crictl, args: &[&str]) -> Result<Value> {
    let out = crictl.run_quietly(args, b"").await?;
    ensure!(out.status.success(), "crictl {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("crictl {args:?} printed no JSON: {}", text(&out.stdout)))
}

/// `crictl stats`, `statsp`, `metricsp`, `info` and `events` read what crust
/// answers.
async fn stats_info_and_events(
    env: &TestEnv,
    crictl: &Crictl,
    pod: &Pod,
    web_id: &str,
) -> Result<()> {
    let stats = json_of(crictl, &["stats", "-o", "json", "--id", web_id]).await?;
    let web = &stats["stats"][0];
    ensure!(
        web["attributes"]["id"] == web_id
            && web["memory"]["workingSetBytes"]["value"].is_string()
            && web["cpu"]["usageCoreNanoSeconds"]["value"].is_string()
            && web["writableLayer"]["fsId"]["mountpoint"].is_string(),
        "crictl stats: {stats}"
    );
    println!(
        "$ crictl stats -o json --id {web_id}   (working set {}, CPU {} ns)",
        web["memory"]["workingSetBytes"]["value"], web["cpu"]["usageCoreNanoSeconds"]["value"]
    );
    // `crictl update` sends only the limits it is given; the others keep
    // theirs.
    let out = crictl
        .run(
            &[
                "update",
                "--memory",
                "100000000",
                "--cpu-share",
                "300",
                web_id,
            ],
            b"",
        )
        .await?;
    ensure!(out.status.success(), "crictl update: {out:?}");
    let inspect = json_of(crictl, &["inspect", "-o", "json", web_id]).await?;
    let linux = &inspect["status"]["resources"]["linux"];
    ensure!(
        linux["memoryLimitInBytes"] == "100000000" && linux["cpuShares"] == "300",
        "crictl inspect after crictl update shows {linux}"
    );
    println!("$ crictl inspect -o json {web_id}   (resources.linux: {linux})");
    let pods = json_of(crictl, &["statsp", "-o", "json", "--id", &pod.id]).await?;
    let linux = &pods["stats"][0]["linux"];
    ensure!(
        linux["process"]["processCount"]["value"].is_string()
            && linux["containers"].as_array().is_some_and(|c| c.len() == 2),
        "crictl statsp: {pods}"
    );
    let metrics = json_of(crictl, &["metricsp", "-o", "json"]).await?;
    let ours = metrics["podMetrics"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["podSandboxId"] == pod.id.as_str()))
        .with_context(|| format!("crictl metricsp lacks the pod: {metrics}"))?;
    ensure!(
        ours["containerMetrics"]
            .as_array()
            .is_some_and(|c| c.len() == 2),
        "crictl metricsp: {ours}"
    );
    let info = json_of(crictl, &["info", "-o", "json"]).await?;
    ensure!(
        info["status"]["conditions"].is_array()
            && info["config"]["socket"].is_string()
            && info["cniconfig"]["confDirs"].is_array()
            && info["runtimeHandlers"]["handlers"][0]["name"] == "",
        "crictl info: {info}"
    );
    println!(
        "$ crictl info -o json   (keys: {:?})",
        info.as_object().map(|o| o.keys().collect::<Vec<_>>())
    );

    // `crictl events` sees a container start.
    let mut events = crictl
        .command(&["events", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting crictl events")?;
    let stdout = events.stdout.take().context("crictl events' stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
            all.push_str(&line);
            line.clear();
            if tx.send(all.clone()).is_err() {
                break;
            }
        }
    });
    // Let it subscribe before the container starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = env.shell_container(pod, "late", "exec sleep 3600")?;
    let late_id = env.start_container(pod, &late).await?;
    let seen = wait::until("crictl events to show the start", LIMIT, || {
        let latest = rx.try_iter().last();
        let late_id = late_id.clone();
        async move {
            Ok(latest
                .filter(|all| all.contains(&late_id) && all.contains("CONTAINER_STARTED_EVENT")))
        }
    })
    .await;
    let _ = events.kill();
    let _ = events.wait();
    seen.map(|_| println!("$ crictl events -o json   (CONTAINER_STARTED_EVENT for {late_id})"))
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
