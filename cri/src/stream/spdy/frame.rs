//! SPDY/3.1 frames: the wire layout of every frame kind client-go's
//! spdystream speaks, with no I/O so the session layer owns all buffering.
//!
//! DATA frames are decoded in pieces so a large frame never has to sit whole
//! in memory; control frames are decoded whole, and their header blocks go
//! through the session's two zlib streams in `super::headers`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use super::headers::HeaderBlock;
use super::headers::{HeaderDecoder, HeaderEncoder};

/// The only protocol version spoken (SPDY/3.1 keeps version 3 on the wire).
pub const VERSION: u16 = 3;
/// Largest value of a 24-bit length field: the most one frame can carry.
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;
/// Largest stream id (31 bits) and mask applied to stream ids on the wire.
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;
/// Initial flow-control window of a stream and of the session (SPDY/3.1).
pub const DEFAULT_INITIAL_WINDOW: u32 = 65536;

/// RST_STREAM status codes, telling the peer why one stream ends.
#[allow(dead_code, reason = "a binary need not use every code")]
pub mod rst {
    /// The stream broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// A frame arrived for a stream that is not open.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// The stream used a SPDY version we do not speak.
    pub const UNSUPPORTED_VERSION: u32 = 4;
    /// The stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// An internal failure ended the stream.
    pub const INTERNAL_ERROR: u32 = 6;
    /// The peer sent more than the stream's window allowed.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// A SYN_STREAM reused the id of an open stream.
    pub const STREAM_IN_USE: u32 = 8;
    /// Data or a SYN_REPLY arrived for a half-closed stream.
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    /// A frame was larger than we can process.
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes, telling the peer why the whole session ends.
#[allow(dead_code, reason = "a binary need not use every code")]
pub mod goaway {
    /// Normal end of the session.
    pub const OK: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// An internal failure on our side.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// SETTINGS ids the runtime reads or sends.
#[allow(dead_code, reason = "a binary need not use every code")]
pub mod settings {
    /// How many streams the sender lets the receiver open at once.
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    /// The sender's initial window for new streams.
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
}

/// Control frame type codes on the wire.
mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// FIN flag of DATA, SYN_STREAM, SYN_REPLY and HEADERS frames.
const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL flag of SYN_STREAM frames.
const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// CLEAR_SETTINGS flag of SETTINGS frames.
const FLAG_CLEAR: u8 = 0x01;
/// Bytes of the common header every frame starts with.
const HEADER_LEN: usize = 8;

/// Why a session must end (GOAWAY with PROTOCOL_ERROR / INTERNAL_ERROR).
///
/// Errors from [`Codec::decode`] mean the peer broke the protocol
/// (PROTOCOL_ERROR); errors from [`Codec::encode`] mean we cannot send a frame
/// (INTERNAL_ERROR). Either way the codec's zlib state can no longer be trusted.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent a malformed frame or header block.
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    /// A control frame carried a version other than 3.
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    /// A frame or header block is over a limit.
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes (for a decompressed block, how far decoding got).
        len: usize,
        /// The limit it broke.
        max: usize,
    },
    /// The peer's header stream is not valid zlib with the SPDY/3 dictionary.
    #[error("SPDY header decompression failed: {0}")]
    Compression(String),
    /// A frame given to `encode` cannot be put on the wire.
    #[error("cannot encode SPDY frame: {0}")]
    Invalid(String),
}

