//! Parsing container log files in the CRI format kubelet reads:
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>`, one record a line.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};

/// Which stream a log record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The record's time in nanoseconds since the Unix epoch.
    pub timestamp_nanos: i64,
    /// The stream it was written to.
    pub stream: Stream,
    /// `P`: the line continues in the next record; `F`: the line ends here.
    pub partial: bool,
    /// The text, without the newline.
    pub content: String,
}

/// Reads and parses every record of the log file at `path`.
pub fn read_log(path: &Path) -> Result<Vec<LogRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| parse_record(line).with_context(|| format!("log line {line:?}")))
        .collect()
}

/// Parses one log line.
pub fn parse_record(line: &str) -> Result<LogRecord> {
    let mut parts = line.splitn(4, ' ');
    let timestamp = parts.next().ok_or_else(|| anyhow!("empty line"))?;
    let stream = match parts.next() {
        Some("stdout") => Stream::Stdout,
        Some("stderr") => Stream::Stderr,
        other => bail!("bad stream {other:?}"),
    };
    let tags = parts.next().ok_or_else(|| anyhow!("missing tag"))?;
    let partial = match tags.split(':').next() {
        Some("P") => true,
        Some("F") => false,
        other => bail!("bad tag {other:?}"),
    };
    Ok(LogRecord {
        timestamp_nanos: parse_rfc3339_nanos(timestamp)?,
        stream,
        partial,
        content: parts.next().unwrap_or("").to_string(),
    })
}

/// Parses an RFC 3339 timestamp with optional fraction (`Z` or `±hh:mm` offset)
/// into nanoseconds since the Unix epoch.
pub fn parse_rfc3339_nanos(text: &str) -> Result<i64> {
    let b = text.as_bytes();
    ensure!(b.len() >= 20, "timestamp {text:?} too short");
    ensure!(
        b[4] == b'-'
            && b[7] == b'-'
            && (b[10] == b'T' || b[10] == b't')
            && b[13] == b':'
            && b[16] == b':',
        "timestamp {text:?} is not RFC 3339"
    );
    let num = |range: std::ops::Range<usize>| -> Result<i64> {
        text.get(range.clone())
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("timestamp {text:?}: bad digits at {range:?}"))
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    ensure!(
        (1..=12).contains(&month) && (1..=31).contains(&day),
        "timestamp {text:?}: bad date"
    );
    ensure!(
        hour < 24 && minute < 60 && second <= 60,
        "timestamp {text:?}: bad time"
    );
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        ensure!(
            (1..=9).contains(&digits),
            "timestamp {text:?}: bad fraction"
        );
        nanos = fraction[..digits].parse::<i64>()? * 10i64.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => bail!("timestamp {text:?}: bad zone"),
            };
            ensure!(
                rest.len() == 6 && rest.as_bytes()[3] == b':',
                "timestamp {text:?}: bad zone"
            );
            let hours: i64 = rest[1..3].parse()?;
            let minutes: i64 = rest[4..6].parse()?;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Ok(seconds * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_example() {
        let r =
            parse_record("2016-10-06T00:17:09.669794202Z stdout F The content of the log entry 1")
                .unwrap();
        assert_eq!(r.stream, Stream::Stdout);
        assert!(!r.partial);
        assert_eq!(r.content, "The content of the log entry 1");
        assert_eq!(r.timestamp_nanos, 1_475_713_029_669_794_202);
    }

    #[test]
    fn parses_partial_empty_and_offsets() {
        let r = parse_record("2016-10-06T02:17:09.5+02:00 stderr P ").unwrap();
        assert_eq!(r.stream, Stream::Stderr);
        assert!(r.partial);
        assert_eq!(r.content, "");
        assert_eq!(r.timestamp_nanos, 1_475_713_029_500_000_000);
        let r = parse_record("1970-01-01T00:00:00Z stdout F").unwrap();
        assert_eq!(r.timestamp_nanos, 0);
        assert_eq!(r.content, "");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_record("hello world").is_err());
        assert!(parse_record("2016-10-06T00:17:09Z stdin F x").is_err());
        assert!(parse_record("2016-10-06T00:17:09Z stdout X x").is_err());
        assert!(parse_rfc3339_nanos("2016-13-06T00:17:09Z").is_err());
    }
}
