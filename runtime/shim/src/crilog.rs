//! The CRI container log format: `<RFC3339Nano UTC> <stream> <F|P> <content>\n`
//! records, the line splitter that turns a byte stream into records, and the
//! shared, reopenable log file they are written to.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest content of one record; longer lines are split into `P` chunks.
pub const MAX_RECORD_CONTENT: usize = 16 * 1024;

/// Which container stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's standard output (also everything from a pty).
    Stdout,
    /// The container's standard error.
    Stderr,
}

impl Stream {
    /// The name used in log records.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Whether a record is a complete line or a chunk of a longer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `F`: the record ends a line.
    Full,
    /// `P`: the line continues in the next record.
    Partial,
}

impl Tag {
    /// The tag character used in log records.
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Full => "F",
            Tag::Partial => "P",
        }
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// (Howard Hinnant's `civil_from_days`.)
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `t` as UTC RFC 3339 with exactly nine fraction digits, e.g.
/// `2026-11-23T15:25:35.123456789Z`.
pub fn write_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (-(d.as_secs() as i64), d.subsec_nanos());
            if n == 0 {
                (s, 0)
            } else {
                (s - 1, 1_000_000_000 - n)
            }
        }
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// Appends one complete log record (with its trailing newline) to `out`.
pub fn write_record(out: &mut Vec<u8>, t: SystemTime, stream: Stream, tag: Tag, content: &[u8]) {
    write_timestamp(out, t);
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(tag.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Splits a byte stream into log record contents: one `F` per `\n`-terminated
/// line (without the newline), `P` chunks of [`MAX_RECORD_CONTENT`] bytes for
/// longer lines, and the leftover as `F` at end of stream.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    strip_cr: bool,
}

impl LineSplitter {
    /// A splitter; with `strip_cr`, a `\r` right before a line's `\n` is
    /// dropped too (a pty turns every `\n` into `\r\n`).
    pub fn new(strip_cr: bool) -> Self {
        LineSplitter {
            pending: Vec::new(),
            strip_cr,
        }
    }

    /// Feeds `data`, calling `emit` for every record it completes.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(Tag, &[u8])) {
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            let segment = &data[..pos];
            if self.pending.is_empty() {
                emit_line(segment, self.strip_cr, &mut emit);
            } else {
                self.pending.extend_from_slice(segment);
                emit_line(&self.pending, self.strip_cr, &mut emit);
                self.pending.clear();
            }
            data = &data[pos + 1..];
        }
        self.pending.extend_from_slice(data);
        // Emit full chunks only while more bytes of the same line follow, so
        // a line of exactly MAX_RECORD_CONTENT bytes is still one `F` record.
        let mut off = 0;
        while self.pending.len() - off > MAX_RECORD_CONTENT {
            emit(Tag::Partial, &self.pending[off..off + MAX_RECORD_CONTENT]);
            off += MAX_RECORD_CONTENT;
        }
        if off > 0 {
            self.pending.drain(..off);
        }
    }

    /// Ends the stream: emits leftover bytes (a last line without newline) as `F`.
    pub fn finish(&mut self, mut emit: impl FnMut(Tag, &[u8])) {
        if !self.pending.is_empty() {
            emit(Tag::Full, &self.pending);
            self.pending.clear();
        }
    }
}

/// Emits one newline-terminated line (newline already removed).
fn emit_line(mut line: &[u8], strip_cr: bool, emit: &mut impl FnMut(Tag, &[u8])) {
    if strip_cr && line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    while line.len() > MAX_RECORD_CONTENT {
        emit(Tag::Partial, &line[..MAX_RECORD_CONTENT]);
        line = &line[MAX_RECORD_CONTENT..];
    }
    emit(Tag::Full, line);
}

/// The container's log file, shared by the stream pumps and the control
/// socket. Records are written under one mutex, one `write` each, so they
/// never interleave. When no file is open, records are discarded.
#[derive(Debug)]
pub struct LogSink {
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
}

