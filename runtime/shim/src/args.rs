//! Command-line parsing for `crust-shim` (no external parser, to stay small).

use std::ffi::OsString;
use std::path::PathBuf;

/// The shim's command line, as crustd passes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// Container id, handed to `runc create`.
    pub id: String,
    /// Bundle directory holding `config.json` and `rootfs/`.
    pub bundle: PathBuf,
    /// Path of the runc binary.
    pub runc: PathBuf,
    /// runc state directory (`runc --root`).
    pub runc_root: PathBuf,
    /// Global runc arguments given before `create` (`--runc-opt`, repeated).
    pub runc_opts: Vec<OsString>,
    /// CRI log file; `None` means output is read and discarded.
    pub log_path: Option<PathBuf>,
    /// Whether the container gets a pseudo-terminal.
    pub tty: bool,
    /// Whether the container's stdin stays open for attach clients.
    pub stdin: bool,
    /// Whether that stdin closes when the first attached client detaches.
    pub stdin_once: bool,
}

/// Usage text included in argument errors.
pub const USAGE: &str = "usage: crust-shim --id <id> --bundle <dir> --runc <path> \
--runc-root <dir> [--runc-opt <arg>]... [--log-path <file>] [--tty] [--stdin] [--stdin-once]";

/// Parses the arguments (without the program name).
///
/// Accepts both `--flag value` and `--flag=value`. An empty `--log-path` is
/// the same as none.
pub fn parse<I>(args: I) -> Result<Args, String>
where
    I: IntoIterator<Item = OsString>,
{
    let mut id = None;
    let mut bundle = None;
    let mut runc = None;
    let mut runc_root = None;
    let mut log_path = None;
    let mut runc_opts = Vec::new();
    let mut tty = false;
    let mut stdin = false;
    let mut stdin_once = false;

    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("argument is not valid UTF-8: {a:?}; {USAGE}"))?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(OsString::from(v))),
            _ => (arg.clone(), None),
        };
        let switch = match name.as_str() {
            "--tty" => Some(&mut tty),
            "--stdin" => Some(&mut stdin),
            "--stdin-once" => Some(&mut stdin_once),
            _ => None,
        };
        if let Some(switch) = switch {
            if inline.is_some() {
                return Err(format!("{name} takes no value; {USAGE}"));
            }
            *switch = true;
            continue;
        }
        if name == "--runc-opt" {
            let value = match inline {
                Some(v) => v,
                None => iter
                    .next()
                    .ok_or_else(|| format!("{name} needs a value; {USAGE}"))?,
            };
            runc_opts.push(value);
            continue;
        }
        let slot = match name.as_str() {
            "--id" => &mut id,
            "--bundle" => &mut bundle,
            "--runc" => &mut runc,
            "--runc-root" => &mut runc_root,
            "--log-path" => &mut log_path,
            _ => return Err(format!("unknown argument {arg:?}; {USAGE}")),
        };
        let value = match inline {
            Some(v) => v,
            None => iter
                .next()
                .ok_or_else(|| format!("{name} needs a value; {USAGE}"))?,
        };
        *slot = Some(value);
    }

    let required = |v: Option<OsString>, name: &str| -> Result<OsString, String> {
        match v {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("missing {name}; {USAGE}")),
        }
    };
    let id = required(id, "--id")?
        .into_string()
        .map_err(|_| "--id is not valid UTF-8".to_string())?;
    Ok(Args {
        id,
        bundle: required(bundle, "--bundle")?.into(),
        runc: required(runc, "--runc")?.into(),
        runc_root: required(runc_root, "--runc-root")?.into(),
        runc_opts,
        log_path: log_path.filter(|p| !p.is_empty()).map(PathBuf::from),
        tty,
        stdin,
        stdin_once,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_full_command_line() {
        let a = parse(os(&[
            "--id",
            "abc",
            "--bundle",
            "/b",
            "--runc=/usr/sbin/runc",
            "--runc-root",
            "/r",
            "--runc-opt=--debug",
            "--runc-opt",
            "--log-level=warn",
            "--log-path",
            "/l/0.log",
            "--tty",
            "--stdin",
            "--stdin-once",
        ]))
        .expect("valid");
        assert_eq!(
            a,
            Args {
                id: "abc".into(),
                bundle: "/b".into(),
                runc: "/usr/sbin/runc".into(),
                runc_root: "/r".into(),
                runc_opts: vec!["--debug".into(), "--log-level=warn".into()],
                log_path: Some("/l/0.log".into()),
                tty: true,
                stdin: true,
                stdin_once: true,
            }
        );
    }

    #[test]
    fn empty_log_path_is_none() {
        let a = parse(os(&[
            "--id",
            "x",
            "--bundle",
            "/b",
            "--runc",
            "runc",
            "--runc-root",
            "/r",
            "--log-path",
            "",
        ]))
        .expect("valid");
        assert_eq!(a.log_path, None);
        assert!(!a.tty);
    }

    #[test]
    fn rejects_missing_and_unknown() {
        assert!(parse(os(&["--id", "x"])).is_err());
        assert!(parse(os(&["--bogus"])).is_err());
        assert!(parse(os(&["--id"])).is_err());
        assert!(parse(os(&["--tty=1"])).is_err());
    }
}
