//! Exec, attach and port-forward through crustd's streaming server, driven by
//! the test crate's own SPDY/3.1 and WebSocket client (written the way
//! client-go speaks, independently of crustd's server code).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::bench::memory::ProcessMemory;
use crust_e2e::cri::ContainerState;
use crust_e2e::daemon::STREAM_TOKEN_TIMEOUT_S;
use crust_e2e::streaming::spdy::{SpdyConfig, SpdyConnection};
use crust_e2e::streaming::spdy_frame::Headers;
use crust_e2e::streaming::{
    Outcome, PORT_FORWARD_PROTOCOL, PortForwardOptions, RemoteCommand, StreamOptions, Transport,
    UpgradeError, port_forward, port_forward_with, remote_command, upgrade_status,
};
use crust_e2e::tls::TestCerts;
use crust_e2e::{Pod, Streams, TestEnv, run, wait};
use tonic::Code;

/// Both transports, as crictl's `--transport` offers them.
const TRANSPORTS: [Transport; 2] = [Transport::Spdy, Transport::WebSocket];

/// How long one session may take in these tests.
const LIMIT: Duration = Duration::from_secs(30);

/// The CRI streams matching the client's options.
fn streams(opts: &StreamOptions) -> Streams {
    Streams {
        stdin: opts.stdin,
        stdout: opts.stdout,
        stderr: opts.stderr,
        tty: opts.tty,
    }
}

/// Starts a pod with a long-running busybox container; returns both.
async fn sleeper(env: &TestEnv, name: &str) -> Result<(Pod, String)> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod(name).await?;
    let config = env.shell_container(&pod, "sleeper", "exec sleep 3600")?;
    let id = env.start_container(&pod, &config).await?;
    Ok((pod, id))
}

/// Execs `cmd` over `transport` and returns the session.
async fn exec(
    env: &TestEnv,
    id: &str,
    cmd: &[&str],
    transport: Transport,
    opts: StreamOptions,
) -> Result<RemoteCommand> {
    let url = env.cri.exec_url(id, cmd, streams(&opts)).await?;
    remote_command(&url, transport, opts)
        .await
        .with_context(|| format!("exec {cmd:?} over {transport:?}"))
}

/// Execs `cmd` with stdout and stderr and waits for its outcome.
async fn run_to_end(
    env: &TestEnv,
    id: &str,
    cmd: &[&str],
    transport: Transport,
) -> Result<Outcome> {
    exec(env, id, cmd, transport, StreamOptions::output())
        .await?
        .finish(LIMIT)
        .await
}

/// Whether a process whose command line contains `marker` runs in container `id`.
async fn running_in(env: &TestEnv, id: &str, marker: &str) -> Result<bool> {
    let ps = env
        .sh(
            id,
            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done",
        )
        .await?;
    Ok(ps
        .lines()
        .any(|l| l.contains(marker) && !l.contains("/proc/")))
}

#[test]
fn exec_carries_output_exit_codes_and_errors() {
    run("exec_carries_output_exit_codes_and_errors", exec_outcomes);
}

async fn exec_outcomes(env: &mut TestEnv) -> Result<()> {
    let (_pod, id) = sleeper(env, "exec").await?;
    for transport in TRANSPORTS {
        let ok = run_to_end(env, &id, &["echo", "hello"], transport).await?;
        ensure!(ok.stdout_text() == "hello\n", "{transport:?}: {ok:?}");
        ensure!(ok.exit_code == Some(0), "{transport:?}: {ok:?}");

        let seven = run_to_end(
            env,
            &id,
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            transport,
        )
        .await?;
        ensure!(
            seven.stdout_text() == "out\n" && seven.stderr_text() == "err\n",
            "{transport:?}: {seven:?}"
        );
        ensure!(seven.exit_code == Some(7), "{transport:?}: {seven:?}");
        let status = seven.status_json.as_ref().context("no v4 status")?;
        ensure!(
            status["reason"] == "NonZeroExitCode"
                && status["details"]["causes"][0]["reason"] == "ExitCode",
            "{transport:?}: {status}"
        );

        let missing = run_to_end(env, &id, &["no-such-command"], transport).await?;
        let error = missing.error.clone().unwrap_or_default();
        ensure!(
            error.contains("no-such-command") && missing.exit_code.is_none(),
            "{transport:?}: a command that does not exist gave {missing:?}"
        );
    }

    // Older protocols report a non-zero exit as text on the error stream.
    let v1 = exec(
        env,
        &id,
        &["sh", "-c", "exit 3"],
        Transport::Spdy,
        StreamOptions::output().with_protocols(&["channel.k8s.io"]),
    )
    .await?;
    ensure!(
        v1.protocol() == "channel.k8s.io",
        "negotiated {}",
        v1.protocol()
    );
    let v1 = v1.finish(LIMIT).await?;
    ensure!(
        v1.error
            .as_deref()
            .is_some_and(|e| e.contains("exit code 3")),
        "v1 exit 3: {v1:?}"
    );

    // Exec needs a running container, a command, and coherent streams.
    let err = env
        .cri
        .exec_url(&id, &[], streams(&StreamOptions::output()))
        .await;
    expect_code(err, Code::InvalidArgument, "Exec without a command")?;
    let tty_and_stderr = Streams {
        stdout: true,
        stderr: true,
        tty: true,
        ..Streams::default()
    };
    let err = env.cri.exec_url(&id, &["true"], tty_and_stderr).await;
    expect_code(err, Code::InvalidArgument, "Exec with tty and stderr")?;
    let err = env
        .cri
        .exec_url(
            "no-such-container",
            &["true"],
            streams(&StreamOptions::output()),
        )
        .await;
    expect_code(err, Code::NotFound, "Exec in an unknown container")?;
    env.cri.stop_container(&id, 0).await?;
    let err = env
        .cri
        .exec_url(&id, &["true"], streams(&StreamOptions::output()))
        .await;
    expect_code(err, Code::FailedPrecondition, "Exec in a stopped container")?;
    Ok(())
}

