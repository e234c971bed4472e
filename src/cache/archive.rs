//! Archives of the cache: a tar stream (modes, symlinks, mtimes) compressed
//! with zstd level 1, made and read in-process so that a job's image needs
//! neither `tar` nor `zstd`.
//!
//! The first entry, `MANIFEST`, says which path was stored and whether it
//! was absolute; the other entries are that path's tree, named relative to
//! the current directory (or to `/` for an absolute path). `unpack` puts
//! them back where they came from and refuses names that would escape.
//!
//! This module knows files, not keys or backends.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The name of the manifest entry.
const MANIFEST: &str = ".agent-cache-manifest";
/// zstd level 1: the speed of `zstd -1`, the toolbox's trade-off.
const LEVEL: i32 = 1;

/// How an archive is compressed. Restore tells them by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveFormat {
    /// The agent's own: tar and zstd level 1, with a manifest entry first.
    #[default]
    Zstd,
    /// The toolbox's: a plain tar.gz as `tar czf` makes it.
    Gzip,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// The path as the job gave it (for the messages).
    path: String,
    /// Whether entry names are relative to `/` rather than the current
    /// directory.
    absolute: bool,
}

/// What `pack` or `unpack` handled.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
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

/// Counts what goes through a writer.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs `path` (relative to `cwd`, or absolute) into `out` in `format`.
/// Returns `out`.
pub fn pack<W: Write>(format: ArchiveFormat, path: &Path, cwd: &Path, out: W) -> io::Result<W> {
    match format {
        ArchiveFormat::Zstd => pack_zstd(path, cwd, out).map(|(_, out)| out),
        ArchiveFormat::Gzip => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "gzip archives are not written yet",
        )),
    }
}

/// Packs `path` (relative to `cwd`, or absolute) into `out`. Symlinks are
/// stored as symlinks. Returns the counts and `out`.
pub fn pack_zstd<W: Write>(path: &Path, cwd: &Path, out: W) -> io::Result<(Counts, W)> {
    let source = cwd.join(path);
    let meta = fs::symlink_metadata(&source)?;
    let (name, absolute) = archive_name(path, cwd)?;
    let mut encoder = zstd::stream::write::Encoder::new(out, LEVEL)?;
    encoder.include_checksum(true)?;
    let mut builder = tar::Builder::new(Counting {
        inner: encoder,
        bytes: 0,
    });
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
    let counting = builder.into_inner()?;
    let bytes = counting.bytes;
    let out = counting.inner.finish()?;
    let counts = Counts { entries: 0, bytes };
    Ok((counts, out))
}

/// What was restored.
#[derive(Debug)]
pub struct Restored {
    /// The first member's name as tar would have recorded it (a directory
    /// with a trailing `/`), which the toolbox prints after `Restored:`.
    pub path: String,
}

/// Reads the whole archive without writing anything: the zstd checksum and
/// every tar header must be sound.
pub fn verify(input: impl Read) -> io::Result<Counts> {
    let decoder = zstd::stream::read::Decoder::new(input)?;
    let mut archive = tar::Archive::new(decoder);
    let mut counts = Counts::default();
    let mut first = true;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if first && entry.path()?.as_os_str() != MANIFEST {
            return Err(bad_data("the archive has no manifest"));
        }
        first = false;
        counts.entries += 1;
        counts.bytes += io::copy(&mut entry, &mut io::sink())?;
    }
    if first {
        return Err(bad_data("the archive is empty"));
    }
    // The checksum is at the end of the zstd frame, after tar's end blocks.
    io::copy(&mut archive.into_inner(), &mut io::sink())?;
    Ok(counts)
}

/// Unpacks an archive made by `pack`: relative names under `cwd`, absolute
/// ones under `/`. Modes, symlinks and mtimes come back; directories get
/// their mtimes last, after their contents are written.
pub fn unpack(input: impl Read, cwd: &Path) -> io::Result<Restored> {
    let decoder = zstd::stream::read::Decoder::new(input)?;
    let mut archive = tar::Archive::new(decoder);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut manifest: Option<Manifest> = None;
    let mut counts = Counts::default();
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    let mut made_parent: Option<PathBuf> = None;
    let mut root_is_dir = false;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let Some(m) = &manifest else {
            if name.as_os_str() != MANIFEST {
                return Err(bad_data("the archive has no manifest"));
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            manifest = Some(serde_json::from_slice(&bytes).map_err(|_| bad_data("bad manifest"))?);
            continue;
        };
        if !name
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad_data(&format!(
                "the archive holds a name outside its tree: {}",
                name.display()
            )));
        }
        let base = if m.absolute { Path::new("/") } else { cwd };
        let dest = base.join(&name);
        // Entries of one directory come together: make it once.
        if let Some(parent) = dest.parent() {
            if made_parent.as_deref() != Some(parent) {
                fs::create_dir_all(parent)?;
                made_parent = Some(parent.to_path_buf());
            }
        }
        let kind = entry.header().entry_type();
        if counts.entries == 0 && kind.is_dir() {
            root_is_dir = true;
        }
        if kind.is_dir() {
            dirs.push((dest.clone(), entry.header().mtime().unwrap_or(0)));
        }
        counts.entries += 1;
        counts.bytes += entry.header().size().unwrap_or(0);
        entry.unpack(&dest)?;
    }
    io::copy(&mut archive.into_inner(), &mut io::sink())?;
    for (dir, mtime) in dirs.iter().rev() {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime);
        if let Ok(f) = fs::File::open(dir) {
            let _ = f.set_modified(when);
        }
    }
    let manifest = manifest.ok_or_else(|| bad_data("the archive is empty"))?;
    let trimmed = manifest.path.trim_end_matches('/');
    let mut path = if trimmed.is_empty() {
        manifest.path.clone()
    } else {
        trimmed.to_string()
    };
    if root_is_dir && !path.ends_with('/') {
        path.push('/');
    }
    let _ = counts;
    Ok(Restored { path })
}

fn bad_data(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

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

    #[test]
    fn a_tree_round_trips_with_modes_links_and_mtimes() {
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("deps");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(tree.join("sub/run.sh"), fs::Permissions::from_mode(0o751)).unwrap();
        symlink("sub/run.sh", tree.join("link")).unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        fs::File::open(tree.join("sub/run.sh"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        fs::File::open(tree.join("sub"))
            .unwrap()
            .set_modified(old)
            .unwrap();

        let (_, bytes) = pack_zstd(Path::new("deps"), src.path(), Vec::new()).unwrap();
        verify(&bytes[..]).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let restored = unpack(&bytes[..], dst.path()).unwrap();
        assert_eq!(restored.path, "deps/");
        let back = dst.path().join("deps");
        assert_eq!(fs::read(back.join("sub/run.sh")).unwrap(), b"#!/bin/sh\n");
        let meta = fs::metadata(back.join("sub/run.sh")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o751);
        assert_eq!(meta.modified().unwrap(), old);
        assert_eq!(
            fs::metadata(back.join("sub")).unwrap().modified().unwrap(),
            old
        );
        assert_eq!(
            fs::read_link(back.join("link")).unwrap(),
            Path::new("sub/run.sh")
        );
    }

    #[test]
    fn a_damaged_archive_fails_verification() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), vec![7u8; 100_000]).unwrap();
        let (_, mut bytes) = pack_zstd(Path::new("f"), src.path(), Vec::new()).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        assert!(verify(&bytes[..]).is_err());
        bytes.truncate(mid);
        assert!(verify(&bytes[..]).is_err());
    }
}
