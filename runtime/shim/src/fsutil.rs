//! Small filesystem helpers.

use std::fs;
use std::io;
use std::path::Path;

/// Removes a file, treating "does not exist" as success.
pub fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_twice_is_fine() {
        let dir = std::env::temp_dir().join(format!("crust-shim-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("tmp dir");
        let p = dir.join("exit");
        fs::write(&p, b"x").expect("write");
        remove_if_exists(&p).expect("remove");
        remove_if_exists(&p).expect("remove again");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
