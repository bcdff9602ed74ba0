//! SPDY/3.1 frames as client-go's spdystream writes and reads them: the 8-byte
//! frame header, the control frames a CRI streaming session uses, DATA frames,
//! and name/value header blocks compressed with one zlib stream per direction
//! primed with the SPDY/3 dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1).

use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The SPDY version in every control frame.
pub const VERSION: u16 = 3;
/// Control frame types.
pub const SYN_STREAM: u16 = 1;
/// SYN_REPLY.
pub const SYN_REPLY: u16 = 2;
/// RST_STREAM.
pub const RST_STREAM: u16 = 3;
/// SETTINGS.
pub const SETTINGS: u16 = 4;
/// PING.
pub const PING: u16 = 6;
/// GOAWAY.
pub const GOAWAY: u16 = 7;
/// HEADERS.
pub const HEADERS: u16 = 8;
/// WINDOW_UPDATE.
pub const WINDOW_UPDATE: u16 = 9;
/// FLAG_FIN on SYN_STREAM, SYN_REPLY, HEADERS and DATA frames.
pub const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: PROTOCOL_ERROR.
pub const STATUS_PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status: REFUSED_STREAM.
pub const STATUS_REFUSED_STREAM: u32 = 3;
/// RST_STREAM status: CANCEL (what spdystream's `Reset` sends).
pub const STATUS_CANCEL: u32 = 5;
/// SETTINGS id of SETTINGS_INITIAL_WINDOW_SIZE.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// Largest frame payload the 24-bit length allows.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// Largest decompressed header block accepted from the server.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// A header block: lower-case names, each with one or more values (joined by
/// NUL on the wire).
pub type Headers = Vec<(String, Vec<String>)>;

/// The first value of `name` in `headers` (names compare case-insensitively).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(String::as_str)
}

/// One SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// Odd for client-initiated streams.
        stream_id: u32,
        /// Associated-To-Stream-ID (0: none).
        associated: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// FLAG_FIN, FLAG_UNIDIRECTIONAL.
        flags: u8,
        /// The stream's headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The accepted stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Reply headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Status code (CANCEL, PROTOCOL_ERROR, ...).
        status: u32,
    },
    /// Connection settings: (flags, id, value) triples.
    Settings {
        /// Frame flags.
        flags: u8,
        /// (flags, id, value) entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// Liveness check; the receiver echoes a PING the peer initiated.
    Ping {
        /// Odd when the client initiated it, even for the server.
        id: u32,
    },
    /// The sender will accept no new streams.
    GoAway {
        /// Last stream id the sender processed.
        last_good: u32,
        /// Status (0: OK).
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// The headers.
        headers: Headers,
    },
    /// Flow-control credit; stream 0 is the session window (SPDY/3.1).
    WindowUpdate {
        /// The stream, or 0 for the session.
        stream_id: u32,
        /// Bytes of credit.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A control frame of a type this client does not know; ignored.
    Unknown {
        /// Its type.
        frame_type: u16,
    },
}

/// The SPDY/3 header compression dictionary: 65 length-prefixed words
/// followed by a run of common header values (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410\
            411412413414415416417502504505203 Non-Authoritative Information204 No \
            Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 \
            Not Found500 Internal Server Error501 Not Implemented503 Service \
            UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, \
            Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,\
            image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,\
            publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,\
            *,enq=0.";
        let mut dict = Vec::with_capacity(1423);
        for word in WORDS {
            dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
            dict.extend_from_slice(word.as_bytes());
        }
        dict.extend_from_slice(TAIL.as_bytes());
        dict
    })
}

