//! The two JSON messages a shim writes: its report on stdout and its exit
//! record in the bundle.

use crate::json::{self, Value};

/// The one line a starting shim writes on the pipe crustd reads, then
/// closes: `{"pid":N,"shim_pid":M}` once `runc create` succeeded (`crust-shim
/// pause` reports only its namespace's init, `{"pid":N}`), or
/// `{"error":"..."}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Started: the container's (or the PID namespace's) init, and the
    /// supervising shim when there is one.
    Started {
        /// Host pid of the init process.
        pid: i32,
        /// Host pid of the detached shim.
        shim_pid: Option<i32>,
    },
    /// Did not start; the text says why (runc's own message when runc
    /// refused).
    Failed(String),
}

impl Report {
    /// The line to write, newline included.
    pub fn encode(&self) -> String {
        match self {
            Report::Started {
                pid,
                shim_pid: Some(shim),
            } => format!("{{\"pid\":{pid},\"shim_pid\":{shim}}}\n"),
            Report::Started {
                pid,
                shim_pid: None,
            } => format!("{{\"pid\":{pid}}}\n"),
            Report::Failed(msg) => format!("{{\"error\":{}}}\n", json::quote(msg)),
        }
    }

    /// Reads a report line; an error says what is wrong with it.
    pub fn decode(line: &str) -> Result<Report, String> {
        let fields = json::fields(line.trim())
            .ok_or_else(|| format!("the shim's report {line:?} is not a JSON object"))?;
        if let Some(msg) = string(&fields, "error") {
            return Ok(Report::Failed(msg));
        }
        let pid = positive_pid(&fields, "pid")
            .ok_or_else(|| format!("the shim's report {line:?} lacks a valid pid"))?;
        let shim_pid = match fields.iter().any(|(k, _)| k == "shim_pid") {
            false => None,
            true => Some(
                positive_pid(&fields, "shim_pid")
                    .ok_or_else(|| format!("the shim's report {line:?} has an invalid shim_pid"))?,
            ),
        };
        Ok(Report::Started { pid, shim_pid })
    }
}

/// How a container's init ended, as the shim records it in the bundle's
/// exit file: `{"exit_code":N,"exited_at":NS}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    /// Exit code; 128 + signal number for a process killed by a signal.
    pub exit_code: i32,
    /// When `waitpid` returned its status, in nanoseconds since the epoch.
    pub exited_at: i64,
}

impl ExitRecord {
    /// The file's content: one JSON line.
    pub fn encode(&self) -> String {
        format!(
            "{{\"exit_code\":{},\"exited_at\":{}}}\n",
            self.exit_code, self.exited_at
        )
    }

    /// Reads an exit file's content; `None` when it is not a whole record.
    pub fn decode(text: &str) -> Option<ExitRecord> {
        let fields = json::fields(text.trim())?;
        Some(ExitRecord {
            exit_code: i32::try_from(int(&fields, "exit_code")?).ok()?,
            exited_at: i64::try_from(int(&fields, "exited_at")?).ok()?,
        })
    }
}

fn int(fields: &[(String, Value)], key: &str) -> Option<i128> {
    fields.iter().find_map(|(k, v)| match v {
        Value::Int(n) if k == key => Some(*n),
        _ => None,
    })
}

fn positive_pid(fields: &[(String, Value)], key: &str) -> Option<i32> {
    int(fields, key)
        .and_then(|n| i32::try_from(n).ok())
        .filter(|p| *p > 0)
}

fn string(fields: &[(String, Value)], key: &str) -> Option<String> {
    fields.iter().find_map(|(k, v)| match v {
        Value::Str(s) if k == key => Some(s.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Started {
                pid: 4242,
                shim_pid: Some(4241),
            },
            Report::Started {
                pid: 7,
                shim_pid: None,
            },
            Report::Failed("exec: \"nope\": not found\nsecond line".into()),
        ] {
            let line = r.encode();
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{line:?}"
            );
            assert_eq!(Report::decode(&line), Ok(r));
        }
    }

    #[test]
    fn bad_reports_are_errors() {
        for line in [
            "",
            "garbage",
            "{}",
            "{\"pid\":0}",
            "{\"pid\":-3}",
            "{\"pid\":99999999999}",
            "{\"pid\":5,\"shim_pid\":\"x\"}",
        ] {
            assert!(Report::decode(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn exit_records_round_trip() {
        for r in [
            ExitRecord {
                exit_code: 137,
                exited_at: 1_795_447_535_123_456_789,
            },
            ExitRecord {
                exit_code: 0,
                exited_at: 0,
            },
        ] {
            assert_eq!(ExitRecord::decode(&r.encode()), Some(r));
        }
        assert_eq!(
            ExitRecord::encode(&ExitRecord {
                exit_code: 137,
                exited_at: 1_795_447_535_123_456_789
            }),
            "{\"exit_code\":137,\"exited_at\":1795447535123456789}\n"
        );
        assert_eq!(ExitRecord::decode("{\"exit_code\":1}"), None);
        assert_eq!(ExitRecord::decode("{\"exit_code\":1,\"exited_at\":"), None);
    }
}
