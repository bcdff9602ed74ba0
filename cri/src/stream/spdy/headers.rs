//! SPDY/3 header blocks: the name/value layout and its zlib compression.
//!
//! Each direction of a session keeps one zlib stream for its whole life,
//! primed with the dictionary the SPDY/3 draft defines; every block ends with
//! a sync flush so the peer can decode it as soon as its frame arrives.

use std::collections::HashSet;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::FrameError;

/// Name/value pairs of a SPDY header block; names are lowercase ASCII.
pub type HeaderBlock = Vec<(String, String)>;

/// The zlib dictionary of SPDY/3 (draft 3, section 2.6.10.1): both zlib
/// streams of a session start from it.
pub const SPDY3_DICTIONARY: &[u8; 1423] = b"\
    \0\0\0\x07options\0\0\0\x04head\0\0\0\x04post\0\0\0\x03put\0\0\0\x06delete\
    \0\0\0\x05trace\0\0\0\x06accept\0\0\0\x0eaccept-charset\
    \0\0\0\x0faccept-encoding\0\0\0\x0faccept-language\
    \0\0\0\x0daccept-ranges\0\0\0\x03age\0\0\0\x05allow\
    \0\0\0\x0dauthorization\0\0\0\x0dcache-control\0\0\0\x0aconnection\
    \0\0\0\x0ccontent-base\0\0\0\x10content-encoding\
    \0\0\0\x10content-language\0\0\0\x0econtent-length\
    \0\0\0\x10content-location\0\0\0\x0bcontent-md5\
    \0\0\0\x0dcontent-range\0\0\0\x0ccontent-type\0\0\0\x04date\
    \0\0\0\x04etag\0\0\0\x06expect\0\0\0\x07expires\0\0\0\x04from\0\0\0\x04host\
    \0\0\0\x08if-match\0\0\0\x11if-modified-since\
    \0\0\0\x0dif-none-match\0\0\0\x08if-range\
    \0\0\0\x13if-unmodified-since\0\0\0\x0dlast-modified\
    \0\0\0\x08location\0\0\0\x0cmax-forwards\0\0\0\x06pragma\
    \0\0\0\x12proxy-authenticate\0\0\0\x13proxy-authorization\
    \0\0\0\x05range\0\0\0\x07referer\0\0\0\x0bretry-after\0\0\0\x06server\
    \0\0\0\x02te\0\0\0\x07trailer\0\0\0\x11transfer-encoding\
    \0\0\0\x07upgrade\0\0\0\x0auser-agent\0\0\0\x04vary\0\0\0\x03via\
    \0\0\0\x07warning\0\0\0\x10www-authenticate\0\0\0\x06method\0\0\0\x03get\
    \0\0\0\x06status\0\0\0\x06200 OK\0\0\0\x07version\0\0\0\x08HTTP/1.1\
    \0\0\0\x03url\0\0\0\x06public\0\0\0\x0aset-cookie\0\0\0\x0akeep-alive\
    \0\0\0\x06origin\
    1001012012022052063003023033043053063074024054064074084094104114\
    12413414415416417502504505203 Non-Authoritative Information204 N\
    o Content301 Moved Permanently400 Bad Request401 Unauthorized403\
    \x20Forbidden404 Not Found500 Internal Server Error501 Not Implemen\
    ted503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept O\
    ct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunke\
    d,text/html,image/png,image/jpg,image/gif,application/xml,applic\
    ation/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=\
    gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// Separates the values of one name inside a block.
const VALUE_SEPARATOR: char = '\0';

/// Decompressed bytes the first growth of a block's buffer makes room for.
const FIRST_CHUNK: usize = 1024;

/// Compresses header blocks for one direction of a session (one zlib stream with the SPDY/3 dictionary for the session's lifetime, a sync flush after each block).
pub struct HeaderEncoder {
    zlib: Compress,
    primed: bool,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderEncoder {
    /// Starts the zlib stream; the dictionary goes in with the first block.
    pub fn new() -> Self {
        Self {
            zlib: Compress::new(Compression::default(), true),
            primed: false,
        }
    }

    /// Serializes `headers` (names lowercased, repeated names joined with NUL
    /// at the first one's position) and compresses it, ending with a sync flush.
    pub fn encode(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, FrameError> {
        let raw = serialize(headers)?;
        if !self.primed {
            self.zlib
                .set_dictionary(SPDY3_DICTIONARY)
                .map_err(|e| FrameError::Invalid(format!("header compressor: {e}")))?;
            self.primed = true;
        }
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        let mut input = &raw[..];
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.len().max(64));
            }
            let (in_before, out_before) = (self.zlib.total_in(), self.zlib.total_out());
            self.zlib
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Invalid(format!("header compressor: {e}")))?;
            let consumed = progress(in_before, self.zlib.total_in());
            let produced = progress(out_before, self.zlib.total_out());
            input = &input[consumed..];
            // zlib has finished a flush once it leaves output space unused.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if consumed == 0 && produced == 0 {
                return Err(FrameError::Invalid("header compressor stalled".into()));
            }
        }
    }
}

