//! The attach socket ([`crate::files::ATTACH_SOCK`]).
//!
//! The client sends one line `attach <stdin> <stdout> <stderr>` (each 0 or
//! 1); the shim answers `ok` or `error <message>` (see
//! [`crate::control::encode_answer`]). Then both sides send frames
//! `[kind: u8][length: u32 big-endian][payload]`:
//!
//! - from the shim: [`STDOUT`], [`STDERR`], and [`CUT_OFF`] (empty, last)
//!   when it cut the client off for falling behind; otherwise the end of
//!   the connection means the container's output ended;
//! - from the client: [`STDIN_DATA`], [`STDIN_CLOSE`], and [`RESIZE`]
//!   (width and height, u16 big-endian each).

/// Which of the container's streams a session carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Input to the container's stdin.
    pub stdin: bool,
    /// Its stdout.
    pub stdout: bool,
    /// Its stderr.
    pub stderr: bool,
}

impl Request {
    /// The request line, newline included.
    pub fn encode(self) -> String {
        format!(
            "attach {} {} {}\n",
            u8::from(self.stdin),
            u8::from(self.stdout),
            u8::from(self.stderr)
        )
    }

    /// Reads a request line (surrounding whitespace ignored).
    pub fn decode(line: &str) -> Result<Request, String> {
        let flag = |w: &str| match w {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(()),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["attach", i, o, e] => match (flag(i), flag(o), flag(e)) {
                (Ok(stdin), Ok(stdout), Ok(stderr)) => Ok(Request {
                    stdin,
                    stdout,
                    stderr,
                }),
                _ => Err(USAGE.into()),
            },
            _ => Err(USAGE.into()),
        }
    }
}

const USAGE: &str = "expected `attach <stdin> <stdout> <stderr>`";

/// Shim → client: container output on stdout (or its terminal).
pub const STDOUT: u8 = 1;
/// Shim → client: container output on stderr.
pub const STDERR: u8 = 2;
/// Shim → client, last frame: the client fell too far behind and was cut off.
pub const CUT_OFF: u8 = 3;
/// Client → shim: input for the container's stdin.
pub const STDIN_DATA: u8 = 0;
/// Client → shim: the client's input ended.
pub const STDIN_CLOSE: u8 = 1;
/// Client → shim: the terminal's new size.
pub const RESIZE: u8 = 2;

/// Length of a frame's header.
pub const HEADER_LEN: usize = 5;

/// A frame's header: its kind and payload length.
pub fn encode_header(kind: u8, len: u32) -> [u8; HEADER_LEN] {
    let mut head = [0u8; HEADER_LEN];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    head
}

/// A frame's kind and payload length, from its header.
pub fn decode_header(head: &[u8; HEADER_LEN]) -> (u8, usize) {
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    (head[0], usize::try_from(len).unwrap_or(usize::MAX))
}

/// A whole frame, header and payload. A payload longer than u32::MAX
/// bytes cannot be framed; callers send at most a few KiB at a time.
pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&encode_header(kind, len));
    frame.extend_from_slice(&payload[..len as usize]);
    frame
}

/// A resize frame's payload.
pub fn encode_resize(width: u16, height: u16) -> [u8; 4] {
    let [w0, w1] = width.to_be_bytes();
    let [h0, h1] = height.to_be_bytes();
    [w0, w1, h0, h1]
}

/// Width and height from a resize frame's payload; `None` if it is short.
pub fn decode_resize(payload: &[u8]) -> Option<(u16, u16)> {
    match payload {
        [w0, w1, h0, h1, ..] => Some((
            u16::from_be_bytes([*w0, *w1]),
            u16::from_be_bytes([*h0, *h1]),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for stdin in [false, true] {
            for stdout in [false, true] {
                for stderr in [false, true] {
                    let r = Request {
                        stdin,
                        stdout,
                        stderr,
                    };
                    assert_eq!(Request::decode(&r.encode()), Ok(r));
                }
            }
        }
        for bad in ["", "attach", "attach 1 1", "attach 1 1 2", "detach 1 1 1"] {
            assert!(Request::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn frames_round_trip() {
        let frame = encode_frame(STDERR, b"hello");
        let head: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
        assert_eq!(decode_header(&head), (STDERR, 5));
        assert_eq!(&frame[HEADER_LEN..], b"hello");
        assert_eq!(decode_resize(&encode_resize(132, 43)), Some((132, 43)));
        assert_eq!(decode_resize(&[1, 2, 3]), None);
    }
}
