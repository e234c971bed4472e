//! Archives of the cache, made and read in-process so that a job's image
//! needs neither `tar` nor a compressor. Two formats: the agent's own
//! (`zstd.rs`: tar and zstd, a manifest first), the default, and the
//! toolbox's (`gzip.rs`: a plain tar.gz as `tar czf` makes it), for caches
//! shared with toolboxes. Restore tells them by their first bytes and reads
//! both with the same rules (`extract.rs`): the whole archive is checked
//! first (every header, the checksum, every name), and only then written.
//! What an archive may expand to is bounded (`expansion_bound`): past it,
//! decompression stops and the archive is refused, so a bomb (gigabytes of
//! zeros in a few kilobytes) costs neither the disk nor much CPU.
//!
//! This module knows files, not keys or backends.

pub mod extract;
pub mod gzip;
pub mod zstd;

use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use extract::{bad_data, refusal, Extractor, Kind, Names, Plan};

/// What an archive may expand to, in times its size. Deflate, the
/// toolbox's tar.gz, cannot pass about 1,032 times, so no archive a
/// toolbox makes reaches this; zstd archives of real trees expand 2 to 10
/// times, and only files of long runs of one byte (zeros) get near it. Past
/// both is what a bomb is: 30 GB of zeros make a zstd archive of 1 MB.
pub const EXPANSION_RATIO: u64 = 1100;
/// What any archive may expand to, however small: a few megabytes of
/// zero-filled test fixtures still restore.
pub const EXPANSION_FLOOR: u64 = 1 << 30;

/// The most the contents (the tar stream) of an archive of `size` bytes
/// may take.
pub fn expansion_bound(size: u64) -> u64 {
    size.saturating_mul(EXPANSION_RATIO).max(EXPANSION_FLOOR)
}

/// An archive's size and what it may expand to.
#[derive(Debug, Clone, Copy)]
struct Expansion {
    archive_size: u64,
    bound: u64,
}

impl Expansion {
    fn of(archive_size: u64) -> Expansion {
        Expansion {
            archive_size,
            bound: expansion_bound(archive_size),
        }
    }
}

/// A decompressed stream that ends in a refusal past its bound.
struct Bounded<R> {
    inner: R,
    left: u64,
    expansion: Expansion,
}