/// Decompresses header blocks of the other direction, with a cap on the decompressed size of one block.
pub struct HeaderDecoder {
    zlib: Decompress,
    max_block_len: usize,
}

impl HeaderDecoder {
    /// A decoder that rejects any block decompressing to more than `max_block_len` bytes.
    pub fn new(max_block_len: usize) -> Self {
        Self {
            zlib: Decompress::new(true),
            max_block_len,
        }
    }

    /// Decompresses one block (the rest of a SYN_STREAM, SYN_REPLY or HEADERS
    /// frame) and parses it; values holding NULs become several pairs.
    pub fn decode(&mut self, compressed: &[u8]) -> Result<HeaderBlock, FrameError> {
        let raw = self.inflate(compressed)?;
        parse(&raw)
    }

    /// Runs `input` through the stream, never holding more than the cap plus one byte.
    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let limit = self.max_block_len.saturating_add(1);
        let mut out = Vec::new();
        loop {
            if out.len() == out.capacity() {
                let target = out.len().saturating_mul(2).max(FIRST_CHUNK).min(limit);
                out.reserve_exact(target - out.len());
            }
            let (in_before, out_before) = (self.zlib.total_in(), self.zlib.total_out());
            let result = self
                .zlib
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = progress(in_before, self.zlib.total_in());
            let produced = progress(out_before, self.zlib.total_out());
            input = &input[consumed..];
            if out.len() > self.max_block_len {
                return Err(FrameError::TooLarge {
                    what: "decompressed header block",
                    len: out.len(),
                    max: self.max_block_len,
                });
            }
            match result {
                Ok(Status::StreamEnd) if !input.is_empty() => {
                    return Err(FrameError::Compression(
                        "data after the end of the header stream".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.zlib.set_dictionary(SPDY3_DICTIONARY).map_err(|_| {
                        FrameError::Compression(
                            "header stream needs a dictionary other than SPDY/3's".into(),
                        )
                    })?;
                    continue;
                }
                Err(e) => return Err(FrameError::Compression(e.to_string())),
            }
            // zlib has emitted all it can once it leaves output space unused.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if consumed == 0 && produced == 0 {
                if input.is_empty() {
                    return Ok(out);
                }
                return Err(FrameError::Compression("header stream stalled".into()));
            }
        }
    }
}

/// How far a zlib byte counter moved during one call.
fn progress(before: u64, after: u64) -> usize {
    usize::try_from(after.saturating_sub(before)).unwrap_or(usize::MAX)
}

/// Lays out `headers` uncompressed, merging repeated names.
fn serialize(headers: &[(String, String)]) -> Result<Vec<u8>, FrameError> {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if name.is_empty() || name.contains(VALUE_SEPARATOR) {
            return Err(FrameError::Invalid(format!("bad header name {name:?}")));
        }
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, joined)) => {
                joined.push(VALUE_SEPARATOR);
                joined.push_str(value);
            }
            None => merged.push((name, value.clone())),
        }
    }
    let mut raw = Vec::new();
    put_len(&mut raw, merged.len())?;
    for (name, value) in &merged {
        put_len(&mut raw, name.len())?;
        raw.extend_from_slice(name.as_bytes());
        put_len(&mut raw, value.len())?;
        raw.extend_from_slice(value.as_bytes());
    }
    Ok(raw)
}