#[test]
fn exec_stdin_reaches_the_process() {
    run("exec_stdin_reaches_the_process", exec_stdin);
}

async fn exec_stdin(env: &mut TestEnv) -> Result<()> {
    let (_pod, id) = sleeper(env, "stdin").await?;
    // Past SPDY's 64 KiB window and the per-stream queues, in odd-sized writes.
    let payload: Vec<u8> = (0..(3 << 20) + 12_345)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    for transport in TRANSPORTS {
        let mut cat = exec(env, &id, &["cat"], transport, StreamOptions::interactive()).await?;
        cat.write_stdin(b"line one\n").await?;
        let first = cat.read_stdout_until(b"line one\n", LIMIT).await?;
        ensure!(first == b"line one\n", "{transport:?}: echoed {first:?}");
        for piece in payload.chunks(100_003) {
            cat.write_stdin(piece).await?;
        }
        cat.close_stdin().await?;
        let out = cat.finish(LIMIT).await?;
        ensure!(out.exit_code == Some(0), "{transport:?}: {:?}", out.error);
        ensure!(
            out.stdout.len() == payload.len() + "line one\n".len()
                && out.stdout.ends_with(&payload[payload.len() - 1000..]),
            "{transport:?}: cat echoed {} bytes of {}",
            out.stdout.len(),
            payload.len() + 9
        );
    }
    Ok(())
}

#[test]
fn exec_on_a_terminal_follows_resizes() {
    run("exec_on_a_terminal_follows_resizes", exec_terminal);
}

async fn exec_terminal(env: &mut TestEnv) -> Result<()> {
    let (_pod, id) = sleeper(env, "tty").await?;
    let script = "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; while read line; do stty size; done";
    for transport in TRANSPORTS {
        let mut term = exec(
            env,
            &id,
            &["sh", "-c", script],
            transport,
            StreamOptions::terminal(),
        )
        .await?;
        term.read_stdout_until(b"is-a-tty", LIMIT).await?;
        for (width, height) in [(100u16, 30u16), (132, 43)] {
            term.resize(width, height).await?;
            let wanted = format!("{height} {width}");
            // The new size reaches the container's terminal through runc
            // (SIGWINCH) while the newline travels on stdin: ask until it shows.
            let deadline = Instant::now() + LIMIT;
            loop {
                term.write_stdin(b"\n").await?;
                match term
                    .read_stdout_until(wanted.as_bytes(), Duration::from_millis(500))
                    .await
                {
                    Ok(_) => break,
                    Err(_) if Instant::now() < deadline => continue,
                    Err(e) => {
                        return Err(e.context(format!("{transport:?}: stty never said {wanted}")));
                    }
                }
            }
        }
        // End of input on a terminal is ^D: the loop's `read` sees end of file.
        term.write_stdin(b"\x04").await?;
        let out = term.finish(LIMIT).await?;
        ensure!(out.exit_code == Some(0), "{transport:?}: {out:?}");
        ensure!(
            out.stderr.is_empty(),
            "{transport:?}: a terminal has no stderr: {out:?}"
        );
    }
    Ok(())
}

#[test]
fn an_exec_whose_client_left_is_killed() {
    run("an_exec_whose_client_left_is_killed", exec_client_left);
}

