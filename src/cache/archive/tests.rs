//! Round trips of both formats, and the archives restore must refuse.

use super::*;
use std::fs;
use std::io::BufReader;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// `deps/` with a file of mode 751 dated 2001-09-09, a symlink, and a
/// read-only subdirectory.
fn make_tree(root: &Path) -> SystemTime {
    let tree = root.join("deps");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::create_dir_all(tree.join("ro")).unwrap();
    fs::write(tree.join("ro/f"), b"ro").unwrap();
    fs::set_permissions(tree.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::write(tree.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(tree.join("sub/run.sh"), fs::Permissions::from_mode(0o751)).unwrap();
    symlink("sub/run.sh", tree.join("link")).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for p in ["sub/run.sh", "sub"] {
        fs::File::open(tree.join(p))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    old
}

fn round_trip(format: ArchiveFormat) {
    let src = tempfile::tempdir().unwrap();
    let old = make_tree(src.path());
    let bytes = pack(format, Path::new("deps"), src.path(), Vec::new()).unwrap();
    assert_eq!(sniff(&bytes), Some(format));
    let dst = tempfile::tempdir().unwrap();
    verify(&bytes[..], bytes.len() as u64, dst.path()).unwrap();
    let restored = unpack(&bytes[..], bytes.len() as u64, dst.path()).unwrap();
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
    assert_eq!(fs::read(back.join("ro/f")).unwrap(), b"ro");
    let ro = fs::metadata(back.join("ro")).unwrap().permissions().mode();
    assert_eq!(ro & 0o777, 0o555);
    for dir in [src.path(), dst.path()] {
        let ro = dir.join("deps/ro");
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn a_tree_round_trips_in_the_agent_s_format() {
    round_trip(ArchiveFormat::Zstd);
}

#[test]
fn a_tree_round_trips_in_the_toolbox_s_format() {
    round_trip(ArchiveFormat::Gzip);
}

#[test]
fn an_absolute_path_keeps_its_slash_in_the_toolbox_s_format() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"x").unwrap();
    let bytes = pack(ArchiveFormat::Gzip, src.path(), Path::new("/"), Vec::new()).unwrap();
    fs::remove_file(src.path().join("f")).unwrap();
    let restored = unpack(
        &bytes[..],
        bytes.len() as u64,
        Path::new("/nonexistent-cwd"),
    )
    .unwrap();
    assert_eq!(restored.path, format!("{}/", src.path().display()));
    assert_eq!(fs::read(src.path().join("f")).unwrap(), b"x");
}

#[test]
fn a_damaged_archive_fails_verification() {
    for format in [ArchiveFormat::Zstd, ArchiveFormat::Gzip] {
        let src = tempfile::tempdir().unwrap();
        let noise: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        fs::write(src.path().join("f"), noise).unwrap();
        let mut bytes = pack(format, Path::new("f"), src.path(), Vec::new()).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        assert!(
            verify(&bytes[..], bytes.len() as u64, src.path()).is_err(),
            "{format:?}"
        );
        bytes.truncate(mid);
        assert!(
            verify(&bytes[..], bytes.len() as u64, src.path()).is_err(),
            "{format:?}"
        );
    }
    assert!(verify(&b"plain text"[..], 10, Path::new("/")).is_err());
}

/// A tar.gz of raw entries: (name, kind, link target, content).
fn hostile(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(enc);
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o755);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Verification refuses the archive and nothing is written.
fn assert_refused(bytes: &[u8], dst: &Path, outside: &Path) {
    let err = verify(BufReader::new(bytes), bytes.len() as u64, dst).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(extract::Refusal::is(&err), "{err}");
    assert!(unpack(bytes, bytes.len() as u64, dst).is_err());
    assert!(!outside.join("planted").exists());
}

#[test]
fn a_name_that_climbs_out_is_refused() {
    let outer = tempfile::tempdir().unwrap();
    let dst = outer.path().join("job");
    fs::create_dir(&dst).unwrap();
    let bytes = hostile(&[
        ("ok", tar::EntryType::Regular, "", b"fine"),
        ("../planted", tar::EntryType::Regular, "", b"evil"),
    ]);
    assert_refused(&bytes, &dst, outer.path());
}

#[test]
fn nothing_is_written_through_a_symlink_the_archive_made() {
    let outer = tempfile::tempdir().unwrap();
    let dst = outer.path().join("job");
    fs::create_dir(&dst).unwrap();
    let target = outer.path().display().to_string();
    let through_dir = hostile(&[
        ("link", tar::EntryType::Symlink, &target, b""),
        ("link/planted", tar::EntryType::Regular, "", b"evil"),
    ]);
    assert_refused(&through_dir, &dst, outer.path());
    let hard = hostile(&[
        ("link", tar::EntryType::Symlink, &target, b""),
        ("h", tar::EntryType::Link, "link/planted", b""),
    ]);
    assert_refused(&hard, &dst, outer.path());
    // A symlink on its own is fine, and so is a file that replaces it.
    let replaced = hostile(&[
        ("link", tar::EntryType::Symlink, &target, b""),
        ("link", tar::EntryType::Regular, "", b"file"),
    ]);
    unpack(&replaced[..], replaced.len() as u64, &dst).unwrap();
    assert_eq!(fs::read(dst.join("link")).unwrap(), b"file");
}

#[test]
fn a_symlink_that_was_there_before_is_followed() {
    let outer = tempfile::tempdir().unwrap();
    let dst = outer.path().join("job");
    let real = outer.path().join("real");
    fs::create_dir_all(&dst).unwrap();
    fs::create_dir_all(&real).unwrap();
    symlink(&real, dst.join("vendor")).unwrap();
    let bytes = hostile(&[("vendor/f", tar::EntryType::Regular, "", b"x")]);
    unpack(&bytes[..], bytes.len() as u64, &dst).unwrap();
    assert_eq!(fs::read(real.join("f")).unwrap(), b"x");
    let _ = PathBuf::new();
}

#[test]
fn an_archive_that_expands_past_its_bound_is_refused_unwritten() {
    // 4 MiB of zeros in a few kB, against a bound of 1 MiB.
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("zeros"), vec![0u8; 4 << 20]).unwrap();
    let bytes = pack(
        ArchiveFormat::Zstd,
        Path::new("zeros"),
        src.path(),
        Vec::new(),
    )
    .unwrap();
    let dst = tempfile::tempdir().unwrap();
    let small = Expansion {
        archive_size: bytes.len() as u64,
        bound: 1 << 20,
    };
    let err = walk(&bytes[..], small, dst.path(), None)
        .map(|_| ())
        .unwrap_err();
    assert!(extract::Refusal::is(&err), "{err}");
    let expected = format!(
        "it expands past 1.0M, the most an archive of {} bytes may hold",
        bytes.len()
    );
    assert_eq!(err.to_string(), expected);
    let mut extractor = Extractor::default();
    assert!(walk(&bytes[..], small, dst.path(), Some(&mut extractor)).is_err());
    // Refused before the file could grow past the bound.
    let written = fs::metadata(dst.path().join("zeros"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 1 << 20, "{written}");
    // Within the bound of its size, the same archive restores.
    unpack(&bytes[..], bytes.len() as u64, dst.path()).unwrap();
    assert_eq!(expansion_bound(10), EXPANSION_FLOOR);
    assert_eq!(expansion_bound(1 << 30), (1 << 30) * EXPANSION_RATIO);
}
