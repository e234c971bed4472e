//! Injected files on this host (§5.2 step 5): where a path points, and
//! writing one file with its mode, checked before anything touches the disk.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::job::request::{decode_b64, parse_mode};

/// Shell-executor path rules (§5.2 step 5): absolute as is; a leading `~`
/// (alone or before `/`) is the home; anything else is relative to the home.
pub fn resolve_path(path: &str, home: &Path) -> PathBuf {
    if path.starts_with('/') {
        return PathBuf::from(path);
    }
    if path == "~" {
        return home.to_path_buf();
    }
    if let Some(rest) = path.strip_prefix("~/") {
        return home.join(rest);
    }
    home.join(path)
}

/// Checks one file's mode and content; the error is the step's output line.
pub(crate) fn check_file(content_b64: &str, mode: &str) -> Result<(), String> {
    parse_mode(mode).ok_or_else(|| format!("bad file permission '{mode}'\n"))?;
    decode_b64(content_b64)
        .map_err(|_| "Failed to decode the content of the file.\n".to_string())?;
    Ok(())
}

/// The first of `files` (content, mode) whose mode or content is bad, with
/// the reason: every file is checked before the first is written (§5.2
/// step 5).
pub(crate) fn first_bad<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<(usize, String)> {
    files
        .into_iter()
        .enumerate()
        .find_map(|(i, (content, mode))| check_file(content, mode).err().map(|e| (i, e)))
}

/// Writes one injected file. The mode and the content are checked before
/// anything touches the disk, so a bad request leaves nothing behind.
pub(crate) fn inject_file(path: &Path, content_b64: &str, mode: &str) -> Result<(), String> {
    check_file(content_b64, mode)?;
    let mode_bits = parse_mode(mode).unwrap_or(0o600);
    let content = decode_b64(content_b64).unwrap_or_default();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| format!("Failed to create directory {}: {e}\n", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("Failed to create file {}: {e}\n", path.display()))?;
    file.write_all(&content)
        .map_err(|e| format!("Failed to write file {}: {e}\n", path.display()))?;
    file.set_permissions(fs::Permissions::from_mode(mode_bits))
        .map_err(|e| {
            format!(
                "Failed to set file mode of {} to {mode}: {e}\n",
                path.display()
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        let home = Path::new("/home/u");
        assert_eq!(resolve_path("/etc/x", home), Path::new("/etc/x"));
        assert_eq!(resolve_path("~/a/b", home), Path::new("/home/u/a/b"));
        assert_eq!(resolve_path("~", home), Path::new("/home/u"));
        assert_eq!(resolve_path("a/b", home), Path::new("/home/u/a/b"));
        // Only a leading `~` means home.
        assert_eq!(resolve_path("a/~/b", home), Path::new("/home/u/a/~/b"));
    }

    #[test]
    fn bad_mode_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("agent-inject-{}", std::process::id()));
        let path = dir.join("sub/file");
        let err = inject_file(&path, "aGk=", "9z").unwrap_err();
        assert_eq!(err, "bad file permission '9z'\n");
        assert!(!dir.exists());
        inject_file(&path, "aGk=", "0640").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hi");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
