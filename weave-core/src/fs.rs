//! The one file operation state needs: replace a file whole.

use std::io::{self, Write};
use std::path::Path;

/// Replace `path` with `bytes` whole and durably: written to a temporary
/// file beside it, synced, renamed over it, and the directory synced, so a
/// crash leaves the old file or the new one, never a part or neither.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("weave-core-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("state.json");
        super::write_atomically(&f, b"one").unwrap();
        super::write_atomically(&f, b"two, longer").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two, longer");
        assert!(!f.with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