/// Appends a block's 32-bit big-endian count or length field.
fn put_len(raw: &mut Vec<u8>, len: usize) -> Result<(), FrameError> {
    let len = u32::try_from(len)
        .map_err(|_| FrameError::Invalid(format!("header field of {len} bytes")))?;
    raw.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Parses an uncompressed block, which must be consumed exactly.
fn parse(raw: &[u8]) -> Result<HeaderBlock, FrameError> {
    let mut rest = raw;
    let count = take_u32(&mut rest)? as usize;
    // Every pair needs at least its two length fields.
    if count > rest.len() / 8 {
        return Err(block_error("the pair count runs past the block"));
    }
    let mut block = Vec::with_capacity(count);
    let mut seen = HashSet::with_capacity(count);
    for _ in 0..count {
        let name = take_str(&mut rest)?.to_ascii_lowercase();
        if name.is_empty() {
            return Err(block_error("empty header name"));
        }
        if !seen.insert(name.clone()) {
            return Err(block_error(&format!("duplicate header name {name:?}")));
        }
        let value = take_str(&mut rest)?;
        for part in value.split(VALUE_SEPARATOR) {
            block.push((name.clone(), part.to_owned()));
        }
    }
    if !rest.is_empty() {
        return Err(block_error("bytes after the last pair"));
    }
    Ok(block)
}

/// Reads a 32-bit big-endian field off the front of `rest`.
fn take_u32(rest: &mut &[u8]) -> Result<u32, FrameError> {
    let Some((head, tail)) = rest.split_first_chunk::<4>() else {
        return Err(block_error("a length runs past the block"));
    };
    *rest = tail;
    Ok(u32::from_be_bytes(*head))
}

/// Reads a length-prefixed UTF-8 string off the front of `rest`.
fn take_str<'a>(rest: &mut &'a [u8]) -> Result<&'a str, FrameError> {
    let len = take_u32(rest)? as usize;
    if len > rest.len() {
        return Err(block_error("a string runs past the block"));
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    std::str::from_utf8(bytes).map_err(|_| block_error("header is not UTF-8"))
}

