//! `crust-workload`: the programs inside the conformance test images, one
//! binary that acts by the name it is installed under (see
//! `crust_e2e::conformance::images`). Offline, these stand in for what the
//! upstream test images run:
//!
//! - `pause`: sleeps, reaps children, exits 0 on SIGTERM or SIGINT (the pause
//!   image's `/pause`);
//! - `nginx`: re-executes itself as `nginx: master process ...` (so its command
//!   line looks like nginx's), writes `/var/run/nginx.pid`, serves an index page
//!   on the address in `/etc/nginx/listen` (default `0.0.0.0:80`), exits 0 on
//!   SIGQUIT, SIGTERM or SIGINT;
//! - `httpd-foreground`: serves the same page on `0.0.0.0:80` and logs a line
//!   naming httpd;
//! - `nonewprivs`: installed setuid root, prints `Effective uid: N`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// Where the nginx stand-in writes its pid, as nginx does.
const NGINX_PID_FILE: &str = "/var/run/nginx.pid";
/// Where the nginx stand-in reads its listen address from.
const NGINX_LISTEN_FILE: &str = "/etc/nginx/listen";
/// The command-line prefix of nginx's master process.
const NGINX_MASTER: &str = "nginx: master process";
/// The page both web servers serve.
const INDEX: &str = "<html><body><h1>Welcome to crust's test web server</h1></body></html>\n";

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = argv0.rsplit('/').next().unwrap_or_default().to_string();
    let result = if name.starts_with(NGINX_MASTER) {
        nginx_master()
    } else {
        match name.as_str() {
            "pause" => pause(),
            "nginx" => nginx_reexec(),
            "httpd-foreground" => httpd(),
            "nonewprivs" => {
                // SAFETY: geteuid has no preconditions.
                println!("Effective uid: {}", unsafe { libc::geteuid() });
                Ok(())
            }
            other => Err(format!(
                "crust-workload: unknown program name {other:?} (pause, nginx, httpd-foreground, nonewprivs)"
            )),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes `signals` end the process with exit code 0 (a container's pid 1
/// ignores signals it does not handle).
fn exit_on(signals: &[libc::c_int]) {
    extern "C" fn leave(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) };
    }
    for &signal in signals {
        // SAFETY: installing a handler that only calls _exit.
        unsafe { libc::signal(signal, leave as *const () as libc::sighandler_t) };
    }
}

fn pause() -> Result<(), String> {
    extern "C" fn reap(_: libc::c_int) {
        // SAFETY: waitpid with WNOHANG is async-signal-safe.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    }
    exit_on(&[libc::SIGTERM, libc::SIGINT]);
    // SAFETY: installing a handler that only reaps children.
    unsafe { libc::signal(libc::SIGCHLD, reap as *const () as libc::sighandler_t) };
    loop {
        // SAFETY: pause has no preconditions; it returns after each signal.
        unsafe { libc::pause() };
    }
}

/// Runs this same binary again with argv[0] set to nginx's master title.
fn nginx_reexec() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("nginx: finding myself: {e}"))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let title = format!("{NGINX_MASTER} nginx {}", args.join(" "));
    let err = std::process::Command::new(exe)
        .arg0(title.trim_end())
        .args(args)
        .exec();
    Err(format!("nginx: re-executing: {err}"))
}

fn nginx_master() -> Result<(), String> {
    exit_on(&[libc::SIGQUIT, libc::SIGTERM, libc::SIGINT]);
    let listen = std::fs::read_to_string(NGINX_LISTEN_FILE)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "0.0.0.0:80".into());
    let listener =
        TcpListener::bind(&listen).map_err(|e| format!("nginx: binding {listen}: {e}"))?;
    std::fs::write(NGINX_PID_FILE, format!("{}\n", std::process::id()))
        .map_err(|e| format!("nginx: writing {NGINX_PID_FILE}: {e}"))?;
    serve(listener)
}

fn httpd() -> Result<(), String> {
    exit_on(&[libc::SIGTERM, libc::SIGINT, libc::SIGWINCH]);
    let listener =
        TcpListener::bind("0.0.0.0:80").map_err(|e| format!("httpd: binding :80: {e}"))?;
    println!("httpd: serving on 0.0.0.0:80 (crust test httpd)");
    serve(listener)
}

/// Answers every connection with the index page, one thread per client.
fn serve(listener: TcpListener) -> Result<(), String> {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                std::thread::spawn(move || answer(stream));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(())
}

fn answer(stream: TcpStream) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if line == "\r\n" || line == "\n" {
            break;
        }
        line.clear();
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{INDEX}",
        INDEX.len()
    );
    let _ = (&stream).write_all(response.as_bytes());
}
