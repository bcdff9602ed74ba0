//! The control socket ([`crate::files::SHIM_SOCK`]): one request line, one
//! answer line, then the connection closes.

/// A request to the shim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Is the shim there? Answered `ok`.
    Ping,
    /// Reopen the container's CRI log file (after kubelet rotated it).
    ReopenLog,
    /// Send this signal to the container's init. The shim holds a pidfd of
    /// it, so the signal cannot reach another process that reused its pid,
    /// and it saves crustd a `runc kill`. An init that has exited is not an
    /// error.
    Signal(i32),
}

impl Request {
    /// The request line, newline included.
    pub fn encode(self) -> String {
        match self {
            Request::Ping => "ping\n".into(),
            Request::ReopenLog => "reopen-log\n".into(),
            Request::Signal(sig) => format!("signal {sig}\n"),
        }
    }

    /// Reads a request line (surrounding whitespace ignored); `None` for
    /// one this version does not know.
    pub fn decode(line: &str) -> Option<Request> {
        let line = line.trim();
        if let Some(sig) = line.strip_prefix("signal ") {
            return sig
                .parse()
                .ok()
                .filter(|s| (1..=64).contains(s))
                .map(Request::Signal);
        }
        match line {
            "ping" => Some(Request::Ping),
            "reopen-log" => Some(Request::ReopenLog),
            _ => None,
        }
    }
}

/// The answer line to a request, newline included: `ok`, or `error
/// <message>` with the message on one line.
pub fn encode_answer(result: &Result<(), String>) -> String {
    match result {
        Ok(()) => "ok\n".into(),
        Err(msg) => format!("error {}\n", msg.replace(['\n', '\r'], " ")),
    }
}

/// Reads an answer line: `Ok` for `ok`, the shim's message otherwise.
pub fn decode_answer(line: &str) -> Result<(), String> {
    let line = line.trim();
    if line == "ok" {
        return Ok(());
    }
    Err(line.strip_prefix("error ").unwrap_or(line).to_string())
}

/// The answer to a request this version does not know.
pub const UNKNOWN: &str = "unknown command";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip() {
        for r in [Request::Ping, Request::ReopenLog, Request::Signal(15)] {
            assert_eq!(Request::decode(&r.encode()), Some(r));
        }
        assert_eq!(Request::decode("signal 0"), None);
        assert_eq!(Request::decode("signal 65"), None);
        assert_eq!(Request::decode("signal x"), None);
        assert_eq!(Request::decode("reopen-log\r\n"), Some(Request::ReopenLog));
        assert_eq!(Request::decode("bogus"), None);
        assert_eq!(decode_answer(&encode_answer(&Ok(()))), Ok(()));
        let failed = encode_answer(&Err("no such\nfile".into()));
        assert_eq!(failed, "error no such file\n");
        assert_eq!(decode_answer(&failed), Err("no such file".into()));
    }
}
