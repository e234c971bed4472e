//! Putting an archive's entries on disk, with the same rules for both
//! formats. An archive comes from a cache other jobs (and, on a shared SFTP
//! server, other tools) write to, so:
//!
//! - a name with a `..` component is refused: nothing climbs out of where
//!   the archive says it goes;
//! - nothing is written through a symlink the same archive made (the old
//!   trick of `link -> /etc` followed by `link/passwd`), nor is a hard link
//!   made to a name reached through one; symlinks that were on disk before
//!   are followed, as tar follows them, since they are the job's own;
//! - absolute names are allowed where the format has them (the toolbox
//!   stores absolute paths as such), because `cache` runs as the job's own
//!   user, inside the job.
//!
//! `Plan` applies the rules to names alone, so that a whole archive is
//! checked before anything is written; `Extractor` applies them again while
//! writing. Directories get their modes and mtimes last, after their
//! contents, so that a read-only directory can be filled first.

use std::collections::HashSet;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What an entry is, for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    HardLink,
    /// Devices, fifos and the like: skipped, as the toolbox skips them.
    Other,
}

impl Kind {
    pub fn of(t: tar::EntryType) -> Kind {
        if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_hard_link() {
            Kind::HardLink
        } else if t.is_file() || t == tar::EntryType::Continuous || t.is_gnu_sparse() {
            Kind::File
        } else {
            Kind::Other
        }
    }
}

/// Where names go: absolute ones from `/` (when the format allows them),
/// relative ones from `base`.
pub struct Names {
    pub base: PathBuf,
    pub allow_absolute: bool,
}

impl Names {
    /// The path an entry name stands for, without asking the file system;
    /// `..` and (when not allowed) absolute names are refused.
    pub fn dest(&self, name: &[u8]) -> io::Result<PathBuf> {
        let path = Path::new(std::ffi::OsStr::from_bytes(name));
        let mut out = if path.is_absolute() {
            if !self.allow_absolute {
                return Err(refused("an absolute name", path));
            }
            PathBuf::from("/")
        } else {
            self.base.clone()
        };
        for c in path.components() {
            match c {
                Component::Normal(part) => out.push(part),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(refused("a name with '..'", path))
                }
            }
        }
        Ok(out)
    }
}

/// An archive broke one of the rules: not damaged, refused.
#[derive(Debug)]
pub struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl Refusal {
    /// Whether `e` is a refusal rather than damage or a failed write.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Refusal>())
    }
}

fn refused(what: &str, name: &Path) -> io::Error {
    refusal(format!("it holds {what}: {}", name.display()))
}

/// An archive refused for the reason `why` ("it ...").
pub fn refusal(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Refusal(why))
}

/// What an archive has made so far: its symlinks, its other entries that
/// are not directories, and the directories its entries are in, by path.
/// An entry that would turn one of these into another kind is refused, so
/// that the tree restored never depends on the order the archive lists its
/// entries in (a file `x` then `x/f`, or `x/f` then a symlink `x`, are
/// refused both ways round, before anything is written).
#[derive(Default)]
pub struct Plan {
    planted: HashSet<PathBuf>,
    not_dirs: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
}

impl Plan {
    /// Checks one entry at `dest` (with a hard link's target at `src`) and
    /// notes what it makes.
    pub fn check(&mut self, kind: Kind, dest: &Path, src: Option<&Path>) -> io::Result<()> {
        self.check_links(kind, dest, src)?;
        let parents = || dest.ancestors().skip(1);
        if let Some(file) = parents().find(|a| self.not_dirs.contains(*a)) {
            return Err(refused("a name under a file it made itself", file));
        }
        if kind == Kind::Dir {
            if self.not_dirs.contains(dest) {
                return Err(refused("a directory where it made a file", dest));
            }
        } else if self.dirs.contains(dest) {
            return Err(refused("a file or link where it made a directory", dest));
        }
        // Directories: the entry's own, then its parents until one is known.
        let first = if kind == Kind::Dir {
            Some(dest)
        } else {
            dest.parent()
        };
        for dir in first.into_iter().flat_map(Path::ancestors) {
            if !self.dirs.insert(dir.to_path_buf()) {
                break;
            }
        }
        if !matches!(kind, Kind::Dir | Kind::Symlink) {
            self.not_dirs.insert(dest.to_path_buf());
        }
        Ok(())
    }

