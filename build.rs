//! Records the git commit of the checkout, when there is one, for `agent version`.
//!
//! It reads git and never writes: `git status` would refresh `.git/index`,
//! and a build script that watches what it rewrites runs on every build.
//! It reruns only when HEAD, or the branch HEAD points to, moves.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        // Never take the index lock to refresh it, whatever the command.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Where git keeps `name` (HEAD, a loose ref, packed-refs).
fn git_path(name: &str) -> Option<PathBuf> {
    git(&["rev-parse", "--path-format=absolute", "--git-path", name]).map(PathBuf::from)
}

fn main() {
    // Without this line cargo reruns the script whenever any file changes.
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=AGENT_GIT_COMMIT={commit}");
    if commit.is_empty() {
        return;
    }
    // A watched path that does not exist makes cargo rerun every time, so
    // only existing ones are named: HEAD, and the branch's loose ref or,
    // when it has none yet, packed-refs and the folder the ref will be in.
    let mut watched: Vec<PathBuf> = git_path("HEAD").into_iter().collect();
    if let Some(loose) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|b| git_path(&b)) {
        if loose.is_file() {
            watched.push(loose);
        } else {
            watched.extend(git_path("packed-refs"));
            watched.extend(loose.parent().map(Path::to_path_buf));
        }
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
