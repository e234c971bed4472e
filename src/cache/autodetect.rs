//! `cache store` and `cache restore` without arguments: the lock files of
//! the usual package managers in the current directory say what to keep,
//! exactly as the toolbox decides it, so that caches stored by either are
//! found by both.
//!
//! | lock file           | path                 | key prefix            |
//! |---------------------|----------------------|-----------------------|
//! | `.nvmrc`            | `~/.nvm`             | `nvm`                 |
//! | `Gemfile.lock`      | `vendor/bundle`      | `gems`                |
//! | `package-lock.json` | `node_modules`       | `node-modules`        |
//! | `yarn.lock`         | `~/.cache/yarn`      | `yarn-cache`          |
//! |                     | `node_modules`       | `node-modules`        |
//! | `mix.lock`          | `deps`, `_build`     | `mix-deps`, `mix-build` |
//! | `requirements.txt`  | `.pip_cache`         | `requirements`        |
//! | `composer.lock`     | `vendor`             | `composer`            |
//! | `pom.xml`           | `.m2`, `target`      | `maven`, `maven-target` |
//! | `Podfile.lock`      | `Pods`               | `pods`                |
//! | `go.sum`            | `~/go/pkg/mod`       | `go`                  |
//!
//! A key is `PREFIX-BRANCH-MD5` (the lock file's MD5 in hex, as `md5sum`
//! prints it); restore tries it, then `PREFIX-BRANCH`, `PREFIX-master` and
//! `PREFIX-main` (regular expressions, so each finds the newest key that
//! starts so). BRANCH is `SEMAPHORE_GIT_PR_BRANCH` in a pull request's job,
//! else `SEMAPHORE_GIT_BRANCH`, else `master`, used as it is (a `/` in it
//! becomes `-` when the key is normalised, with the usual line). Every path
//! of every lock file is handled, `node_modules` twice when both
//! `package-lock.json` and `yarn.lock` are there, as the toolbox does.

use std::path::Path;

/// What the detection reads from the job's environment.
pub struct Env {
    pub branch: String,
    /// `$HOME`, empty when unset (then `~/.nvm` is `/.nvm`, as the
    /// toolbox has it).
    pub home: String,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        Env {
            branch: var("SEMAPHORE_GIT_PR_BRANCH")
                .or_else(|| var("SEMAPHORE_GIT_BRANCH"))
                .unwrap_or_else(|| "master".into()),
            home: std::env::var("HOME").unwrap_or_default(),
        }
    }
}

/// One path to keep, and its keys.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// The path as the toolbox prints it.
    pub path: String,
    pub key: String,
    /// The key, then the fallbacks, for `restore`.
    pub restore_keys: Vec<String>,
}

/// A lock file found, and what it asks to keep.
#[derive(Debug)]
pub struct Found {
    pub lockfile: &'static str,
    /// The paths and keys; the error when the lock file cannot be read.
    pub targets: Result<Vec<Target>, std::io::Error>,
}

/// Lock file, then (key prefix, path) pairs. A path starting with `~/` is
/// under the home directory.
const TABLE: &[(&str, &[(&str, &str)])] = &[
    (".nvmrc", &[("nvm", "~/.nvm")]),
    ("Gemfile.lock", &[("gems", "vendor/bundle")]),
    ("package-lock.json", &[("node-modules", "node_modules")]),
    (
        "yarn.lock",
        &[
            ("yarn-cache", "~/.cache/yarn"),
            ("node-modules", "node_modules"),
        ],
    ),
    ("mix.lock", &[("mix-deps", "deps"), ("mix-build", "_build")]),
    ("requirements.txt", &[("requirements", ".pip_cache")]),
    ("composer.lock", &[("composer", "vendor")]),
    ("pom.xml", &[("maven", ".m2"), ("maven-target", "target")]),
    ("Podfile.lock", &[("pods", "Pods")]),
    ("go.sum", &[("go", "~/go/pkg/mod")]),
];