impl LogSink {
    /// Opens the log at `path` (if any). A failed open is not fatal: output is
    /// then discarded until a successful [`LogSink::reopen`].
    pub fn new(path: Option<PathBuf>) -> Self {
        let file = path.as_ref().and_then(|p| open_log(p).ok());
        LogSink {
            path,
            file: Mutex::new(file),
        }
    }

    /// A sink that discards everything.
    #[cfg(test)]
    pub fn discard() -> Self {
        LogSink::new(None)
    }

    fn lock(&self) -> MutexGuard<'_, Option<File>> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one record, formatted in `scratch` (reused to avoid allocations).
    /// Write errors (full disk, ...) drop the record; the stream keeps flowing.
    pub fn write(
        &self,
        scratch: &mut Vec<u8>,
        t: SystemTime,
        stream: Stream,
        tag: Tag,
        data: &[u8],
    ) {
        let mut guard = self.lock();
        if let Some(file) = guard.as_mut() {
            scratch.clear();
            write_record(scratch, t, stream, tag, data);
            let _ = file.write_all(scratch);
        }
    }

    /// Closes the log and opens it again at the same path (creating it), for
    /// log rotation. If opening fails, the old file stays in use and the error
    /// is returned. Without a log path this does nothing.
    pub fn reopen(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut guard = self.lock();
        let new = open_log(path)?;
        *guard = Some(new);
        Ok(())
    }
}

