//! A strict parser of the Prometheus / OpenMetrics text exposition format,
//! written from the format's description (independently of the crate crustd
//! encodes with), so a test can tell that `/metrics` parses and read its
//! figures.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail, ensure};

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name as written (with `_total`, `_bucket`... suffixes).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    /// Family name → declared type.
    pub types: HashMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include all of `labels`;
    /// `None` when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

const TYPES: [&str; 8] = [
    "counter",
    "gauge",
    "histogram",
    "summary",
    "untyped",
    "unknown",
    "info",
    "stateset",
];

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(s: &str) -> bool {
    valid_name(s) && !s.contains(':')
}

/// The family a sample name belongs to among the declared ones.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_total", "_bucket", "_count", "_sum", "_created", "_info"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.contains_key(base)
        {
            return Some(base);
        }
    }
    None
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn labels(s: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut out = BTreeMap::new();
    let Some(mut rest) = s.strip_prefix('{') else {
        return Ok((out, s));
    };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((out, after));
        }
        let eq = rest.find('=').context("a label without '='")?;
        let key = &rest[..eq];
        ensure!(valid_label(key), "invalid label name {key:?}");
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .context("a label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => bail!("bad escape in a label value: {other:?}"),
                },
                Some((_, c)) => value.push(c),
                None => bail!("unterminated label value"),
            }
        };
        ensure!(
            out.insert(key.to_string(), value).is_none(),
            "label {key:?} given twice"
        );
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        }
    }
}

fn number(s: &str) -> Result<f64> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().with_context(|| format!("{s:?} is not a number")),
    }
}

/// Parses a whole exposition. Every sample must belong to a family whose
/// `# TYPE` came before it, and an OpenMetrics `# EOF` must end the text if
/// present at all.
pub fn parse(text: &str) -> Result<Exposition> {
    let mut out = Exposition::default();
    let mut ended = false;
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        ensure!(!ended, "text after # EOF ({})", at());
        if line.is_empty() {
            continue;
        }
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    ensure!(valid_name(name), "invalid metric name ({})", at());
                    ensure!(TYPES.contains(&kind), "unknown type ({})", at());
                    ensure!(
                        out.types.insert(name.into(), kind.into()).is_none(),
                        "family declared twice ({})",
                        at()
                    );
                }
                (Some("HELP" | "UNIT"), Some(name), _) => {
                    ensure!(valid_name(name), "invalid metric name ({})", at());
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).with_context(at)?;
        let name = &line[..name_end];
        ensure!(valid_name(name), "invalid metric name ({})", at());
        ensure!(
            family_of(name, &out.types).is_some(),
            "sample of an undeclared family ({})",
            at()
        );
        let (labels, rest) = labels(&line[name_end..]).with_context(at)?;
        let mut fields = rest.split_whitespace();
        let value = number(fields.next().with_context(at)?).with_context(at)?;
        if let Some(ts) = fields.next() {
            number(ts).with_context(at)?;
        }
        ensure!(fields.next().is_none(), "trailing fields ({})", at());
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let text = "# HELP a_total Calls.\n# TYPE a counter\na_total{method=\"Version\",x=\"q\\\"\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n# EOF\n";
        let e = parse(text).unwrap();
        assert_eq!(e.value("a_total", &[("method", "Version")]), Some(3.0));
        assert_eq!(e.samples[0].labels["x"], "q\"");
        assert_eq!(e.value("h_count", &[]), Some(2.0));
        assert!(parse("b 1\n").is_err(), "undeclared family");
        assert!(
            parse("# TYPE b gauge\nb{1x=\"y\"} 1\n").is_err(),
            "bad label"
        );
        assert!(parse("# TYPE b gauge\nb one\n").is_err(), "bad value");
        assert!(parse("# TYPE b gauge\n# EOF\nb 1\n").is_err(), "after EOF");
    }
}