    /// The symlink rules: nothing under (or hard-linked through) a symlink
    /// the archive made.
    fn check_links(&mut self, kind: Kind, dest: &Path, src: Option<&Path>) -> io::Result<()> {
        if !self.planted.is_empty() {
            let through = |p: &Path| p.ancestors().skip(1).any(|a| self.planted.contains(a));
            if through(dest) || src.is_some_and(through) {
                return Err(refused(
                    "a name under a symlink it made itself",
                    src.filter(|s| through(s)).unwrap_or(dest),
                ));
            }
            if kind == Kind::Dir && self.planted.contains(dest) {
                return Err(refused("a directory where it made a symlink", dest));
            }
        }
        let links_to_planted = src.is_some_and(|s| self.planted.contains(s));
        if kind == Kind::Symlink || (kind == Kind::HardLink && links_to_planted) {
            self.planted.insert(dest.to_path_buf());
        } else if matches!(kind, Kind::File | Kind::HardLink) {
            // Replaced by a file: whatever symlink was there is gone.
            self.planted.remove(dest);
        }
        Ok(())
    }
}

/// Writes entries, checking each against the plan first.
#[derive(Default)]
pub struct Extractor {
    plan: Plan,
    /// Directories, with their modes and mtimes, to set at the end.
    dirs: Vec<(PathBuf, u32, u64)>,
    /// The last parent made: entries of one directory come together.
    made_parent: Option<PathBuf>,
}

impl Extractor {
    /// Puts `entry` at `dest`; `src` is a hard link's target.
    pub fn put<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        dest: &Path,
        src: Option<&Path>,
    ) -> io::Result<()> {
        let kind = Kind::of(entry.header().entry_type());
        self.plan.check(kind, dest, src)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let mtime = entry.header().mtime().unwrap_or(0);
        match kind {
            Kind::Other => return Ok(()),
            Kind::Dir => {
                fs::create_dir_all(dest)?;
                self.dirs.push((dest.to_path_buf(), mode, mtime));
                return Ok(());
            }
            _ => {}
        }
        self.make_parent(dest)?;
        match kind {
            Kind::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| bad_data("a symlink without a target"))?;
                remove_non_dir(dest)?;
                std::os::unix::fs::symlink(&target, dest)
            }
            Kind::HardLink => {
                let src = src.ok_or_else(|| bad_data("a hard link without a target"))?;
                remove_non_dir(dest)?;
                fs::hard_link(src, dest)
            }
            _ => {
                let mut file = create_file(dest)?;
                io::copy(entry, &mut file)?;
                file.set_permissions(fs::Permissions::from_mode(mode))?;
                let when = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
                file.set_times(FileTimes::new().set_modified(when).set_accessed(when))
            }
        }
    }

    fn make_parent(&mut self, dest: &Path) -> io::Result<()> {
        if let Some(parent) = dest.parent() {
            if self.made_parent.as_deref() != Some(parent) {
                fs::create_dir_all(parent)?;
                self.made_parent = Some(parent.to_path_buf());
            }
        }
        Ok(())
    }

    /// Gives directories their modes and mtimes, innermost first.
    pub fn finish(self) -> io::Result<()> {
        for (dir, mode, mtime) in self.dirs.iter().rev() {
            fs::set_permissions(dir, fs::Permissions::from_mode(*mode))?;
            let when = SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime);
            if let Ok(f) = File::open(dir) {
                let _ = f.set_modified(when);
            }
        }
        Ok(())
    }
}