async fn exec_client_left(env: &mut TestEnv) -> Result<()> {
    let (_pod, id) = sleeper(env, "left").await?;
    for (transport, marker) in [(Transport::Spdy, "4321"), (Transport::WebSocket, "4322")] {
        let session = exec(
            env,
            &id,
            &["sleep", marker],
            transport,
            StreamOptions::output(),
        )
        .await?;
        wait::until("the exec'd sleep to run", LIMIT, || async {
            Ok(running_in(env, &id, &format!("sleep {marker}"))
                .await?
                .then_some(()))
        })
        .await?;
        session.disconnect();
        wait::until("the exec'd sleep to be killed", LIMIT, || async {
            Ok((!running_in(env, &id, &format!("sleep {marker}")).await?).then_some(()))
        })
        .await?;
    }

    // ExecSync without a timeout whose client gives up.
    let call = env.cri.exec_sync(&id, &["sleep", "4323"], 0);
    ensure!(
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .is_err(),
        "ExecSync of sleep returned early"
    );
    wait::until("the ExecSync sleep to be killed", LIMIT, || async {
        Ok((!running_in(env, &id, "sleep 4323").await?).then_some(()))
    })
    .await?;
    Ok(())
}

#[test]
fn attach_follows_a_container_across_detach_and_a_crustd_kill() {
    run(
        "attach_follows_a_container_across_detach_and_a_crustd_kill",
        attach_counter,
    );
}

async fn attach_counter(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("attach").await?;
    let script = "i=0; while true; do echo tick $i; echo tock $i >&2; i=$((i+1)); sleep 0.2; done";
    let config = env.shell_container(&pod, "counter", script)?;
    let id = env.start_container(&pod, &config).await?;
    let output = StreamOptions::output();

    let mut seen = 0;
    for round in 0..4 {
        if round == 2 {
            env.kill_daemon().await?;
            env.restart_daemon().await?;
        }
        let transport = TRANSPORTS[round % 2];
        let url = env.cri.attach_url(&id, streams(&output)).await?;
        let mut attached = remote_command(&url, transport, output.clone()).await?;
        let got = attached.read_stdout_until(b"\n", LIMIT).await?;
        let got = String::from_utf8_lossy(&got).into_owned();
        let tick: u64 = got
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("tick "))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("round {round}: attach read {got:?}"))?;
        ensure!(tick >= seen, "round {round}: tick {tick} after {seen}");
        let later = format!("tick {}\n", tick + 3);
        attached.read_stdout_until(later.as_bytes(), LIMIT).await?;
        seen = tick + 3;
        attached.disconnect();
    }

    // The log kept every line while clients came and went.
    let log = std::fs::read_to_string(pod.log_file(&config))?;
    let ticks: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split_once(" stdout F tick "))
        .filter_map(|(_, n)| n.parse().ok())
        .collect();
    ensure!(
        ticks.len() as u64 > seen && ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "the log lost lines: {ticks:?}"
    );

    // Stdin needs a container created with stdin.
    let with_stdin = Streams {
        stdin: true,
        stdout: true,
        ..Streams::default()
    };
    let err = env.cri.attach_url(&id, with_stdin).await;
    expect_code(
        err,
        Code::FailedPrecondition,
        "Attach with stdin to a container without",
    )?;
    Ok(())
}

#[test]
fn attach_stdin_stays_open_and_closes_once() {
    run("attach_stdin_stays_open_and_closes_once", attach_stdin);
}