/// One SPDY/3.1 frame as the session layer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream (odd from clients, even from servers).
        stream_id: u32,
        /// The stream this one is associated to, or 0.
        associated_to: u32,
        /// 0 (highest) to 7 (lowest).
        priority: u8,
        /// The sender will send nothing more on this stream.
        fin: bool,
        /// The receiver must not send on this stream.
        unidirectional: bool,
        /// The stream's headers.
        headers: HeaderBlock,
    },
    /// Accepts a stream the peer opened.
    SynReply {
        /// The accepted stream.
        stream_id: u32,
        /// The sender will send nothing more on this stream.
        fin: bool,
        /// The reply's headers.
        headers: HeaderBlock,
    },
    /// Ends a stream abnormally.
    RstStream {
        /// The stream that ends.
        stream_id: u32,
        /// Why, one of [`rst`].
        status: u32,
    },
    /// Session parameters.
    Settings {
        /// The receiver must drop settings it persisted.
        clear: bool,
        /// The settings, in wire order.
        entries: Vec<Setting>,
    },
    /// Round-trip probe the receiver echoes back.
    Ping {
        /// Odd from clients, even from servers.
        id: u32,
    },
    /// Ends the session.
    GoAway {
        /// The last stream the sender accepted.
        last_good_stream_id: u32,
        /// Why, one of [`goaway`].
        status: u32,
    },
    /// More headers for an open stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// The sender will send nothing more on this stream.
        fin: bool,
        /// The added headers.
        headers: HeaderBlock,
    },
    /// Grows a send window.
    WindowUpdate {
        /// The stream, or 0 for the session's window.
        stream_id: u32,
        /// Bytes added to the window (1 to 2^31-1).
        delta: u32,
    },
    /// Stream payload; decoding yields a large DATA frame as several pieces.
    Data {
        /// The stream.
        stream_id: u32,
        /// Last piece of a frame that carried FIN.
        fin: bool,
        /// The payload (piece).
        data: Bytes,
    },
}

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// FLAG_SETTINGS_PERSIST_VALUE (1) or FLAG_SETTINGS_PERSISTED (2).
    pub flags: u8,
    /// Which setting (24 bits), e.g. one of [`settings`].
    pub id: u32,
    /// Its value.
    pub value: u32,
}

/// Encoder and decoder state of one session (both zlib streams live here).
pub struct Codec {
    max_control_len: usize,
    max_data_chunk: usize,
    headers_out: HeaderEncoder,
    headers_in: HeaderDecoder,
    data_in: Option<PartialData>,
}

/// What is left of the DATA frame being decoded.
struct PartialData {
    stream_id: u32,
    fin: bool,
    remaining: usize,
}

impl Codec {
    /// `max_control_len`: the largest control frame accepted (length field); `max_header_block`: decompressed cap; `max_data_chunk`: the most DATA payload bytes one decoded `Frame::Data` carries.
    pub fn new(max_control_len: usize, max_header_block: usize, max_data_chunk: usize) -> Self {
        Self {
            max_control_len,
            max_data_chunk: max_data_chunk.max(1),
            headers_out: HeaderEncoder::new(),
            headers_in: HeaderDecoder::new(max_header_block),
            data_in: None,
        }
    }

