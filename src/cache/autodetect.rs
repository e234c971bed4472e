//! `cache store` and `cache restore` without arguments: the lock files of
//! the usual package managers in the current directory say what to keep,
//! under keys made of the branch (`SEMAPHORE_GIT_BRANCH`) and the MD5 of
//! the lock file (the toolbox's keys, so caches stored by either are found
//! by both), so a changed lock file makes a new key and a restore falls
//! back to the branch's newest key, then to master's and main's.
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
//! | `go.sum`            | `$GOPATH/pkg/mod`    | `go`                  |
//!
//! A key is `PREFIX-BRANCH-CHECKSUM`; restore tries it, then `PREFIX-BRANCH-`,
//! `PREFIX-master-` and `PREFIX-main-` (the newest key each matches).

use std::path::{Path, PathBuf};

/// What the detection reads from the job's environment.
pub struct Env {
    pub branch: String,
    pub home: PathBuf,
    pub gopath: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        Env {
            branch: var("SEMAPHORE_GIT_BRANCH").unwrap_or_else(|| "master".into()),
            home: var("HOME").map(PathBuf::from).unwrap_or_else(|| "/".into()),
            gopath: var("GOPATH").map(PathBuf::from),
        }
    }
}

/// One path to keep, and its keys.
#[derive(Debug, PartialEq, Eq)]
pub struct Detected {
    pub lockfile: &'static str,
    pub key: String,
    pub path: PathBuf,
    /// The key, then the fallbacks, for `restore`.
    pub restore_keys: Vec<String>,
}

/// Lock file, then (key prefix, path) pairs. A path starting with `~/` is
/// under the home, `$GOPATH/` under the Go path.
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
    ("go.sum", &[("go", "$GOPATH/pkg/mod")]),
];

/// The checksum in keys: the MD5 of the lock file in hex, as the toolbox's
/// `checksum` prints it (`md5sum`), so both make the same keys.
pub fn checksum(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn detect(dir: &Path, env: &Env) -> Vec<Detected> {
    let branch = env.branch.replace('/', "-");
    let mut found = Vec::new();
    let mut seen_paths: Vec<PathBuf> = Vec::new();
    for (lockfile, targets) in TABLE {
        let Ok(bytes) = std::fs::read(dir.join(lockfile)) else {
            continue;
        };
        let sum = checksum(&bytes);
        for (prefix, path) in *targets {
            let path = if let Some(rest) = path.strip_prefix("~/") {
                env.home.join(rest)
            } else if let Some(rest) = path.strip_prefix("$GOPATH/") {
                env.gopath
                    .clone()
                    .unwrap_or_else(|| env.home.join("go"))
                    .join(rest)
            } else {
                PathBuf::from(path)
            };
            // package-lock.json and yarn.lock both mean node_modules.
            if seen_paths.contains(&path) {
                continue;
            }
            seen_paths.push(path.clone());
            found.push(Detected {
                lockfile,
                key: format!("{prefix}-{branch}-{sum}"),
                path,
                restore_keys: restore_keys(prefix, &branch, &sum),
            });
        }
    }
    found
}

/// The exact key, then the newest of the branch, then of `master` and
/// `main` (each once).
fn restore_keys(prefix: &str, branch: &str, sum: &str) -> Vec<String> {
    let mut keys = vec![format!("{prefix}-{branch}-{sum}")];
    for b in [branch, "master", "main"] {
        let key = format!("{prefix}-{b}-");
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_files_make_keys_of_branch_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Gemfile.lock"), b"GEM\n").unwrap();
        std::fs::write(dir.path().join("mix.lock"), b"%{}\n").unwrap();
        let env = Env {
            branch: "feature/x".into(),
            home: "/home/u".into(),
            gopath: None,
        };
        let found = detect(dir.path(), &env);
        let sum = checksum(b"GEM\n");
        assert_eq!(sum.len(), 32);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].key, format!("gems-feature-x-{sum}"));
        assert_eq!(found[0].path, Path::new("vendor/bundle"));
        assert_eq!(
            found[0].restore_keys[1..],
            ["gems-feature-x-", "gems-master-", "gems-main-"]
        );
        assert_eq!(found[1].path, Path::new("deps"));
        assert_eq!(found[2].path, Path::new("_build"));
    }

    #[test]
    fn the_checksum_is_md5sum_s() {
        assert_eq!(checksum(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            checksum(b"The quick brown fox jumps over the lazy dog"),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
    }

    #[test]
    fn a_branch_named_master_or_main_is_tried_once() {
        assert_eq!(
            restore_keys("go", "main", "s"),
            ["go-main-s", "go-main-", "go-master-"]
        );
        assert_eq!(
            restore_keys("go", "master", "s"),
            ["go-master-s", "go-master-", "go-main-"]
        );
    }

    #[test]
    fn go_and_yarn_paths_are_under_home() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("go.sum"), b"x").unwrap();
        std::fs::write(dir.path().join("yarn.lock"), b"y").unwrap();
        std::fs::write(dir.path().join("package-lock.json"), b"z").unwrap();
        let env = Env {
            branch: "main".into(),
            home: "/home/u".into(),
            gopath: None,
        };
        let paths: Vec<_> = detect(dir.path(), &env)
            .into_iter()
            .map(|d| d.path)
            .collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("node_modules"),
                PathBuf::from("/home/u/.cache/yarn"),
                PathBuf::from("/home/u/go/pkg/mod"),
            ]
        );
    }
}
