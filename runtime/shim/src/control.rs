//! The control socket (`<bundle>/shim.sock`): one request line, one response
//! line, then the connection is closed (`crust_shim_protocol::control`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crust_shim_protocol::control::{Request, UNKNOWN, encode_answer};

use crate::crilog::LogSink;
use crate::pump::THREAD_STACK;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;

/// How long one client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the thread that serves `listener` for the life of the process.
pub fn spawn(listener: UnixListener, sink: Arc<LogSink>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("control".into())
        .stack_size(THREAD_STACK)
        .spawn(move || serve(&listener, &sink))
}

/// Accepts and answers connections one at a time, forever. Errors only ever
/// affect the connection they happen on.
fn serve(listener: &UnixListener, sink: &LogSink) {
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = handle(conn, sink);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Out of fds or similar: back off instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Answers one connection.
fn handle(conn: UnixStream, sink: &LogSink) -> io::Result<()> {
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = Vec::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_until(b'\n', &mut line)?;
    let request = String::from_utf8_lossy(&line);
    (&conn).write_all(answer(&request, sink).as_bytes())
}

/// The answer line to one request line.
pub fn answer(request: &str, sink: &LogSink) -> String {
    let result = match Request::decode(request) {
        Some(Request::Ping) => Ok(()),
        Some(Request::ReopenLog) => sink.reopen().map_err(|e| e.to_string()),
        None => Err(UNKNOWN.to_string()),
    };
    encode_answer(&result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_shim_protocol::files::SHIM_SOCK;
    use std::path::PathBuf;

    #[test]
    fn answers_requests() {
        let sink = LogSink::new(None);
        assert_eq!(answer("ping", &sink), "ok\n");
        assert_eq!(answer("reopen-log", &sink), "ok\n");
        assert_eq!(answer("bogus", &sink), "error unknown command\n");
        assert_eq!(answer("", &sink), "error unknown command\n");
        let broken = LogSink::new(Some(PathBuf::from("/nonexistent-dir/x/c.log")));
        assert!(answer("reopen-log", &broken).starts_with("error "));
    }

    #[test]
    fn serves_over_socket() {
        let dir = std::env::temp_dir().join(format!("crust-shim-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(SHIM_SOCK);
        let listener = UnixListener::bind(&path).expect("bind");
        spawn(listener, Arc::new(LogSink::new(None))).expect("spawn");
        let ask = |req: &[u8]| {
            let mut c = UnixStream::connect(&path).expect("connect");
            c.write_all(req).expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).expect("read");
            out
        };
        assert_eq!(ask(b"ping\n"), "ok\n");
        assert_eq!(ask(b"nope\n"), "error unknown command\n");
        // A client that hangs up early does not break the server.
        drop(UnixStream::connect(&path).expect("connect"));
        assert_eq!(ask(b"reopen-log\r\n"), "ok\n");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