    /// Appends the encoded frame. DATA payloads over 2^24-1 bytes are an error (the caller splits).
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                let mut fixed = [0u8; 10];
                fixed[..4].copy_from_slice(&stream(*stream_id)?.to_be_bytes());
                fixed[4..8].copy_from_slice(&any_stream(*associated_to)?.to_be_bytes());
                if *priority > 7 {
                    return Err(FrameError::Invalid(format!("priority {priority}")));
                }
                fixed[8] = priority << 5;
                let block = self.headers_out.encode(headers)?;
                let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
                put_control(dst, kind::SYN_STREAM, flags, &[&fixed, &block])
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                let id = stream(*stream_id)?.to_be_bytes();
                let block = self.headers_out.encode(headers)?;
                put_control(dst, kind::SYN_REPLY, flag(*fin, FLAG_FIN), &[&id, &block])
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let id = stream(*stream_id)?.to_be_bytes();
                let block = self.headers_out.encode(headers)?;
                put_control(dst, kind::HEADERS, flag(*fin, FLAG_FIN), &[&id, &block])
            }
            Frame::RstStream { stream_id, status } => {
                let fields = pair(stream(*stream_id)?, *status);
                put_control(dst, kind::RST_STREAM, 0, &[&fields])
            }
            Frame::Settings { clear, entries } => {
                let mut body = Vec::with_capacity(4 + 8 * entries.len());
                let count = u32::try_from(entries.len())
                    .map_err(|_| FrameError::Invalid("too many settings".into()))?;
                body.put_u32(count);
                for entry in entries {
                    if entry.id > 0xff_ffff {
                        return Err(FrameError::Invalid(format!("setting id {}", entry.id)));
                    }
                    body.put_u32(u32::from(entry.flags) << 24 | entry.id);
                    body.put_u32(entry.value);
                }
                put_control(dst, kind::SETTINGS, flag(*clear, FLAG_CLEAR), &[&body])
            }
            Frame::Ping { id } => put_control(dst, kind::PING, 0, &[&id.to_be_bytes()]),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let fields = pair(any_stream(*last_good_stream_id)?, *status);
                put_control(dst, kind::GOAWAY, 0, &[&fields])
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if *delta == 0 || *delta > MAX_STREAM_ID {
                    return Err(FrameError::Invalid(format!("window delta {delta}")));
                }
                let fields = pair(any_stream(*stream_id)?, *delta);
                put_control(dst, kind::WINDOW_UPDATE, 0, &[&fields])
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let id = stream(*stream_id)?;
                let len = frame_len(data.len(), "DATA payload")?;
                dst.reserve(HEADER_LEN + data.len());
                dst.put_u32(id);
                dst.put_u32(u32::from(flag(*fin, FLAG_FIN)) << 24 | len);
                dst.put_slice(data);
                Ok(())
            }
        }
    }

    /// Takes the next frame (or DATA piece) off the front of `src`; Ok(None) when more bytes are needed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.data_in.is_some() {
                return Ok(self.data_piece(src));
            }
            let Some(head) = src.first_chunk::<HEADER_LEN>() else {
                return Ok(None);
            };
            let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let flags = head[4];
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            if word & 0x8000_0000 == 0 {
                if word == 0 {
                    return Err(protocol("DATA frame on stream 0"));
                }
                src.advance(HEADER_LEN);
                self.data_in = Some(PartialData {
                    stream_id: word,
                    fin: flags & FLAG_FIN != 0,
                    remaining: len,
                });
                continue;
            }
            let version = (word >> 16) as u16 & 0x7fff;
            if version != VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
            if len > self.max_control_len {
                return Err(FrameError::TooLarge {
                    what: "control frame",
                    len,
                    max: self.max_control_len,
                });
            }
            if src.len() < HEADER_LEN + len {
                return Ok(None);
            }
            src.advance(HEADER_LEN);
            let body = src.split_to(len);
            if let Some(frame) = self.control(word as u16, flags, &body)? {
                return Ok(Some(frame));
            }
        }
    }

    /// The next piece of the DATA frame being decoded, if `src` holds any of it.
    fn data_piece(&mut self, src: &mut BytesMut) -> Option<Frame> {
        let partial = self.data_in.as_mut()?;
        let take = partial.remaining.min(self.max_data_chunk).min(src.len());
        if take == 0 && partial.remaining > 0 {
            return None;
        }
        partial.remaining -= take;
        let last = partial.remaining == 0;
        let piece = Frame::Data {
            stream_id: partial.stream_id,
            fin: last && partial.fin,
            data: src.split_to(take).freeze(),
        };
        if last {
            self.data_in = None;
        }
        Some(piece)
    }

    /// Decodes the body of a control frame; None for types SPDY/3.1 does not define.
    fn control(&mut self, kind: u16, flags: u8, body: &[u8]) -> Result<Option<Frame>, FrameError> {
        let fin = flags & FLAG_FIN != 0;
        let frame = match kind {
            kind::SYN_STREAM => {
                let fixed = fixed_fields::<10>(body, "SYN_STREAM")?;
                Frame::SynStream {
                    stream_id: nonzero_stream(word(fixed, 0), "SYN_STREAM")?,
                    associated_to: word(fixed, 4) & MAX_STREAM_ID,
                    priority: fixed[8] >> 5,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.headers_in.decode(&body[10..])?,
                }
            }
            kind::SYN_REPLY => Frame::SynReply {
                stream_id: leading_stream(body, "SYN_REPLY")?,
                fin,
                headers: self.headers_in.decode(&body[4..])?,
            },
            kind::HEADERS => Frame::Headers {
                stream_id: leading_stream(body, "HEADERS")?,
                fin,
                headers: self.headers_in.decode(&body[4..])?,
            },
            kind::RST_STREAM => {
                let fixed = fixed_fields::<8>(body, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: nonzero_stream(word(fixed, 0), "RST_STREAM")?,
                    status: word(fixed, 4),
                }
            }
            kind::SETTINGS => Frame::Settings {
                clear: flags & FLAG_CLEAR != 0,
                entries: settings_entries(body)?,
            },
            kind::PING => Frame::Ping {
                id: word(fixed_fields::<4>(body, "PING")?, 0),
            },
            kind::GOAWAY => {
                let fixed = fixed_fields::<8>(body, "GOAWAY")?;
                Frame::GoAway {
                    last_good_stream_id: word(fixed, 0) & MAX_STREAM_ID,
                    status: word(fixed, 4),
                }
            }
            kind::WINDOW_UPDATE => {
                let fixed = fixed_fields::<8>(body, "WINDOW_UPDATE")?;
                let delta = word(fixed, 4) & MAX_STREAM_ID;
                if delta == 0 {
                    return Err(protocol("WINDOW_UPDATE with delta 0"));
                }
                Frame::WindowUpdate {
                    stream_id: word(fixed, 0) & MAX_STREAM_ID,
                    delta,
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }
}

/// Parses the count and entries of a SETTINGS body.
fn settings_entries(body: &[u8]) -> Result<Vec<Setting>, FrameError> {
    let count = word(fixed_fields::<4>(body, "SETTINGS")?, 0) as usize;
    let entries = &body[4..];
    if count > entries.len() / 8 {
        return Err(protocol("SETTINGS count runs past the frame"));
    }
    Ok(entries
        .chunks_exact(8)
        .take(count)
        .map(|entry| Setting {
            flags: entry[0],
            id: word(entry, 0) & 0xff_ffff,
            value: word(entry, 4),
        })
        .collect())
}

/// The fixed fields at the front of a control frame body, which must be there.
fn fixed_fields<'a, const N: usize>(body: &'a [u8], what: &str) -> Result<&'a [u8; N], FrameError> {
    body.first_chunk::<N>().ok_or_else(|| {
        protocol(&format!(
            "{what} frame of {} bytes is too short",
            body.len()
        ))
    })
}