async fn attach_stdin(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("stdin").await?;
    let interactive = StreamOptions {
        stdin: true,
        stdout: true,
        stderr: true,
        ..StreamOptions::default()
    };

    // stdin: a cat started with nobody attached keeps waiting for input.
    let mut kept = env.shell_container(&pod, "kept", "exec cat")?;
    kept.stdin = true;
    let kept_id = env.start_container(&pod, &kept).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let state = env.cri.container_status(&kept_id).await?.state;
    ensure!(
        state == ContainerState::ContainerRunning as i32,
        "a stdin container ended before anyone attached (state {state})"
    );
    for (round, transport) in TRANSPORTS.into_iter().enumerate() {
        let url = env.cri.attach_url(&kept_id, streams(&interactive)).await?;
        let mut attached = remote_command(&url, transport, interactive.clone()).await?;
        let line = format!("round {round}\n");
        attached.write_stdin(line.as_bytes()).await?;
        attached.read_stdout_until(line.as_bytes(), LIMIT).await?;
        // The client's end of input detaches it; the container keeps running.
        attached.close_stdin().await?;
        let out = attached.finish(LIMIT).await?;
        ensure!(out.error.is_none(), "{transport:?}: detach gave {out:?}");
    }
    let state = env.cri.container_status(&kept_id).await?.state;
    ensure!(
        state == ContainerState::ContainerRunning as i32,
        "cat ended after a detach"
    );

    // stdin_once: the first client leaving closes the container's stdin.
    let mut once = env.shell_container(&pod, "once", "cat; echo cat-saw-eof")?;
    once.stdin = true;
    once.stdin_once = true;
    let once_id = env.start_container(&pod, &once).await?;
    let url = env.cri.attach_url(&once_id, streams(&interactive)).await?;
    let mut attached = remote_command(&url, Transport::Spdy, interactive.clone()).await?;
    attached.write_stdin(b"only once\n").await?;
    attached.read_stdout_until(b"only once\n", LIMIT).await?;
    attached.close_stdin().await?;
    let out = attached.finish(LIMIT).await?;
    ensure!(
        out.stdout_text().contains("cat-saw-eof"),
        "stdin_once: the container's stdin stayed open: {out:?}"
    );
    env.wait_for_state(&once_id, ContainerState::ContainerExited, LIMIT)
        .await?;

    // A terminal container: input, output and resizes go through its shim.
    let mut tty = env.shell_container(&pod, "tty", "while read line; do stty size; done")?;
    tty.tty = true;
    tty.stdin = true;
    let tty_id = env.start_container(&pod, &tty).await?;
    let terminal = StreamOptions::terminal();
    let url = env.cri.attach_url(&tty_id, streams(&terminal)).await?;
    let mut attached = remote_command(&url, Transport::WebSocket, terminal).await?;
    attached.resize(91, 19).await?;
    let deadline = Instant::now() + LIMIT;
    loop {
        attached.write_stdin(b"\n").await?;
        match attached
            .read_stdout_until(b"19 91", Duration::from_millis(500))
            .await
        {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => continue,
            Err(e) => return Err(e.context("stty never saw the attached client's size")),
        }
    }
    attached.disconnect();
    Ok(())
}

/// A pod serving `index.html` on two ports with busybox httpd, and an `nc`
/// waiting for one connection on port 9000 (what it gets goes to
/// `/tmp/nc.out`); returns the pod and the container.
async fn web_pod(env: &TestEnv) -> Result<(Pod, String)> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("web").await?;
    let script = "mkdir -p /www1 /www2; echo one > /www1/index.html; echo two > /www2/index.html; \
                  httpd -p 8080 -h /www1; httpd -p 8081 -h /www2; \
                  nc -l -p 9000 > /tmp/nc.out & exec sleep 3600";
    let config = env.shell_container(&pod, "web", script)?;
    let id = env.start_container(&pod, &config).await?;
    wait::until("httpd to listen", LIMIT, || async {
        let out = env
            .exec(&id, &["sh", "-c", "wget -q -O - http://127.0.0.1:8081/"])
            .await?;
        Ok((out.stdout == "two\n").then_some(()))
    })
    .await?;
    Ok((pod, id))
}