/// Serialises a header block (32-bit counts and lengths, SPDY/3).
pub fn encode_header_block(headers: &Headers) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, values) in headers {
        let name = name.to_ascii_lowercase();
        let value = values.join("\0");
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Parses a decompressed header block.
pub fn decode_header_block(block: &[u8]) -> Result<Headers> {
    let mut cursor = block;
    let take_u32 = |cursor: &mut &[u8]| -> Result<u32> {
        ensure!(cursor.len() >= 4, "header block truncated");
        let (head, rest) = cursor.split_at(4);
        *cursor = rest;
        Ok(u32::from_be_bytes([head[0], head[1], head[2], head[3]]))
    };
    let count = take_u32(&mut cursor)?;
    let mut headers = Headers::new();
    for _ in 0..count {
        let field = |cursor: &mut &[u8]| -> Result<String> {
            let len = take_u32(cursor)? as usize;
            ensure!(cursor.len() >= len, "header block truncated");
            let (text, rest) = cursor.split_at(len);
            *cursor = rest;
            String::from_utf8(text.to_vec()).context("header is not UTF-8")
        };
        let name = field(&mut cursor)?;
        let value = field(&mut cursor)?;
        headers.push((name, value.split('\0').map(String::from).collect()));
    }
    ensure!(
        cursor.is_empty(),
        "{} bytes after the header block",
        cursor.len()
    );
    Ok(headers)
}

/// The sending direction's zlib stream (level 9, as spdystream's).
pub struct HeaderCompressor {
    zlib: Compress,
}

impl HeaderCompressor {
    /// A fresh compressor primed with the dictionary.
    pub fn new() -> Result<Self> {
        let mut zlib = Compress::new(Compression::best(), true);
        zlib.set_dictionary(dictionary())
            .context("setting the SPDY dictionary")?;
        Ok(Self { zlib })
    }

    /// Compresses one header block and sync-flushes, so the frame carries
    /// everything the peer needs to decode it.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>> {
        let raw = encode_header_block(headers);
        let start = self.zlib.total_in();
        let mut out = Vec::with_capacity(raw.len() + 64);
        loop {
            let consumed = (self.zlib.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.zlib
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .context("compressing a header block")?;
            let consumed = (self.zlib.total_in() - start) as usize;
            // A sync flush is complete once it left room in the output.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The receiving direction's zlib stream.
pub struct HeaderDecompressor {
    zlib: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecompressor {
    /// A fresh decompressor; the dictionary is supplied when zlib asks for it.
    pub fn new() -> Self {
        Self {
            zlib: Decompress::new(true),
        }
    }

    /// Decompresses one frame's header block (which must be complete).
    pub fn decompress(&mut self, input: &[u8]) -> Result<Headers> {
        let start = self.zlib.total_in();
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            let consumed = (self.zlib.total_in() - start) as usize;
            if out.capacity() - out.len() < 256 {
                out.reserve(1024);
            }
            match self
                .zlib
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => bail!("the peer ended its header zlib stream"),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.zlib
                        .set_dictionary(dictionary())
                        .context("setting the SPDY dictionary")?;
                }
                Err(e) => return Err(e).context("decompressing a header block"),
            }
            ensure!(out.len() <= MAX_HEADER_BLOCK, "header block too large");
            let consumed = (self.zlib.total_in() - start) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                return decode_header_block(&out);
            }
        }
    }
}

fn control_header(frame_type: u16, flags: u8, length: usize) -> Result<Vec<u8>> {
    ensure!(
        length <= MAX_PAYLOAD,
        "frame payload of {length} bytes is too large"
    );
    let mut out = Vec::with_capacity(8 + length);
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.extend_from_slice(&((u32::from(flags) << 24) | length as u32).to_be_bytes());
    Ok(out)
}

fn control_words(frame_type: u16, flags: u8, words: &[u32]) -> Result<Vec<u8>> {
    let mut out = control_header(frame_type, flags, words.len() * 4)?;
    for word in words {
        out.extend_from_slice(&word.to_be_bytes());
    }
    Ok(out)
}

/// Serialises `frame`, compressing header blocks with `compressor` (so frames
/// must be encoded in the order they are sent).
pub fn encode(frame: &Frame, compressor: &mut HeaderCompressor) -> Result<Vec<u8>> {
    match frame {
        Frame::SynStream {
            stream_id,
            associated,
            priority,
            flags,
            headers,
        } => {
            let block = compressor.compress(headers)?;
            let mut out = control_header(SYN_STREAM, *flags, 10 + block.len())?;
            out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
            out.extend_from_slice(&(associated & 0x7fff_ffff).to_be_bytes());
            out.push((priority & 0x7) << 5);
            out.push(0); // slot
            out.extend_from_slice(&block);
            Ok(out)
        }
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        }
        | Frame::Headers {
            stream_id,
            flags,
            headers,
        } => {
            let frame_type = if matches!(frame, Frame::SynReply { .. }) {
                SYN_REPLY
            } else {
                HEADERS
            };
            let block = compressor.compress(headers)?;
            let mut out = control_header(frame_type, *flags, 4 + block.len())?;
            out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
            out.extend_from_slice(&block);
            Ok(out)
        }
        Frame::RstStream { stream_id, status } => {
            control_words(RST_STREAM, 0, &[*stream_id, *status])
        }
        Frame::Settings { flags, entries } => {
            let mut words = vec![entries.len() as u32];
            for (entry_flags, id, value) in entries {
                words.push((u32::from(*entry_flags) << 24) | (id & 0xff_ffff));
                words.push(*value);
            }
            control_words(SETTINGS, *flags, &words)
        }
        Frame::Ping { id } => control_words(PING, 0, &[*id]),
        Frame::GoAway { last_good, status } => control_words(GOAWAY, 0, &[*last_good, *status]),
        Frame::WindowUpdate { stream_id, delta } => {
            control_words(WINDOW_UPDATE, 0, &[*stream_id, *delta])
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            ensure!(data.len() <= MAX_PAYLOAD, "DATA frame too large");
            let mut out = Vec::with_capacity(8 + data.len());
            out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
            out.extend_from_slice(&((u32::from(*flags) << 24) | data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            Ok(out)
        }
        Frame::Unknown { frame_type } => bail!("cannot encode unknown frame type {frame_type}"),
    }
}

fn word(payload: &[u8], index: usize) -> Result<u32> {
    let bytes = payload
        .get(index * 4..index * 4 + 4)
        .context("control frame too short")?;
    Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Parses one frame from its 8-byte header and payload.
pub fn decode(
    header: [u8; 8],
    payload: Vec<u8>,
    decompressor: &mut HeaderDecompressor,
) -> Result<Frame> {
    let first = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let flags = header[4];
    if first & 0x8000_0000 == 0 {
        return Ok(Frame::Data {
            stream_id: first,
            flags,
            data: payload,
        });
    }
    let version = ((first >> 16) & 0x7fff) as u16;
    ensure!(
        version == VERSION,
        "control frame of SPDY version {version}"
    );
    let frame_type = (first & 0xffff) as u16;
    let p = &payload;
    Ok(match frame_type {
        SYN_STREAM => {
            ensure!(p.len() >= 10, "SYN_STREAM too short");
            Frame::SynStream {
                stream_id: word(p, 0)? & 0x7fff_ffff,
                associated: word(p, 1)? & 0x7fff_ffff,
                priority: p[8] >> 5,
                flags,
                headers: decompressor.decompress(&p[10..])?,
            }
        }
        SYN_REPLY | HEADERS => {
            let stream_id = word(p, 0)? & 0x7fff_ffff;
            let headers = decompressor.decompress(&p[4..])?;
            if frame_type == SYN_REPLY {
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    flags,
                    headers,
                }
            }
        }
        RST_STREAM => Frame::RstStream {
            stream_id: word(p, 0)? & 0x7fff_ffff,
            status: word(p, 1)?,
        },
        SETTINGS => {
            let count = word(p, 0)? as usize;
            let mut entries = Vec::with_capacity(count.min(64));
            for i in 0..count {
                let id = word(p, 1 + 2 * i)?;
                entries.push(((id >> 24) as u8, id & 0xff_ffff, word(p, 2 + 2 * i)?));
            }
            Frame::Settings { flags, entries }
        }
        PING => Frame::Ping { id: word(p, 0)? },
        GOAWAY => Frame::GoAway {
            last_good: word(p, 0)? & 0x7fff_ffff,
            status: word(p, 1).unwrap_or(0),
        },
        WINDOW_UPDATE => Frame::WindowUpdate {
            stream_id: word(p, 0)? & 0x7fff_ffff,
            delta: word(p, 1)? & 0x7fff_ffff,
        },
        other => Frame::Unknown { frame_type: other },
    })
}

/// Reads the next frame; `Ok(None)` when the peer closed the connection
/// between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    decompressor: &mut HeaderDecompressor,
) -> Result<Option<Frame>> {
    let mut header = [0u8; 8];
    let first = reader.read(&mut header[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    reader
        .read_exact(&mut header[1..])
        .await
        .context("connection closed inside a frame header")?;
    let length = u32::from_be_bytes([0, header[5], header[6], header[7]]) as usize;
    let mut payload = vec![0u8; length];
    reader
        .read_exact(&mut payload)
        .await
        .context("connection closed inside a frame")?;
    decode(header, payload, decompressor).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.split('\0').map(String::from).collect()))
            .collect()
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        // Adler-32 of the dictionary: the DICTID in every SPDY/3 zlib header.
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in dict {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    /// Vectors made by Python's zlib (level 9, the SPDY/3 dictionary, one
    /// stream, a sync flush per block), as Go's compress/zlib writes them.
    #[test]
    fn decodes_zlib_made_header_blocks_on_one_stream() {
        let vectors = [
            ("78f9e3c6a7c202a6230600000000ffff", h(&[])),
            (
                "02253c705a2b294a4dcc851627aca9a0c08614cd45e05c6061606100a4398b205199094ae28c0600000000ffff",
                h(&[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "0"),
                ]),
            ),
            (
                "0211402c59a10bd1ae0bccaf25f9c9f939ba8824ae5c66a2077408b0e8ccd1cbb628d6cbcc672833461301000000ffff",
                h(&[(
                    "x-stream-protocol-version",
                    "v4.channel.k8s.io\0v3.channel.k8s.io",
                )]),
            ),
        ];
        let mut decompressor = HeaderDecompressor::new();
        for (hex_block, want) in vectors {
            let block = hex::decode(hex_block).unwrap();
            assert_eq!(decompressor.decompress(&block).unwrap(), want);
        }
    }

    #[test]
    fn header_blocks_round_trip_through_one_stream_each_way() {
        let blocks = [
            h(&[("streamtype", "error")]),
            h(&[("streamtype", "stdout")]),
            h(&[]),
            h(&[("a", "1\u{0}2"), ("b", "")]),
        ];
        let mut compressor = HeaderCompressor::new().unwrap();
        let mut decompressor = HeaderDecompressor::new();
        for block in &blocks {
            let wire = compressor.compress(block).unwrap();
            assert_eq!(&decompressor.decompress(&wire).unwrap(), block);
        }
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::SynStream {
                stream_id: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "error")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: FLAG_FIN,
                headers: h(&[]),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: b"hello".to_vec(),
            },
            Frame::RstStream {
                stream_id: 5,
                status: STATUS_CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 65536)],
            },
            Frame::Ping { id: 2 },
            Frame::GoAway {
                last_good: 0,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 4096,
            },
        ];
        let mut compressor = HeaderCompressor::new().unwrap();
        let mut decompressor = HeaderDecompressor::new();
        for frame in frames {
            let wire = encode(&frame, &mut compressor).unwrap();
            let header: [u8; 8] = wire[..8].try_into().unwrap();
            let length = u32::from_be_bytes([0, wire[5], wire[6], wire[7]]) as usize;
            assert_eq!(length, wire.len() - 8);
            let back = decode(header, wire[8..].to_vec(), &mut decompressor).unwrap();
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn wire_layout_matches_spdystream() {
        let mut compressor = HeaderCompressor::new().unwrap();
        let ping = encode(&Frame::Ping { id: 1 }, &mut compressor).unwrap();
        assert_eq!(ping, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        let data = encode(
            &Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: vec![],
            },
            &mut compressor,
        )
        .unwrap();
        assert_eq!(data, [0, 0, 0, 3, 1, 0, 0, 0]);
        let syn = encode(
            &Frame::SynStream {
                stream_id: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamType", "error")]),
            },
            &mut compressor,
        )
        .unwrap();
        assert_eq!(&syn[..4], [0x80, 3, 0, 1]);
        assert_eq!(&syn[8..18], [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        // Names go on the wire in lower case.
        let headers = HeaderDecompressor::new().decompress(&syn[18..]).unwrap();
        assert_eq!(header(&headers, "streamtype"), Some("error"));
        assert_eq!(headers[0].0, "streamtype");
    }
}
