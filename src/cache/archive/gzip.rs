//! The toolbox's archive format: a plain tar.gz, with member names exactly
//! as GNU tar records them for `tar czf ARCHIVE PATH` (a relative path) and
//! `tar czPf ARCHIVE /ABS` (an absolute one), so that a toolbox restores
//! what an agent stored: `vendor/bundle/`, `vendor/bundle/x`;
//! `/tmp/dir/`, `/tmp/dir/x`; `./a/` for `./a/`. As GNU tar does, a
//! relative path loses everything up to its last `..` (`../x` is stored as
//! `x`), trailing slashes are dropped from the path and directories get one.
//! An absolute path with `..` in it is stored with `..` resolved by name
//! (tar would keep it, and our own restore refuses `..`).
//!
//! Entries are a header from `lstat` (symlinks stored as symlinks), the
//! content of regular files, and GNU long-name entries for names over 100
//! bytes; no manifest, nothing a toolbox would restore as a stray file.
//! gzip at its default level, as `tar czf` runs it, through flate2's
//! pure-Rust backend.
//!
//! This module writes archives; reading them is `mod.rs`'s.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

/// GNU tar's name field.
const NAME_LEN: usize = 100;

/// The member name GNU tar records for `path` as given on its command line.
pub fn root_name(path: &Path) -> Vec<u8> {
    let bytes = path.as_os_str().as_bytes();
    if path.is_absolute() {
        let name = if path.components().any(|c| c == Component::ParentDir) {
            let mut clean = PathBuf::new();
            for c in path.components() {
                match c {
                    Component::ParentDir => {
                        clean.pop();
                    }
                    Component::CurDir => {}
                    other => clean.push(other),
                }
            }
            clean.into_os_string().into_vec()
        } else {
            bytes.to_vec()
        };
        return trim_trailing_slashes(&name);
    }
    // Everything up to and including the last `..` component goes.
    let mut cut = 0;
    let mut start = 0;
    for (i, &b) in bytes.iter().chain(std::iter::once(&b'/')).enumerate() {
        if b == b'/' {
            if &bytes[start..i] == b".." {
                cut = i;
            }
            start = i + 1;
        }
    }
    let mut rest = &bytes[cut..];
    if cut > 0 {
        while let Some(r) = rest.strip_prefix(b"/") {
            rest = r;
        }
    }
    let name = trim_trailing_slashes(rest);
    if name.is_empty() {
        b".".to_vec()
    } else {
        name
    }
}

fn trim_trailing_slashes(name: &[u8]) -> Vec<u8> {
    let mut end = name.len();
    while end > 1 && name[end - 1] == b'/' {
        end -= 1;
    }
    name[..end].to_vec()
}

/// Packs `path` (relative to `cwd`, or absolute) into `out` as `tar czf`
/// would. Returns `out`.
pub fn pack<W: Write>(path: &Path, cwd: &Path, out: W) -> io::Result<W> {
    let mut builder = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    append_tree(&mut builder, &cwd.join(path), root_name(path))?;
    builder.into_inner()?.finish()
}

fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    source: &Path,
    name: Vec<u8>,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(source)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    if meta.is_dir() {
        let mut dir_name = name.clone();
        if !dir_name.ends_with(b"/") {
            dir_name.push(b'/');
        }
        header.set_size(0);
        append(builder, header, &dir_name, None, io::empty())?;
        let mut children: Vec<_> = fs::read_dir(source)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        children.sort();
        for child in children {
            let mut child_name = dir_name.clone();
            child_name.extend_from_slice(child.as_bytes());
            append_tree(builder, &source.join(&child), child_name)?;
        }
        Ok(())
    } else if meta.file_type().is_symlink() {
        let target = fs::read_link(source)?;
        header.set_size(0);
        append(
            builder,
            header,
            &name,
            Some(target.as_os_str().as_bytes()),
            io::empty(),
        )
    } else if meta.is_file() {
        let file = fs::File::open(source)?;
        append(builder, header, &name, None, file.take(meta.len()))
    } else {
        // Devices, fifos, sockets: a header alone, as tar records them.
        header.set_size(0);
        append(builder, header, &name, None, io::empty())
    }
}

/// Appends one entry with its names written as they are (tar's own path
/// setter would drop `./` and refuse a leading `/`), preceded by GNU
/// long-name entries when they do not fit the header.
fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    mut header: tar::Header,
    name: &[u8],
    link: Option<&[u8]>,
    data: impl Read,
) -> io::Result<()> {
    if name.len() > NAME_LEN {
        long_name(builder, tar::EntryType::GNULongName, name)?;
    }
    if let Some(link) = link.filter(|l| l.len() > NAME_LEN) {
        long_name(builder, tar::EntryType::GNULongLink, link)?;
    }
    let gnu = header
        .as_gnu_mut()
        .ok_or_else(|| io::Error::other("not a GNU header"))?;
    fill(&mut gnu.name, name);
    fill(&mut gnu.linkname, link.unwrap_or_default());
    header.set_cksum();
    builder.append(&header, data)
}

/// A GNU `././@LongLink` entry carrying `value` for the next header.
fn long_name<W: Write>(
    builder: &mut tar::Builder<W>,
    kind: tar::EntryType,
    value: &[u8],
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    let gnu = header
        .as_gnu_mut()
        .ok_or_else(|| io::Error::other("not a GNU header"))?;
    fill(&mut gnu.name, b"././@LongLink");
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(kind);
    let mut data = value.to_vec();
    data.push(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, &data[..])
}

/// Copies `value` into a fixed field, cut at its length, zero-padded.
fn fill(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    field[n..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(p: &str) -> String {
        String::from_utf8(root_name(Path::new(p))).unwrap()
    }

    #[test]
    fn roots_are_named_as_gnu_tar_names_them() {
        assert_eq!(root("vendor/bundle"), "vendor/bundle");
        assert_eq!(root("./a/"), "./a");
        assert_eq!(root("a//b"), "a//b");
        assert_eq!(root("../other"), "other");
        assert_eq!(root("a/../a/b"), "a/b");
        assert_eq!(root(".."), ".");
        assert_eq!(root("."), ".");
        assert_eq!(root("/tmp/dir/"), "/tmp/dir");
        assert_eq!(root("/tmp/x/../dir"), "/tmp/dir");
        assert_eq!(root("/"), "/");
    }

    #[test]
    fn members_are_what_tar_czf_records() {
        let dir = tempfile::tempdir().unwrap();
        let long = "n".repeat(120);
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        fs::write(dir.path().join("a").join(&long), b"y").unwrap();
        std::os::unix::fs::symlink("b", dir.path().join("a/l")).unwrap();
        let bytes = pack(Path::new("a"), dir.path(), Vec::new()).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        assert_eq!(names, ["a/", "a/b/", "a/b/f", "a/l", &format!("a/{long}")]);
    }
}