/// A GET of `/` through a forwarded connection; returns the body.
async fn get(mut conn: crust_e2e::streaming::PortForwardConn) -> Result<String> {
    conn.send(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n").await?;
    let response = conn.read_to_end(LIMIT).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .with_context(|| format!("not an HTTP response: {text:?}"))?;
    Ok(body)
}

#[test]
fn port_forward_reaches_two_ports_with_parallel_connections() {
    run(
        "port_forward_reaches_two_ports_with_parallel_connections",
        port_forward_parallel,
    );
}

async fn port_forward_parallel(env: &mut TestEnv) -> Result<()> {
    let (pod, web_id) = web_pod(env).await?;
    let expected = |port: u16| if port == 8080 { "one\n" } else { "two\n" };

    // SPDY: 40 connections open at once on one session, over both ports:
    // 80 streams, more than a session's cap on streams that are not paired
    // port-forward connections.
    let url = env.cri.port_forward_url(&pod.id, &[8080, 8081]).await?;
    let session = port_forward(&url, Transport::Spdy).await?;
    let ports: Vec<u16> = (0..40u16).map(|i| 8080 + i % 2).collect();
    let conns = futures_util::future::join_all(ports.iter().map(|&p| session.connect(p))).await;
    let mut gets = Vec::new();
    for (&port, conn) in ports.iter().zip(conns) {
        let conn = conn.with_context(|| format!("connection on port {port}"))?;
        gets.push(async move { (port, get(conn).await) });
    }
    for (port, body) in futures_util::future::join_all(gets).await {
        let body = body?;
        ensure!(body == expected(port), "SPDY port {port} answered {body:?}");
    }
    // Nothing listens on 9: the error stream says so and the session lives on.
    let mut refused = session.connect(9).await?;
    let error = refused.error().await.unwrap_or_default();
    ensure!(
        error.contains('9') && !error.is_empty(),
        "port 9 gave {error:?}"
    );
    let body = get(session.connect(8080).await?).await?;
    ensure!(
        body == "one\n",
        "after the failed connection, port 8080 answered {body:?}"
    );
    session.close().await;

    // WebSocket: one connection per port and session, 10 sessions at once.
    let mut sessions = Vec::new();
    for _ in 0..10 {
        let url = env.cri.port_forward_url(&pod.id, &[8080, 8081]).await?;
        sessions.push(async move {
            let opts = PortForwardOptions {
                ports: vec![8080, 8081],
                ..PortForwardOptions::default()
            };
            let session = port_forward_with(&url, Transport::WebSocket, opts).await?;
            let (a, b) = tokio::join!(async { get(session.connect(8080).await?).await }, async {
                get(session.connect(8081).await?).await
            });
            session.close().await;
            Ok::<_, anyhow::Error>((a?, b?))
        });
    }
    for result in futures_util::future::join_all(sessions).await {
        let (a, b) = result?;
        ensure!(
            a == "one\n" && b == "two\n",
            "WebSocket answered {a:?} and {b:?}"
        );
    }

    // A client that leaves ends its connections in the pod, even idle ones.
    let url = env.cri.port_forward_url(&pod.id, &[9000]).await?;
    let session = port_forward(&url, Transport::Spdy).await?;
    let mut conn = session.connect(9000).await?;
    conn.send(b"hello nc\n").await?;
    wait::until("nc to get the connection", LIMIT, || async {
        let got = env.exec(&web_id, &["cat", "/tmp/nc.out"]).await?;
        let open = running_in(env, &web_id, "nc -l").await?;
        Ok((got.stdout.contains("hello nc") && open).then_some(()))
    })
    .await?;
    session.disconnect();
    wait::until("nc's connection to be closed", LIMIT, || async {
        Ok((!running_in(env, &web_id, "nc -l").await?).then_some(()))
    })
    .await?;

    let err = env.cri.port_forward_url(&pod.id, &[0]).await;
    expect_code(err, Code::InvalidArgument, "PortForward of port 0")?;
    let err = env.cri.port_forward_url("no-such-pod", &[80]).await;
    expect_code(err, Code::NotFound, "PortForward to an unknown pod")?;
    Ok(())
}

#[test]
fn stream_urls_work_once_and_expire() {
    run("stream_urls_work_once_and_expire", tokens);
}

async fn tokens(env: &mut TestEnv) -> Result<()> {
    let (_pod, id) = sleeper(env, "tokens").await?;
    let opts = StreamOptions::output();
    for transport in TRANSPORTS {
        let url = env.cri.exec_url(&id, &["true"], streams(&opts)).await?;
        let done = remote_command(&url, transport, opts.clone())
            .await?
            .finish(LIMIT)
            .await?;
        ensure!(done.exit_code == Some(0), "{done:?}");
        let again = upgrade_status(&url, transport).await?;
        ensure!(again == 404, "{transport:?}: a used URL answered {again}");

        let late = env
            .cri
            .exec_url(&id, &["touch", "/tmp/late"], streams(&opts))
            .await?;
        tokio::time::sleep(Duration::from_secs(STREAM_TOKEN_TIMEOUT_S + 1)).await;
        let expired = upgrade_status(&late, transport).await?;
        ensure!(
            expired == 404,
            "{transport:?}: an expired URL answered {expired}"
        );
        let (base, _) = late.rsplit_once('/').context("URL without a token")?;
        let made_up = format!("{base}/0123456789abcdef0123456789abcdef");
        let unknown = upgrade_status(&made_up, transport).await?;
        ensure!(
            unknown == 404,
            "{transport:?}: a made-up token answered {unknown}"
        );
    }
    let touched = env.exec(&id, &["ls", "/tmp/late"]).await?;
    ensure!(touched.exit_code != 0, "an expired URL ran its command");
    Ok(())
}

#[test]
fn a_stalled_client_does_not_grow_crustd() {
    run("a_stalled_client_does_not_grow_crustd", stalled_client);
}

/// crustd's resident memory in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

async fn stalled_client(env: &mut TestEnv) -> Result<()> {
    const SIZE: u64 = 200 << 20;
    let (_pod, id) = sleeper(env, "stalled").await?;
    let pid = env.daemon.pid().context("crustd is not running")?;
    // Warm up allocator and sessions first, so the baseline is fair.
    run_to_end(env, &id, &["true"], Transport::Spdy).await?;
    for transport in TRANSPORTS {
        let before = rss_kib(pid)?;
        let cmd = format!("head -c {SIZE} /dev/zero");
        let mut flood = exec(
            env,
            &id,
            &["sh", "-c", &cmd],
            transport,
            StreamOptions::output(),
        )
        .await?;
        flood.read_stdout_until(&[0], LIMIT).await?;
        // The client stops reading while the process has 200 MiB to write.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stalled = rss_kib(pid)?;
        let out = flood.finish(Duration::from_secs(120)).await?;
        ensure!(out.exit_code == Some(0), "{transport:?}: {:?}", out.error);
        ensure!(
            out.stdout.len() as u64 == SIZE,
            "{transport:?}: {} bytes arrived of {SIZE}",
            out.stdout.len()
        );
        let grew = stalled.saturating_sub(before);
        println!("{transport:?}: crustd RSS {before} KiB before, {stalled} KiB while stalled");
        if grew > 32 << 10 {
            bail!("{transport:?}: crustd grew by {grew} KiB while a client did not read");
        }
    }
    Ok(())
}

#[test]
fn stream_server_settings_apply() {
    run("stream_server_settings_apply", settings);
}

async fn settings(env: &mut TestEnv) -> Result<()> {
    let (_pod, id) = sleeper(env, "settings").await?;

    // Three streams at most: an exec with stdout and stderr (and the error
    // stream) fits; one that adds stdin does not.
    env.reconfigure_stream("max_streams = 3\nidle_timeout = 2")
        .await?;
    let fits = run_to_end(env, &id, &["echo", "fits"], Transport::Spdy).await?;
    ensure!(fits.stdout_text() == "fits\n", "{fits:?}");
    let refused = async {
        exec(
            env,
            &id,
            &["cat"],
            Transport::Spdy,
            StreamOptions::interactive(),
        )
        .await?
        .finish(LIMIT)
        .await
    };
    let refused = tokio::time::timeout(LIMIT, refused).await;
    ensure!(
        !matches!(refused, Ok(Ok(ref o)) if o.exit_code == Some(0)),
        "an exec past the stream limit ran: {refused:?}"
    );
    // A session that carries nothing for idle_timeout is closed, and its
    // process killed.
    let idle = exec(
        env,
        &id,
        &["sleep", "4324"],
        Transport::Spdy,
        StreamOptions::output(),
    )
    .await?;
    let started = Instant::now();
    let out = idle.finish(LIMIT).await?;
    ensure!(
        started.elapsed() < Duration::from_secs(15) && out.exit_code.is_none(),
        "an idle session lasted {:?}: {out:?}",
        started.elapsed()
    );
    wait::until("the idle session's sleep to be killed", LIMIT, || async {
        Ok((!running_in(env, &id, "sleep 4324").await?).then_some(()))
    })
    .await?;

    // TLS: the URLs say https, and the server answers over TLS.
    let certs = TestCerts::make(&env.daemon.paths().base)?;
    env.reconfigure_stream(&format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        certs.server_cert, certs.server_key
    ))
    .await?;
    let url = env
        .cri
        .exec_url(&id, &["true"], streams(&StreamOptions::output()))
        .await?;
    ensure!(
        url.starts_with("https://127.0.0.1:"),
        "a TLS server handed out {url}"
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca)?)?;
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()?;
    let plain = https.post(&url).send().await?;
    ensure!(
        plain.status() == reqwest::StatusCode::BAD_REQUEST,
        "a request without an upgrade got {}",
        plain.status()
    );
    let reused = https.post(&url).send().await?;
    ensure!(
        reused.status() == reqwest::StatusCode::NOT_FOUND,
        "a used URL over TLS got {}",
        reused.status()
    );
    Ok(())
}