/// The big-endian u32 at `at` in a slice already checked to be long enough.
fn word(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(buf)
}

/// A stream id off the wire (high bit masked) that must not be 0.
fn nonzero_stream(raw: u32, what: &str) -> Result<u32, FrameError> {
    match raw & MAX_STREAM_ID {
        0 => Err(protocol(&format!("{what} on stream 0"))),
        id => Ok(id),
    }
}

/// The nonzero stream id a SYN_REPLY or HEADERS body starts with.
fn leading_stream(body: &[u8], what: &str) -> Result<u32, FrameError> {
    nonzero_stream(word(fixed_fields::<4>(body, what)?, 0), what)
}

/// A stream id to encode that must be 1..=2^31-1.
fn stream(id: u32) -> Result<u32, FrameError> {
    if id == 0 {
        return Err(FrameError::Invalid("stream id 0".into()));
    }
    any_stream(id)
}

/// A stream id to encode that must fit 31 bits (0 allowed).
fn any_stream(id: u32) -> Result<u32, FrameError> {
    if id > MAX_STREAM_ID {
        return Err(FrameError::Invalid(format!("stream id {id}")));
    }
    Ok(id)
}

/// `bit` when `set`, else 0.
fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}

/// Two big-endian u32 fields.
fn pair(a: u32, b: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&a.to_be_bytes());
    out[4..].copy_from_slice(&b.to_be_bytes());
    out
}