/// A protocol error about a header block.
fn block_error(why: &str) -> FrameError {
    FrameError::Protocol(format!("header block: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes from a hex string.
    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Pairs from string literals.
    fn pairs(list: &[(&str, &str)]) -> HeaderBlock {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// Compresses arbitrary bytes as one block of a fresh stream with `dict`.
    fn deflate_with(dict: &[u8], raw: &[u8]) -> Vec<u8> {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(dict).unwrap();
        let mut out = Vec::with_capacity(raw.len() + 1024);
        zlib.compress_vec(raw, &mut out, FlushCompress::Sync)
            .unwrap();
        assert_eq!(zlib.total_in() as usize, raw.len());
        out
    }

    /// An uncompressed block from (name, value) byte strings, as laid out on the wire.
    fn raw_block(count: u32, list: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut raw = count.to_be_bytes().to_vec();
        for (name, value) in list {
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name);
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value);
        }
        raw
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        // The draft's dictionary has 1423 bytes and Adler-32 0xe3c6a7c2, the
        // id a SPDY/3 zlib header carries.
        let mut zlib = Compress::new(Compression::default(), true);
        assert_eq!(zlib.set_dictionary(SPDY3_DICTIONARY).unwrap(), 0xe3c6_a7c2);
        assert!(SPDY3_DICTIONARY.starts_with(b"\0\0\0\x07options"));
        assert!(SPDY3_DICTIONARY.ends_with(b"utf-,*,enq=0."));
    }

    #[test]
    fn round_trip_keeps_state_across_blocks() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new(1 << 16);
        let blocks = [
            pairs(&[("streamtype", "error"), ("port", "8080")]),
            pairs(&[("streamtype", "stdout"), ("requestid", "1")]),
            pairs(&[]),
            pairs(&[("a", ""), ("b", "ü")]),
        ];
        for block in &blocks {
            let compressed = enc.encode(block).unwrap();
            assert_eq!(&dec.decode(&compressed).unwrap(), block);
        }
    }

    #[test]
    fn multi_values_are_joined_and_split() {
        let mut enc = HeaderEncoder::new();
        let sent = pairs(&[
            ("Accept", "a"),
            ("x", "1"),
            ("accept", "b"),
            ("ACCEPT", "c"),
        ]);
        let compressed = enc.encode(&sent).unwrap();
        let raw = HeaderDecoder::new(1024).inflate(&compressed).unwrap();
        assert_eq!(
            raw,
            raw_block(2, &[(b"accept", b"a\0b\0c"), (b"x", b"1")]),
            "names lowercased, values joined at the first one's position"
        );
        let got = HeaderDecoder::new(1024).decode(&compressed).unwrap();
        let want = pairs(&[
            ("accept", "a"),
            ("accept", "b"),
            ("accept", "c"),
            ("x", "1"),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn decodes_blocks_from_python_zlib() {
        // Made with python3:
        //   c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=SPDY3_DICTIONARY)
        //   z1 = c.compress(b1) + c.flush(zlib.Z_SYNC_FLUSH)
        //   z2 = c.compress(b2) + c.flush(zlib.Z_SYNC_FLUSH)
        // with b1 = {streamtype: error, port: 8080} and
        // b2 = {streamtype: stdout, x-multi: "a\0b", requestid: 1} in SPDY/3 layout.
        let z1 =
            hex("78f9e3c6a7c202e50e703a2b294a4dcc851625aca9a0808614cb45e01c6061606100000000ffff");
        let z2 = hex(
            "02a54f0ca5c0c49d920f2eb3d92b74734b734a32c1052b431290e22c82447a262833301a02000000ffff",
        );
        let mut dec = HeaderDecoder::new(1024);
        assert_eq!(
            dec.decode(&z1).unwrap(),
            pairs(&[("streamtype", "error"), ("port", "8080")])
        );
        assert_eq!(
            dec.decode(&z2).unwrap(),
            pairs(&[
                ("streamtype", "stdout"),
                ("x-multi", "a"),
                ("x-multi", "b"),
                ("requestid", "1")
            ])
        );
    }

    #[test]
    fn second_block_needs_the_first_blocks_state() {
        let mut enc = HeaderEncoder::new();
        let block = pairs(&[("streamtype", "stdin")]);
        let first = enc.encode(&block).unwrap();
        let second = enc.encode(&block).unwrap();
        assert!(HeaderDecoder::new(1024).decode(&second).is_err());
        let mut dec = HeaderDecoder::new(1024);
        assert_eq!(dec.decode(&first).unwrap(), block);
        assert_eq!(dec.decode(&second).unwrap(), block);
    }

    #[test]
    fn rejects_other_dictionaries() {
        let compressed = deflate_with(b"not the spdy dictionary", &raw_block(0, &[]));
        let err = HeaderDecoder::new(1024).decode(&compressed).unwrap_err();
        assert!(
            matches!(&err, FrameError::Compression(why) if why.contains("dictionary")),
            "{err}"
        );
    }

    #[test]
    fn rejects_garbage_and_trailing_stream_data() {
        let err = HeaderDecoder::new(1024)
            .decode(b"not zlib at all")
            .unwrap_err();
        assert!(matches!(err, FrameError::Compression(_)), "{err}");

        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(SPDY3_DICTIONARY).unwrap();
        let mut finished = Vec::with_capacity(256);
        zlib.compress_vec(&raw_block(0, &[]), &mut finished, FlushCompress::Finish)
            .unwrap();
        finished.extend_from_slice(b"more");
        let err = HeaderDecoder::new(1024).decode(&finished).unwrap_err();
        assert!(matches!(err, FrameError::Compression(_)), "{err}");
    }

    #[test]
    fn zlib_bomb_stops_at_the_cap() {
        let big = vec![b'x'; 8 << 20];
        let compressed = deflate_with(SPDY3_DICTIONARY, &raw_block(1, &[(b"a", &big)]));
        assert!(compressed.len() < 64 << 10);
        let err = HeaderDecoder::new(64 << 10)
            .decode(&compressed)
            .unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max, .. } if max == 64 << 10 && len == max + 1),
            "{err}"
        );
    }

    #[test]
    fn buffer_never_grows_past_the_cap() {
        let cap = 10_000;
        let value = vec![b'v'; cap - 4 - 4 - 1 - 4];
        let raw = raw_block(1, &[(b"a", &value)]);
        assert_eq!(raw.len(), cap);
        let compressed = deflate_with(SPDY3_DICTIONARY, &raw);
        let mut dec = HeaderDecoder::new(cap);
        let out = dec.inflate(&compressed).unwrap();
        assert_eq!(out, raw);
        assert!(out.capacity() <= cap + 1, "capacity {}", out.capacity());
        assert!(parse(&out).is_ok());
    }

    #[test]
    fn rejects_malformed_blocks() {
        let cases: [(&str, Vec<u8>); 9] = [
            ("empty", Vec::new()),
            ("short count", vec![0, 0]),
            ("count past the block", raw_block(2, &[(b"a", b"1")])),
            ("huge count", raw_block(u32::MAX, &[(b"a", b"1")])),
            ("empty name", raw_block(1, &[(b"", b"1")])),
            ("duplicate", raw_block(2, &[(b"a", b"1"), (b"A", b"2")])),
            ("bad utf-8", raw_block(1, &[(b"a", b"\xff")])),
            (
                "trailing",
                [raw_block(1, &[(b"a", b"1")]), vec![0]].concat(),
            ),
            ("value past the block", {
                let mut raw = raw_block(1, &[(b"a", b"1")]);
                raw[12] = 9;
                raw
            }),
        ];
        for (what, raw) in cases {
            assert!(
                matches!(parse(&raw), Err(FrameError::Protocol(_))),
                "{what} accepted"
            );
        }
        let truncated = deflate_with(SPDY3_DICTIONARY, &raw_block(2, &[(b"a", b"1")]));
        let err = HeaderDecoder::new(1024).decode(&truncated).unwrap_err();
        assert!(matches!(err, FrameError::Protocol(_)), "{err}");
    }

    #[test]
    fn encoder_rejects_empty_names() {
        let err = HeaderEncoder::new()
            .encode(&pairs(&[("", "x")]))
            .unwrap_err();
        assert!(matches!(err, FrameError::Invalid(_)), "{err}");
    }
}
