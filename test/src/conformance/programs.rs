//! Host programs copied into test images: each program with the shared
//! libraries `ldd` says it loads, at the same paths, so a dynamically linked
//! binary from this machine runs inside a container built from nothing else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::image_builder::LayerBuilder;

/// The shared libraries (and the ELF interpreter) that `programs` load, as
/// absolute host paths.
pub fn shared_libraries(programs: &[&Path]) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    for program in programs {
        let listing = Command::new("ldd")
            .arg(program)
            .output()
            .with_context(|| format!("running ldd {}", program.display()))?;
        let text = String::from_utf8_lossy(&listing.stdout);
        if text.contains("not a dynamic executable") {
            continue;
        }
        if !listing.status.success() {
            bail!(
                "ldd {} failed: {}",
                program.display(),
                String::from_utf8_lossy(&listing.stderr).trim()
            );
        }
        for line in text.lines() {
            if let Some(path) = library_path(line)? {
                out.insert(path);
            }
        }
    }
    Ok(out)
}

/// The library path one line of `ldd` output names: `libc.so.6 => /lib/...
/// (0x...)` or the interpreter's `/lib64/ld-linux-x86-64.so.2 (0x...)`; none
/// for the vDSO.
fn library_path(line: &str) -> Result<Option<PathBuf>> {
    let line = line.trim();
    let target = match line.split_once("=>") {
        Some((name, rest)) => {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                bail!("a library the program needs is missing on this host: {name}");
            }
            rest
        }
        None => line,
    };
    let path = target.split(" (").next().unwrap_or_default().trim();
    Ok(path.starts_with('/').then(|| PathBuf::from(path)))
}

/// Adds the directories of `path` (relative, e.g. `lib/x86_64-linux-gnu/libc.so.6`)
/// that `made` does not hold yet, outermost first.
pub fn add_parents(
    layer: &mut LayerBuilder,
    made: &mut BTreeSet<String>,
    path: &str,
) -> Result<()> {
    let mut prefix = String::new();
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        if made.insert(prefix.clone()) {
            layer.dir(&prefix, 0o755)?;
        }
    }
    Ok(())
}

/// Adds each library in `libraries` as a regular file at its host path (the
/// content of what the path resolves to on the host).
pub fn add_libraries(
    layer: &mut LayerBuilder,
    made: &mut BTreeSet<String>,
    libraries: &BTreeSet<PathBuf>,
) -> Result<()> {
    for library in libraries {
        let relative = library
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        let bytes =
            std::fs::read(library).with_context(|| format!("reading {}", library.display()))?;
        add_parents(layer, made, &relative)?;
        layer.file(&relative, 0o755, &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_lines() {
        let lib =
            library_path("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)").unwrap();
        assert_eq!(lib, Some(PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")));
        let interp = library_path("\t/lib64/ld-linux-x86-64.so.2 (0x00007f)").unwrap();
        assert_eq!(interp, Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2")));
        assert_eq!(
            library_path("\tlinux-vdso.so.1 (0x00007ffd)").unwrap(),
            None
        );
        assert!(library_path("\tlibfoo.so.1 => not found").is_err());
    }
}