/// A new file at `dest`: what was there (a file, a symlink) is removed
/// first rather than written through.
fn create_file(dest: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            remove_non_dir(dest)?;
            open()
        }
        other => other,
    }
}

/// Removes a file or symlink at `path`; a directory stays (and makes the
/// next step fail, as tar fails).
fn remove_non_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => fs::remove_file(path),
        _ => Ok(()),
    }
}

pub fn bad_data(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_climb() {
        let names = Names {
            base: "/w".into(),
            allow_absolute: true,
        };
        assert_eq!(names.dest(b"./a/b/").unwrap(), Path::new("/w/a/b"));
        assert_eq!(names.dest(b"/tmp/x").unwrap(), Path::new("/tmp/x"));
        assert!(names.dest(b"../x").is_err());
        assert!(names.dest(b"a/../../x").is_err());
        let relative_only = Names {
            base: "/w".into(),
            allow_absolute: false,
        };
        assert!(relative_only.dest(b"/etc/passwd").is_err());
    }

    #[test]
    fn nothing_goes_through_a_symlink_the_archive_made() {
        let mut plan = Plan::default();
        plan.check(Kind::Symlink, Path::new("/w/l"), None).unwrap();
        assert!(plan
            .check(Kind::File, Path::new("/w/l/passwd"), None)
            .is_err());
        assert!(plan.check(Kind::Dir, Path::new("/w/l"), None).is_err());
        assert!(plan
            .check(Kind::HardLink, Path::new("/w/h"), Some(Path::new("/w/l/x")))
            .is_err());
        // A hard link to the symlink is that symlink again.
        plan.check(Kind::HardLink, Path::new("/w/h"), Some(Path::new("/w/l")))
            .unwrap();
        assert!(plan.check(Kind::File, Path::new("/w/h/x"), None).is_err());
        // A file in the symlink's place replaces it.
        plan.check(Kind::File, Path::new("/w/l"), None).unwrap();
        plan.check(Kind::File, Path::new("/w/other"), None).unwrap();
    }

    /// Each pair is refused in either order, so what is restored never
    /// depends on the order of the entries.
    #[test]
    fn conflicting_entries_are_refused_in_either_order() {
        let x = (Kind::File, "/w/x");
        let pairs = [
            [x, (Kind::File, "/w/x/f")],
            [x, (Kind::Dir, "/w/x")],
            [(Kind::Symlink, "/w/x"), (Kind::File, "/w/x/f")],
            [(Kind::HardLink, "/w/x"), (Kind::Dir, "/w/x/d")],
            [(Kind::Symlink, "/w/x"), (Kind::Dir, "/w/x")],
        ];
        for pair in pairs {
            for order in [[0, 1], [1, 0]] {
                let mut plan = Plan::default();
                let (a, b) = (pair[order[0]], pair[order[1]]);
                let src = Some(Path::new("/w/other"));
                let src_of = |k: Kind| (k == Kind::HardLink).then_some(src).flatten();
                let first = plan.check(a.0, Path::new(a.1), src_of(a.0));
                let second = plan.check(b.0, Path::new(b.1), src_of(b.0));
                assert!(
                    first.is_err() || second.is_err(),
                    "{a:?} then {b:?} was accepted"
                );
            }
        }
        // What a tree's archive holds is fine in any order.
        let tree = [
            (Kind::Dir, "/w/d"),
            (Kind::File, "/w/d/f"),
            (Kind::Dir, "/w/d/e"),
            (Kind::Symlink, "/w/d/e/l"),
            (Kind::File, "/w/g"),
        ];
        for rotation in 0..tree.len() {
            let mut plan = Plan::default();
            for i in 0..tree.len() {
                let (kind, path) = tree[(i + rotation) % tree.len()];
                plan.check(kind, Path::new(path), None).unwrap();
            }
        }
    }
}
