//! Just enough JSON for the shim's messages and runc's logs: escaping the
//! strings written, and reading the top-level string and integer fields of
//! one object (a report, an exit record, a runc `--log-format json` line).

/// Returns `s` as a quoted JSON string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A top-level member's value, as far as these messages need to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string.
    Str(String),
    /// A number without fraction or exponent.
    Int(i128),
    /// Anything else (another number, an object, an array, a literal).
    Other,
}

/// Parses one JSON object and returns its top-level members in order.
/// Returns `None` if `text` is not a single well-formed JSON object.
pub fn fields(text: &str) -> Option<Vec<(String, Value)>> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let mut fields = Vec::new();
    p.ws();
    p.expect(b'{')?;
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let value = if p.peek() == Some(b'"') {
                Value::Str(p.string()?)
            } else {
                let start = p.i;
                p.skip_value(0)?;
                std::str::from_utf8(&p.s[start..p.i])
                    .ok()
                    .filter(|t| t.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
                    .and_then(|t| t.parse().ok())
                    .map_or(Value::Other, Value::Int)
            };
            fields.push((key, value));
            p.ws();
            match p.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    p.ws();
    if p.i == p.s.len() { Some(fields) } else { None }
}

/// The top-level members of one JSON object whose values are strings, in
/// order; `None` if `text` is not a single well-formed JSON object.
pub fn string_fields(text: &str) -> Option<Vec<(String, String)>> {
    Some(
        fields(text)?
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::Str(s) => Some((k, s)),
                _ => None,
            })
            .collect(),
    )
}

/// Nesting limit when skipping values, so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 64;

/// A byte cursor over the input.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.s.get(self.i..self.i + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        let v = u32::from_str_radix(text, 16).ok()?;
        self.i += 4;
        Some(v)
    }

    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' => {
                    let c = match self.next()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xD800..0xDC00).contains(&hi) {
                                // A high surrogate must be followed by a low one.
                                let is_pair = self.s.get(self.i..self.i + 2) == Some(b"\\u");
                                let lo = if is_pair {
                                    self.i += 2;
                                    self.hex4()?
                                } else {
                                    0
                                };
                                if (0xDC00..0xE000).contains(&lo) {
                                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                                        .unwrap_or('\u{fffd}')
                                } else {
                                    '\u{fffd}'
                                }
                            } else {
                                char::from_u32(hi).unwrap_or('\u{fffd}')
                            }
                        }
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => return None,
                c => out.push(c),
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.i += 1;
                self.ws();
                if self.peek() == Some(close) {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                    }
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => continue,
                        c if c == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => {
                // Number or literal: consume its characters.
                let start = self.i;
                while matches!(
                    self.peek(),
                    Some(b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'-' | b'+' | b'.')
                ) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_specials() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("a\"b\\c\nd\te"), r#""a\"b\\c\nd\te""#);
        assert_eq!(quote("\u{1}x\u{7f}"), r#""\u0001x\u007f""#);
        assert_eq!(quote("héllo ✓"), "\"héllo ✓\"");
    }

    #[test]
    fn reads_runc_log_line() {
        let line = r#"{"level":"error","msg":"runc create failed: exec: \"nope\": not found","time":"2024-01-01T00:00:00Z"}"#;
        let f = string_fields(line).expect("object");
        assert_eq!(f[0], ("level".into(), "error".into()));
        assert_eq!(
            f[1],
            (
                "msg".into(),
                "runc create failed: exec: \"nope\": not found".into()
            )
        );
    }

    #[test]
    fn skips_non_string_values_and_decodes_unicode() {
        let line =
            r#" { "n": -1.5e3, "o": {"a":[1,true,null,{"b":"c"}]}, "s": "\u00e9\ud83d\ude00\/" } "#;
        let f = string_fields(line).expect("object");
        assert_eq!(f, vec![("s".to_string(), "é😀/".to_string())]);
        assert_eq!(string_fields("{}"), Some(vec![]));
    }

    #[test]
    fn reads_integers() {
        let f = fields(r#"{"pid":42,"at":-7,"x":1.5,"big":1795447535123456789}"#).expect("object");
        assert_eq!(
            f,
            vec![
                ("pid".to_string(), Value::Int(42)),
                ("at".to_string(), Value::Int(-7)),
                ("x".to_string(), Value::Other),
                ("big".to_string(), Value::Int(1795447535123456789)),
            ]
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(string_fields("time=\"x\" level=error"), None);
        assert_eq!(string_fields("{\"a\":\"b\""), None);
        assert_eq!(string_fields("{\"a\":\"b\"} trailing"), None);
        assert_eq!(string_fields(""), None);
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(string_fields(&deep), None);
    }
}