/// Opens a log file for appending (O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC|O_NOFOLLOW, 0640),
/// without creating parent directories.
fn open_log(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        // A symlink planted at the log path is not followed.
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ts(secs: u64, nanos: u32) -> String {
        let mut v = Vec::new();
        write_timestamp(&mut v, UNIX_EPOCH + Duration::new(secs, nanos));
        String::from_utf8(v).expect("ascii")
    }

    #[test]
    fn timestamps_for_known_instants() {
        assert_eq!(ts(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(ts(1, 5), "1970-01-01T00:00:01.000000005Z");
        // 2000-02-29 (leap day in a century leap year)
        assert_eq!(ts(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(
            ts(951_868_799, 999_999_999),
            "2000-02-29T23:59:59.999999999Z"
        );
        assert_eq!(ts(1_709_251_199, 1), "2024-02-29T23:59:59.000000001Z");
        assert_eq!(
            ts(1_800_000_000, 123_456_789),
            "2027-01-15T08:00:00.123456789Z"
        );
        assert_eq!(
            ts(1_795_447_535, 123_456_789),
            "2026-11-23T15:25:35.123456789Z"
        );
        assert_eq!(ts(4_102_444_800, 0), "2100-01-01T00:00:00.000000000Z");
        assert_eq!(ts(253_402_300_799, 0), "9999-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn timestamps_before_epoch() {
        let mut v = Vec::new();
        write_timestamp(&mut v, UNIX_EPOCH - Duration::new(0, 1));
        assert_eq!(v, b"1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn civil_matches_day_by_day() {
        // Walk 1970..2400 day by day against a naive calendar.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..(430 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            d += 1;
            if d > len[(m - 1) as usize] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn record_layout() {
        let mut v = Vec::new();
        let t = UNIX_EPOCH + Duration::new(1_795_447_535, 123_456_789);
        write_record(&mut v, t, Stream::Stderr, Tag::Partial, b"hi there");
        assert_eq!(v, b"2026-11-23T15:25:35.123456789Z stderr P hi there\n");
        v.clear();
        write_record(&mut v, t, Stream::Stdout, Tag::Full, b"");
        assert_eq!(v, b"2026-11-23T15:25:35.123456789Z stdout F \n");
    }

    fn split(chunks: &[&[u8]], strip_cr: bool) -> Vec<(Tag, Vec<u8>)> {
        let mut s = LineSplitter::new(strip_cr);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, |t, d| out.push((t, d.to_vec())));
        }
        s.finish(|t, d| out.push((t, d.to_vec())));
        out
    }

    fn full(s: &[u8]) -> (Tag, Vec<u8>) {
        (Tag::Full, s.to_vec())
    }

    #[test]
    fn splits_lines() {
        assert_eq!(
            split(&[b"a\nbb\n\nccc\n"], false),
            vec![full(b"a"), full(b"bb"), full(b""), full(b"ccc")]
        );
    }

    #[test]
    fn joins_lines_across_reads() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n", b"x"], false),
            vec![full(b"hello"), full(b"world"), full(b"x")]
        );
    }

    #[test]
    fn leftover_at_eof_is_full() {
        assert_eq!(split(&[b"no newline"], false), vec![full(b"no newline")]);
        assert_eq!(split(&[b""], false), vec![]);
    }

    #[test]
    fn long_lines_become_partial_chunks() {
        let max = MAX_RECORD_CONTENT;
        let exact = vec![b'a'; max];
        let mut input = exact.clone();
        input.push(b'\n');
        assert_eq!(split(&[&input], false), vec![full(&exact)]);

        let long: Vec<u8> = (0..2 * max + 10).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        let want = vec![
            (Tag::Partial, long[..max].to_vec()),
            (Tag::Partial, long[max..2 * max].to_vec()),
            full(&long[2 * max..]),
            full(b"next"),
        ];
        assert_eq!(split(&[&input], false), want);
        // Same result when the data arrives in small pieces.
        let pieces: Vec<&[u8]> = input.chunks(1000).collect();
        assert_eq!(split(&pieces, false), want);
        // A long unterminated line is chunked as it arrives, rest at EOF.
        assert_eq!(
            split(&[&long], false),
            vec![
                (Tag::Partial, long[..max].to_vec()),
                (Tag::Partial, long[max..2 * max].to_vec()),
                full(&long[2 * max..]),
            ]
        );
    }

    #[test]
    fn strips_cr_only_when_asked() {
        assert_eq!(
            split(&[b"a\r\nb\r", b"\n"], true),
            vec![full(b"a"), full(b"b")]
        );
        assert_eq!(split(&[b"a\r\n"], false), vec![full(b"a\r")]);
        assert_eq!(split(&[b"a\rb\r\n"], true), vec![full(b"a\rb")]);
    }

    #[test]
    fn sink_writes_and_reopens() {
        let dir = std::env::temp_dir().join(format!("crust-shim-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("c.log");
        let sink = LogSink::new(Some(path.clone()));
        let t = UNIX_EPOCH;
        let mut scratch = Vec::new();
        sink.write(&mut scratch, t, Stream::Stdout, Tag::Full, b"one");
        std::fs::rename(&path, dir.join("c.log.1")).expect("rename");
        sink.write(&mut scratch, t, Stream::Stdout, Tag::Full, b"two");
        sink.reopen().expect("reopen");
        sink.write(&mut scratch, t, Stream::Stderr, Tag::Full, b"three");
        let old = std::fs::read_to_string(dir.join("c.log.1")).expect("read");
        let new = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            old,
            "1970-01-01T00:00:00.000000000Z stdout F one\n1970-01-01T00:00:00.000000000Z stdout F two\n"
        );
        assert_eq!(new, "1970-01-01T00:00:00.000000000Z stderr F three\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077 & !0o040, 0, "mode {mode:o}");
        std::fs::remove_dir_all(&dir).expect("cleanup");

        // A symlink at the log path is refused, not followed.
        let dir = std::env::temp_dir().join(format!("crust-crilog-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("0.log")).unwrap();
        assert!(open_log(&dir.join("0.log")).is_err());
        assert!(!dir.join("target").exists());
        std::fs::remove_dir_all(&dir).unwrap();

        // No parent dir: records are discarded, reopen reports the error.
        let missing = LogSink::new(Some(dir.join("nope/c.log")));
        missing.write(&mut scratch, t, Stream::Stdout, Tag::Full, b"lost");
        assert!(missing.reopen().is_err());
        assert!(LogSink::discard().reopen().is_ok());
    }
}