/// A length that must fit the 24-bit length field.
fn frame_len(len: usize, what: &'static str) -> Result<u32, FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            what,
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len as u32)
}

/// Appends a control frame header and its body parts.
fn put_control(dst: &mut BytesMut, kind: u16, flags: u8, body: &[&[u8]]) -> Result<(), FrameError> {
    let len = body.iter().map(|part| part.len()).sum();
    let len_field = frame_len(len, "control frame")?;
    dst.reserve(HEADER_LEN + len);
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(kind);
    dst.put_u32(u32::from(flags) << 24 | len_field);
    for part in body {
        dst.put_slice(part);
    }
    Ok(())
}

/// A protocol error.
fn protocol(why: &str) -> FrameError {
    FrameError::Protocol(why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_CONTROL: usize = 1 << 16;

    fn codec() -> Codec {
        Codec::new(MAX_CONTROL, 1 << 16, 1 << 14)
    }

    fn pairs(list: &[(&str, &str)]) -> HeaderBlock {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// Encodes `frames` with one codec and decodes them with another.
    fn round_trip(frames: &[Frame]) -> Vec<Frame> {
        let (mut tx, mut rx) = (codec(), codec());
        let mut wire = BytesMut::new();
        for frame in frames {
            tx.encode(frame, &mut wire).unwrap();
        }
        let mut got = Vec::new();
        while let Some(frame) = rx.decode(&mut wire).unwrap() {
            got.push(frame);
        }
        assert!(wire.is_empty());
        got
    }

    fn decode_all(codec: &mut Codec, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut src = BytesMut::from(bytes);
        let mut got = Vec::new();
        while let Some(frame) = codec.decode(&mut src)? {
            got.push(frame);
        }
        Ok(got)
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: pairs(&[("streamtype", "error"), ("requestid", "0")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 1,
                priority: 7,
                fin: true,
                unidirectional: true,
                headers: pairs(&[("streamtype", "stdin"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: pairs(&[("x", "a"), ("x", "b"), ("y", "")]),
            },
            Frame::SynReply {
                stream_id: 3,
                fin: true,
                headers: Vec::new(),
            },
            Frame::Headers {
                stream_id: 5,
                fin: true,
                headers: pairs(&[("status", "200")]),
            },
            Frame::RstStream {
                stream_id: 3,
                status: rst::CANCEL,
            },
            Frame::Settings {
                clear: true,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: settings::MAX_CONCURRENT_STREAMS,
                        value: 100,
                    },
                    Setting {
                        flags: 0,
                        id: settings::INITIAL_WINDOW_SIZE,
                        value: DEFAULT_INITIAL_WINDOW,
                    },
                    Setting {
                        flags: 2,
                        id: 0xff_ffff,
                        value: u32::MAX,
                    },
                ],
            },
            Frame::Settings {
                clear: false,
                entries: Vec::new(),
            },
            Frame::Ping { id: 0xdead_beef },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: goaway::INTERNAL_ERROR,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: MAX_STREAM_ID,
            },
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new(),
            },
        ];
        assert_eq!(round_trip(&frames), frames);
    }

    #[test]
    fn golden_uncompressed_frames() {
        let cases: Vec<(Frame, Vec<u8>)> = vec![
            (
                Frame::Ping { id: 0x0102_0304 },
                vec![0x80, 3, 0, 6, 0, 0, 0, 4, 1, 2, 3, 4],
            ),
            (
                Frame::RstStream {
                    stream_id: 5,
                    status: rst::CANCEL,
                },
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5],
            ),
            (
                Frame::WindowUpdate {
                    stream_id: 3,
                    delta: 0x1_0000,
                },
                vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 3, 0, 1, 0, 0],
            ),
            (
                Frame::GoAway {
                    last_good_stream_id: 7,
                    status: goaway::PROTOCOL_ERROR,
                },
                vec![0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0, 0, 1],
            ),
            (
                Frame::Settings {
                    clear: true,
                    entries: vec![
                        Setting {
                            flags: 1,
                            id: settings::MAX_CONCURRENT_STREAMS,
                            value: 100,
                        },
                        Setting {
                            flags: 0,
                            id: settings::INITIAL_WINDOW_SIZE,
                            value: 0x1_0000,
                        },
                    ],
                },
                vec![
                    0x80, 3, 0, 4, 1, 0, 0, 20, // header: CLEAR flag, length 20
                    0, 0, 0, 2, // two entries
                    1, 0, 0, 4, 0, 0, 0, 100, // PERSIST_VALUE, MAX_CONCURRENT_STREAMS
                    0, 0, 0, 7, 0, 1, 0, 0, // INITIAL_WINDOW_SIZE 65536
                ],
            ),
            (
                Frame::Data {
                    stream_id: 1,
                    fin: true,
                    data: Bytes::from_static(b"hi"),
                },
                vec![0, 0, 0, 1, 1, 0, 0, 2, b'h', b'i'],
            ),
        ];
        for (frame, wire) in cases {
            let mut dst = BytesMut::new();
            codec().encode(&frame, &mut dst).unwrap();
            assert_eq!(&dst[..], &wire[..], "{frame:?}");
            assert_eq!(decode_all(&mut codec(), &wire).unwrap(), vec![frame]);
        }
    }

    #[test]
    fn syn_stream_layout() {
        let frame = Frame::SynStream {
            stream_id: 1,
            associated_to: 2,
            priority: 3,
            fin: true,
            unidirectional: true,
            headers: pairs(&[("a", "b")]),
        };
        let mut dst = BytesMut::new();
        codec().encode(&frame, &mut dst).unwrap();
        let block = HeaderEncoder::new().encode(&pairs(&[("a", "b")])).unwrap();
        let len = (10 + block.len()) as u8;
        let mut want = vec![
            0x80,
            3,
            0,
            1,
            3,
            0,
            0,
            len,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            2,
            3 << 5,
            0,
        ];
        want.extend_from_slice(&block);
        assert_eq!(&dst[..], &want[..]);
    }

    #[test]
    fn data_is_streamed_in_pieces() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut tx = codec();
        let mut wire = BytesMut::new();
        tx.encode(
            &Frame::Data {
                stream_id: 7,
                fin: true,
                data: Bytes::from(payload.clone()),
            },
            &mut wire,
        )
        .unwrap();
        tx.encode(&Frame::Ping { id: 2 }, &mut wire).unwrap();

        let mut rx = Codec::new(MAX_CONTROL, 1 << 16, 4096);
        let mut src = BytesMut::new();
        let (mut got, mut fins, mut pings) = (Vec::new(), 0, 0);
        for chunk in wire.chunks(7) {
            src.extend_from_slice(chunk);
            while let Some(frame) = rx.decode(&mut src).unwrap() {
                match frame {
                    Frame::Data {
                        stream_id,
                        fin,
                        data,
                    } => {
                        assert_eq!(stream_id, 7);
                        assert!(data.len() <= 4096);
                        assert_eq!(pings, 0);
                        fins += usize::from(fin);
                        got.extend_from_slice(&data);
                        assert_eq!(fin, got.len() == payload.len());
                    }
                    Frame::Ping { id: 2 } => pings += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(got, payload);
        assert_eq!((fins, pings), (1, 1));
        assert!(src.is_empty());
    }

    #[test]
    fn data_pieces_respect_the_chunk_size() {
        let mut rx = Codec::new(MAX_CONTROL, 1 << 16, 3);
        let wire = [0, 0, 0, 9, 1, 0, 0, 7, 1, 2, 3, 4, 5, 6, 7];
        let got = decode_all(&mut rx, &wire).unwrap();
        let piece = |fin, data: &'static [u8]| Frame::Data {
            stream_id: 9,
            fin,
            data: Bytes::from_static(data),
        };
        assert_eq!(
            got,
            vec![
                piece(false, &[1, 2, 3]),
                piece(false, &[4, 5, 6]),
                piece(true, &[7])
            ]
        );
    }

    #[test]
    fn control_frames_wait_for_all_their_bytes() {
        let mut wire = BytesMut::new();
        let syn = Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: pairs(&[("streamtype", "data"), ("port", "80")]),
        };
        codec().encode(&syn, &mut wire).unwrap();
        let mut rx = codec();
        let mut src = BytesMut::new();
        let last = wire.len() - 1;
        for (i, byte) in wire.iter().enumerate() {
            src.extend_from_slice(&[*byte]);
            let got = rx.decode(&mut src).unwrap();
            assert_eq!(got.is_some(), i == last, "after byte {i}");
            if let Some(frame) = got {
                assert_eq!(frame, syn);
            }
        }
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        // CREDENTIAL (type 10) with a 3-byte body, then a PING.
        let wire = [
            0x80, 3, 0, 10, 0, 0, 0, 3, 9, 9, 9, // CREDENTIAL
            0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1, // PING 1
        ];
        assert_eq!(
            decode_all(&mut codec(), &wire).unwrap(),
            vec![Frame::Ping { id: 1 }]
        );
    }

    #[test]
    fn stream_ids_have_the_high_bit_masked() {
        let wire = [0x80, 3, 0, 9, 0, 0, 0, 8, 0x80, 0, 0, 5, 0x80, 0, 0, 1];
        assert_eq!(
            decode_all(&mut codec(), &wire).unwrap(),
            vec![Frame::WindowUpdate {
                stream_id: 5,
                delta: 1
            }]
        );
    }

    #[test]
    fn decode_errors() {
        let cases: [(&str, Vec<u8>); 7] = [
            ("version 2", vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]),
            ("oversize control frame", vec![0x80, 3, 0, 6, 0, 1, 0, 1]),
            (
                "WINDOW_UPDATE delta 0",
                vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0],
            ),
            ("short PING", vec![0x80, 3, 0, 6, 0, 0, 0, 2, 0, 1]),
            (
                "short SETTINGS",
                vec![0x80, 3, 0, 4, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 4],
            ),
            ("DATA on stream 0", vec![0, 0, 0, 0, 0, 0, 0, 1, 0]),
            (
                "SYN_REPLY with a truncated header block",
                vec![0x80, 3, 0, 2, 0, 0, 0, 6, 0, 0, 0, 1, 0x78, 0xf9],
            ),
        ];
        for (what, wire) in cases {
            let err = decode_all(&mut codec(), &wire).expect_err(what);
            let expected = match what {
                "version 2" => matches!(err, FrameError::UnsupportedVersion(2)),
                "oversize control frame" => {
                    matches!(err, FrameError::TooLarge { len, max: MAX_CONTROL, .. } if len == MAX_CONTROL + 1)
                }
                _ => matches!(err, FrameError::Protocol(_)),
            };
            assert!(expected, "{what}: {err}");
        }
    }

    #[test]
    fn header_block_over_the_cap_is_an_error() {
        let mut tx = codec();
        let mut wire = BytesMut::new();
        let big = "v".repeat(5000);
        let frame = Frame::Headers {
            stream_id: 1,
            fin: false,
            headers: pairs(&[("a", &big)]),
        };
        tx.encode(&frame, &mut wire).unwrap();
        let err = Codec::new(MAX_CONTROL, 4096, 1024)
            .decode(&mut wire)
            .unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { max: 4096, .. }),
            "{err}"
        );
    }

    #[test]
    fn encode_errors() {
        let frames = [
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from(vec![0; MAX_FRAME_LEN + 1]),
            },
            Frame::Data {
                stream_id: 0,
                fin: false,
                data: Bytes::new(),
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 0,
            },
            Frame::RstStream {
                stream_id: MAX_STREAM_ID + 1,
                status: rst::CANCEL,
            },
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 8,
                fin: false,
                unidirectional: false,
                headers: Vec::new(),
            },
        ];
        for frame in &frames {
            let mut dst = BytesMut::new();
            assert!(codec().encode(frame, &mut dst).is_err(), "{frame:?}");
            assert!(dst.is_empty());
        }
    }
}