#[test]
fn a_client_that_leaves_a_stalled_stream_ends_its_exec() {
    run(
        "a_client_that_leaves_a_stalled_stream_ends_its_exec",
        client_leaves_stalled,
    );
}

/// Fills stdin of a process that never reads it until the session stalls
/// (pipe, crustd's queue, TCP), then drops the connection.
async fn stall_and_leave(
    env: &TestEnv,
    id: &str,
    transport: Transport,
    marker: &str,
) -> Result<()> {
    let mut session = exec(
        env,
        id,
        &["sleep", marker],
        transport,
        StreamOptions::interactive(),
    )
    .await?;
    wait::until("the exec'd sleep to run", LIMIT, || async {
        Ok(running_in(env, id, &format!("sleep {marker}"))
            .await?
            .then_some(()))
    })
    .await?;
    let chunk = vec![b'x'; 64 << 10];
    let mut stalled = false;
    for _ in 0..1024 {
        if tokio::time::timeout(Duration::from_secs(2), session.write_stdin(&chunk))
            .await
            .is_err()
        {
            stalled = true;
            break;
        }
    }
    ensure!(
        stalled,
        "{transport:?}: 64 MiB went into a process that reads nothing"
    );
    session.disconnect();
    Ok(())
}

async fn client_leaves_stalled(env: &mut TestEnv) -> Result<()> {
    let (_pod, id) = sleeper(env, "stall").await?;
    let (spdy, ws) = tokio::join!(
        stall_and_leave(env, &id, Transport::Spdy, "4325"),
        stall_and_leave(env, &id, Transport::WebSocket, "4326")
    );
    spdy?;
    ws?;
    // crustd finds the client gone when a ping it writes fails (every 15 s),
    // even while its reader waits on the full stdin stream.
    wait::until(
        "both stalled execs to be killed",
        Duration::from_secs(150),
        || async {
            let left = running_in(env, &id, "sleep 4325").await?
                || running_in(env, &id, "sleep 4326").await?;
            Ok((!left).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[test]
fn idle_sessions_end_though_pings_keep_flowing() {
    run(
        "idle_sessions_end_though_pings_keep_flowing",
        idle_past_pings,
    );
}

/// An idle timeout longer than crustd's 15 s ping period (and the client's
/// 5 s one): pings and pongs flow all along, and must not count as activity.
const IDLE_TIMEOUT_S: u64 = 20;

/// Execs `sleep <marker>` over `transport`, carries nothing, and checks that
/// crustd closes the session after its idle timeout and kills the sleep.
async fn ends_when_idle(env: &TestEnv, id: &str, transport: Transport, marker: &str) -> Result<()> {
    let idle = Duration::from_secs(IDLE_TIMEOUT_S);
    let session = exec(
        env,
        id,
        &["sleep", marker],
        transport,
        StreamOptions::output(),
    )
    .await?;
    let started = Instant::now();
    // A session closed for idleness may end without a close frame or
    // GOAWAY: the client may see that as an error; what counts is that it ends.
    let ended = tokio::time::timeout(
        idle + Duration::from_secs(15),
        session.finish(idle + Duration::from_secs(30)),
    )
    .await
    .with_context(|| format!("{transport:?}: an idle session was not closed"))?;
    let lasted = started.elapsed();
    ensure!(
        lasted + Duration::from_secs(1) >= idle,
        "{transport:?}: the session ended after {lasted:?}, before the idle timeout: {ended:?}"
    );
    if let Ok(out) = &ended {
        ensure!(
            out.exit_code.is_none(),
            "{transport:?}: an idle session reported {out:?}"
        );
    }
    wait::until("the idle session's sleep to be killed", LIMIT, || async {
        Ok((!running_in(env, id, &format!("sleep {marker}")).await?).then_some(()))
    })
    .await
    .with_context(|| format!("{transport:?}"))?;
    Ok(())
}

async fn idle_past_pings(env: &mut TestEnv) -> Result<()> {
    let (_pod, id) = sleeper(env, "idle").await?;
    env.reconfigure_stream(&format!("idle_timeout = {IDLE_TIMEOUT_S}"))
        .await?;
    let (spdy, ws) = tokio::join!(
        ends_when_idle(env, &id, Transport::Spdy, "4331"),
        ends_when_idle(env, &id, Transport::WebSocket, "4332")
    );
    spdy?;
    ws?;
    Ok(())
}

#[test]
fn one_port_forward_session_cannot_take_every_stream() {
    run(
        "one_port_forward_session_cannot_take_every_stream",
        stream_hog,
    );
}

/// SPDY port-forward headers of one half of connection `request`.
fn pf_half(stream_type: &str, port: u16, request: u32) -> Headers {
    [
        ("streamtype", stream_type.to_string()),
        ("port", port.to_string()),
        ("requestid", request.to_string()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), vec![v]))
    .collect()
}

/// A GET of `/` on `port` through a new pair of streams of `conn`; `None`
/// when crustd refuses either stream.
async fn get_over(conn: &SpdyConnection, port: u16, request: u32) -> Result<Option<String>> {
    let Ok(mut error) = conn.create_stream(pf_half("error", port, request)).await else {
        return Ok(None);
    };
    error.writer.close().await?;
    let Ok(mut data) = conn.create_stream(pf_half("data", port, request)).await else {
        return Ok(None);
    };
    data.writer
        .send(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
        .await?;
    let response = tokio::time::timeout(LIMIT, data.inbound.read_to_end())
        .await
        .context("no response through the forwarded connection")??;
    Ok(Some(String::from_utf8_lossy(&response).into_owned()))
}

async fn stream_hog(env: &mut TestEnv) -> Result<()> {
    let (pod, web_id) = web_pod(env).await?;
    let url = env.cri.port_forward_url(&pod.id, &[8080]).await?;
    let hog = SpdyConnection::connect(
        &url,
        "POST",
        &[PORT_FORWARD_PROTOCOL.to_string()],
        SpdyConfig::default(),
    )
    .await?;
    // More error streams whose data stream never comes than the server's
    // whole stream limit (256 by default).
    let mut held = Vec::new();
    let mut refused = 0;
    for request in 0..300u32 {
        match hog.create_stream(pf_half("error", 8080, request)).await {
            Ok(s) => held.push(s),
            Err(_) => refused += 1,
        }
    }
    ensure!(
        refused > 0 && held.len() < 256,
        "one session holds {} streams ({refused} refused)",
        held.len()
    );
    // Everyone else still gets streams.
    for transport in TRANSPORTS {
        let out = run_to_end(env, &web_id, &["echo", "still"], transport).await?;
        ensure!(
            out.stdout_text() == "still\n",
            "{transport:?}: an exec beside a stream-hogging session gave {out:?}"
        );
    }
    let url = env.cri.port_forward_url(&pod.id, &[8081]).await?;
    let other = port_forward(&url, Transport::Spdy).await?;
    let body = get(other.connect(8081).await?).await?;
    ensure!(
        body == "two\n",
        "a second port-forward session got {body:?}"
    );
    other.close().await;

    // The halves whose pair never came are dropped after 30 s though the
    // session opens nothing meanwhile; then it serves connections again.
    tokio::time::sleep(Duration::from_secs(29)).await;
    let mut request = 1000;
    let response = wait::until("the unpaired streams to be dropped", LIMIT, || {
        request += 1;
        let hog = &hog;
        async move { get_over(hog, 8080, request).await }
    })
    .await?;
    ensure!(
        response.ends_with("\r\n\r\none\n"),
        "after the unpaired streams were dropped, port 8080 answered {response:?}"
    );
    drop(held);
    hog.close().await;
    Ok(())
}

#[test]
fn a_websocket_port_forward_cannot_make_crustd_buffer_what_the_pod_does_not_read() {
    run(
        "a_websocket_port_forward_cannot_make_crustd_buffer_what_the_pod_does_not_read",
        ws_flood,
    );
}

async fn ws_flood(env: &mut TestEnv) -> Result<()> {
    /// Connections of the session, all to the same port (kubelet allows repeats).
    const CONNECTIONS: usize = 16;
    /// Messages sent on each connection, just under crustd's largest message.
    const MESSAGES: usize = 12;
    const MESSAGE: usize = (1 << 20) - 64;
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("sink").await?;
    // Every connection to 9100 gets a `sleep` that never reads it.
    let script = "nc -ll -p 9100 -e sleep 3600 & exec sleep 3600";
    let config = env.shell_container(&pod, "sink", script)?;
    let id = env.start_container(&pod, &config).await?;
    wait::until("nc to listen on 9100", LIMIT, || async {
        // 9100 is 0x238C; state 0A is LISTEN.
        let tcp = env.sh(&id, "cat /proc/net/tcp /proc/net/tcp6").await?;
        Ok(tcp
            .lines()
            .any(|l| l.contains(":238C 0000") && l.contains(":0000 0A "))
            .then_some(()))
    })
    .await?;
    let pid = env.daemon.pid().context("crustd is not running")?;
    let url = env.cri.port_forward_url(&pod.id, &[9100]).await?;
    let opts = PortForwardOptions {
        ports: vec![9100; CONNECTIONS],
        ..PortForwardOptions::default()
    };
    let session = port_forward_with(&url, Transport::WebSocket, opts).await?;
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(session.connect(9100).await?);
    }
    let before = ProcessMemory::rss_mib(pid)?;
    let message = vec![b'x'; MESSAGE];
    let mut sent = 0usize;
    let mut stalled = false;
    'send: for _ in 0..MESSAGES {
        for conn in &mut conns {
            if tokio::time::timeout(Duration::from_secs(3), conn.send(&message))
                .await
                .is_err()
            {
                stalled = true;
                break 'send;
            }
            sent += MESSAGE;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = ProcessMemory::rss_mib(pid)?;
    let sent_mib = sent as f64 / f64::from(1 << 20);
    println!("crustd RSS {before:.1} MiB before, {after:.1} MiB after {sent_mib:.0} MiB sent");
    ensure!(
        after - before < 16.0,
        "crustd grew by {:.0} MiB holding what a WebSocket client sent ({sent_mib:.0} MiB) to a pod that reads nothing",
        after - before
    );
    ensure!(
        stalled,
        "crustd took {sent_mib:.0} MiB for a pod that reads nothing without holding the client back"
    );
    session.disconnect();

    // More ports than one session may forward are refused with a reason.
    let url = env.cri.port_forward_url(&pod.id, &[9100]).await?;
    let opts = PortForwardOptions {
        ports: vec![9100; 100],
        ..PortForwardOptions::default()
    };
    let err = port_forward_with(&url, Transport::WebSocket, opts)
        .await
        .err()
        .context("a WebSocket port-forward of 100 ports was accepted")?;
    let refusal = err
        .downcast_ref::<UpgradeError>()
        .with_context(|| format!("100 ports: {err:#}"))?;
    ensure!(
        refusal.status == 400 && refusal.body.contains("at most"),
        "100 ports: {refusal}"
    );
    Ok(())
}
