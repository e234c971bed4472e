//! The agent's own archive format: a tar stream (modes, symlinks, mtimes)
//! compressed with zstd level 1, made in-process so that a job's image
//! needs neither `tar` nor `zstd`.
//!
//! The first entry, `MANIFEST`, says which path was stored and whether it
//! was absolute; the other entries are that path's tree, named relative to
//! the current directory (or to `/` for an absolute path, without its
//! leading `/`). Reading is `mod.rs`'s, with the rules of `extract.rs`.

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The name of the manifest entry.
pub const MANIFEST: &str = ".agent-cache-manifest";
/// zstd level 1: the speed of `zstd -1`, the toolbox's trade-off.
const LEVEL: i32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The path as the job gave it (for the messages).
    pub path: String,
    /// Whether entry names are relative to `/` rather than the current
    /// directory.
    pub absolute: bool,
}

/// Where a path's tree goes in the archive: its name there and whether it
/// is relative to `/`. Relative paths that climb out (`../x`) are stored as
/// absolute ones.
fn archive_name(path: &Path, cwd: &Path) -> io::Result<(PathBuf, bool)> {
    let climbs = path.components().any(|c| c == Component::ParentDir);
    if path.is_absolute() || climbs {
        let full = lexical_normalize(&cwd.join(path));
        let rel = full.strip_prefix("/").unwrap_or(&full).to_path_buf();
        return Ok((rel, true));
    }
    let rel = lexical_normalize(path);
    if rel.as_os_str().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot store the current directory itself; name a path inside it",
        ));
    }
    Ok((rel, false))
}

/// `a/./b/../c` as `a/c`, without asking the file system.
fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Packs `path` (relative to `cwd`, or absolute) into `out`. Symlinks are
/// stored as symlinks. Returns `out`.
pub fn pack<W: Write>(path: &Path, cwd: &Path, out: W) -> io::Result<W> {
    let source = cwd.join(path);
    let meta = fs::symlink_metadata(&source)?;
    let (name, absolute) = archive_name(path, cwd)?;
    let mut encoder = zstd::stream::write::Encoder::new(out, LEVEL)?;
    encoder.include_checksum(true)?;
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    let manifest = serde_json::to_vec(&Manifest {
        path: path.to_string_lossy().into_owned(),
        absolute,
    })
    .map_err(io::Error::other)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, MANIFEST, &manifest[..])?;
    if meta.is_dir() {
        builder.append_dir_all(&name, &source)?;
    } else {
        builder.append_path_with_name(&source, &name)?;
    }
    builder.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_or_become_absolute() {
        let cwd = Path::new("/w/job");
        assert_eq!(
            archive_name(Path::new("./vendor/bundle"), cwd).unwrap(),
            (PathBuf::from("vendor/bundle"), false)
        );
        assert_eq!(
            archive_name(Path::new("../shared"), cwd).unwrap(),
            (PathBuf::from("w/shared"), true)
        );
        assert_eq!(
            archive_name(Path::new("/root/.m2"), cwd).unwrap(),
            (PathBuf::from("root/.m2"), true)
        );
        assert!(archive_name(Path::new("."), cwd).is_err());
    }
}