impl<R> Bounded<R> {
    fn new(inner: R, expansion: Expansion) -> Bounded<R> {
        Bounded {
            inner,
            left: expansion.bound,
            expansion,
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(refusal(format!(
                "it expands past {}, the most an archive of {} bytes may hold",
                super::format::size_u(self.expansion.bound),
                self.expansion.archive_size
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
/// How an archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveFormat {
    /// The agent's own: tar and zstd level 1, with a manifest entry first.
    #[default]
    Zstd,
    /// The toolbox's: a plain tar.gz as `tar czf` makes it.
    Gzip,
}

impl ArchiveFormat {
    pub fn parse(text: &str) -> Option<ArchiveFormat> {
        match text {
            "zstd" => Some(ArchiveFormat::Zstd),
            "gzip" => Some(ArchiveFormat::Gzip),
            _ => None,
        }
    }
}

/// The format of an archive from its first bytes: gzip's magic `1f 8b`,
/// zstd's `28 b5 2f fd`.
pub fn sniff(head: &[u8]) -> Option<ArchiveFormat> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(ArchiveFormat::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(ArchiveFormat::Zstd)
    } else {
        None
    }
}

/// Packs `path` (relative to `cwd`, or absolute) into `out` in `format`.
/// Returns `out`.
pub fn pack<W: Write>(format: ArchiveFormat, path: &Path, cwd: &Path, out: W) -> io::Result<W> {
    match format {
        ArchiveFormat::Zstd => zstd::pack(path, cwd, out),
        ArchiveFormat::Gzip => gzip::pack(path, cwd, out),
    }
}

/// What was restored.
#[derive(Debug)]
pub struct Restored {
    /// The first member's name as tar recorded it (a directory with a
    /// trailing `/`), which the toolbox prints after `Restored:`; empty
    /// for an archive without members.
    pub path: String,
}

/// Reads the whole archive of `size` bytes without writing anything: the
/// compressed stream's checksum, every tar header, every name against the
/// rules of `extract.rs` (as if unpacked into `cwd`), and its expansion
/// against `expansion_bound(size)`.
pub fn verify(input: impl BufRead, size: u64, cwd: &Path) -> io::Result<()> {
    walk(input, Expansion::of(size), cwd, None).map(|_| ())
}

/// Unpacks an archive of `size` bytes: the agent's own to where its
/// manifest says, the toolbox's relative names under `cwd` and absolute
/// names where they point. Modes, symlinks and mtimes come back.
pub fn unpack(input: impl BufRead, size: u64, cwd: &Path) -> io::Result<Restored> {
    let mut extractor = Extractor::default();
    let restored = walk(input, Expansion::of(size), cwd, Some(&mut extractor))?;
    extractor.finish()?;
    Ok(restored)
}

fn walk(
    mut input: impl BufRead,
    expansion: Expansion,
    cwd: &Path,
    extractor: Option<&mut Extractor>,
) -> io::Result<Restored> {
    match sniff(input.fill_buf()?) {
        Some(ArchiveFormat::Zstd) => {
            let decoder = ::zstd::stream::read::Decoder::with_buffer(input)?;
            let tar = tar::Archive::new(Bounded::new(decoder, expansion));
            entries(tar, None, cwd, extractor)
        }
        Some(ArchiveFormat::Gzip) => {
            let names = Names {
                base: cwd.to_path_buf(),
                allow_absolute: true,
            };
            let decoder = flate2::bufread::MultiGzDecoder::new(input);
            let tar = tar::Archive::new(Bounded::new(decoder, expansion));
            entries(tar, Some(names), cwd, extractor)
        }
        None => Err(bad_data("neither a gzip nor a zstd archive")),
    }
}

/// Goes through every entry; `names` is None for the agent's format, whose
/// manifest says where names go.
fn entries<R: Read>(
    mut archive: tar::Archive<R>,
    mut names: Option<Names>,
    cwd: &Path,
    mut extractor: Option<&mut Extractor>,
) -> io::Result<Restored> {
    let agent_format = names.is_none();
    let mut plan = Plan::default();
    let mut stored_path: Option<String> = None;
    let mut first: Option<(String, bool)> = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path_bytes().into_owned();
        let Some(n) = &names else {
            if name != zstd::MANIFEST.as_bytes() {
                return Err(bad_data("the archive has no manifest"));
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            let manifest: zstd::Manifest =
                serde_json::from_slice(&bytes).map_err(|_| bad_data("bad manifest"))?;
            names = Some(Names {
                base: if manifest.absolute {
                    "/".into()
                } else {
                    cwd.to_path_buf()
                },
                allow_absolute: false,
            });
            stored_path = Some(manifest.path);
            continue;
        };
        let kind = Kind::of(entry.header().entry_type());
        let dest = n.dest(&name)?;
        let src = match kind {
            Kind::HardLink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad_data("a hard link without a target"))?;
                Some(n.dest(&target)?)
            }
            _ => None,
        };
        if first.is_none() {
            first = Some((
                String::from_utf8_lossy(&name).into_owned(),
                kind == Kind::Dir,
            ));
        }
        match extractor.as_deref_mut() {
            Some(x) => x.put(&mut entry, &dest, src.as_deref())?,
            None => {
                plan.check(kind, &dest, src.as_deref())?;
                io::copy(&mut entry, &mut io::sink())?;
            }
        }
    }
    // The checksum is at the end of the stream, after tar's end blocks.
    io::copy(&mut archive.into_inner(), &mut io::sink())?;
    if !agent_format {
        return Ok(Restored {
            path: first.map(|(name, _)| name).unwrap_or_default(),
        });
    }
    let stored = stored_path.ok_or_else(|| bad_data("the archive is empty"))?;
    // The name tar would have recorded for the stored path.
    let mut path = match stored.trim_end_matches('/') {
        "" => stored.clone(),
        trimmed => trimmed.to_string(),
    };
    if first.is_some_and(|(_, dir)| dir) && !path.ends_with('/') {
        path.push('/');
    }
    Ok(Restored { path })
}

#[cfg(test)]
mod tests;