/// The checksum in keys: the MD5 of the lock file in hex, as `md5sum`
/// prints it.
pub fn checksum(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The lock files in `dir`, in the table's order. A name that exists as
/// anything (a directory too) counts, as the toolbox's `stat` does.
pub fn detect(dir: &Path, env: &Env) -> Vec<Found> {
    let mut found = Vec::new();
    for (lockfile, targets) in TABLE {
        let file = dir.join(lockfile);
        if std::fs::metadata(&file).is_err() {
            continue;
        }
        let targets = std::fs::read(&file).map(|bytes| {
            let sum = checksum(&bytes);
            targets
                .iter()
                .map(|(prefix, path)| Target {
                    path: match path.strip_prefix("~/") {
                        Some(rest) => format!("{}/{rest}", env.home),
                        None => path.to_string(),
                    },
                    key: format!("{prefix}-{}-{sum}", env.branch),
                    restore_keys: restore_keys(prefix, &env.branch, &sum),
                })
                .collect()
        });
        found.push(Found { lockfile, targets });
    }
    found
}

/// The key, then the branch's, then `master`'s and `main`'s (each once).
fn restore_keys(prefix: &str, branch: &str, sum: &str) -> Vec<String> {
    let mut keys = vec![
        format!("{prefix}-{branch}-{sum}"),
        format!("{prefix}-{branch}"),
    ];
    for b in ["master", "main"] {
        if branch != b {
            keys.push(format!("{prefix}-{b}"));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const MD5_EMPTY: &str = "d41d8cd98f00b204e9800998ecf8427e";

    fn env(branch: &str) -> Env {
        Env {
            branch: branch.into(),
            home: "/home/u".into(),
        }
    }

    #[test]
    fn lock_files_make_keys_of_branch_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Gemfile.lock"), b"").unwrap();
        std::fs::write(dir.path().join("mix.lock"), b"%{}\n").unwrap();
        let found = detect(dir.path(), &env("feature/x"));
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].lockfile, "Gemfile.lock");
        let gems = found[0].targets.as_ref().unwrap();
        assert_eq!(gems[0].path, "vendor/bundle");
        assert_eq!(gems[0].key, format!("gems-feature/x-{MD5_EMPTY}"));
        assert_eq!(
            gems[0].restore_keys,
            [
                format!("gems-feature/x-{MD5_EMPTY}"),
                "gems-feature/x".into(),
                "gems-master".into(),
                "gems-main".into()
            ]
        );
        let mix = found[1].targets.as_ref().unwrap();
        assert_eq!(
            (mix[0].path.as_str(), mix[1].path.as_str()),
            ("deps", "_build")
        );
    }

    #[test]
    fn the_checksum_is_md5sum_s() {
        assert_eq!(checksum(b""), MD5_EMPTY);
        assert_eq!(
            checksum(b"The quick brown fox jumps over the lazy dog"),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
    }

    #[test]
    fn a_branch_named_master_or_main_is_tried_once() {
        assert_eq!(
            restore_keys("node-modules", "master", "s"),
            [
                "node-modules-master-s",
                "node-modules-master",
                "node-modules-main"
            ]
        );
        assert_eq!(
            restore_keys("node-modules", "main", "s"),
            [
                "node-modules-main-s",
                "node-modules-main",
                "node-modules-master"
            ]
        );
    }

    #[test]
    fn go_is_under_home_and_node_modules_comes_twice() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("go.sum"), b"x").unwrap();
        std::fs::write(dir.path().join("yarn.lock"), b"y").unwrap();
        std::fs::write(dir.path().join("package-lock.json"), b"z").unwrap();
        let paths: Vec<String> = detect(dir.path(), &env("main"))
            .into_iter()
            .flat_map(|f| f.targets.unwrap())
            .map(|t| t.path)
            .collect();
        assert_eq!(
            paths,
            [
                "node_modules",
                "/home/u/.cache/yarn",
                "node_modules",
                "/home/u/go/pkg/mod"
            ]
        );
    }

    #[test]
    fn an_unreadable_lock_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pom.xml")).unwrap();
        let found = detect(dir.path(), &env("main"));
        assert_eq!(found.len(), 1);
        assert!(found[0].targets.is_err());
    }
}
