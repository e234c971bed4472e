//! The command line as a person meets it: `--version` and `-h` where one
//! would try them, a hint after a mistyped command, every fatal error on
//! one line of stderr, and a build that does not redo itself.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::docker::{run_bounded, CmdOutput};

const QUICK: Duration = Duration::from_secs(30);

fn agent(args: &[&str]) -> CmdOutput {
    agent_in(&std::env::temp_dir(), args)
}

/// Runs the agent in `dir` with its HOME and agent log there too.
fn agent_in(dir: &Path, args: &[&str]) -> CmdOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agent"));
    command
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("SEMAPHORE_AGENT_LOG_FILE_PATH", dir.join("agent_log"))
        .env_remove("AGENT_AUTH_TOKEN_SECRET");
    run_bounded(command, b"", QUICK)
}

#[test]
fn version_flags_print_the_name_the_version_and_the_commit() {
    let expected = agent(&["version"]);
    assert!(expected.success(), "{expected:?}");
    assert!(
        expected
            .stdout
            .starts_with(concat!("agent ", env!("CARGO_PKG_VERSION"))),
        "{expected:?}"
    );
    for flag in ["--version", "-V"] {
        let out = agent(&[flag]);
        assert!(out.success(), "{flag}: {out:?}");
        assert_eq!(out.stdout, expected.stdout, "{flag}");
        assert_eq!(out.stderr, "", "{flag}");
    }
}

#[test]
fn help_flags_work_at_every_level() {
    for command in [
        &[][..],
        &["run"],
        &["serve"],
        &["start"],
        &["token"],
        &["version"],
    ] {
        for flag in ["-h", "--help"] {
            let args: Vec<&str> = command.iter().copied().chain([flag]).collect();
            let out = agent(&args);
            assert!(out.success(), "{args:?}: {out:?}");
            assert!(out.stdout.starts_with("Usage: agent"), "{args:?}: {out:?}");
            assert!(
                !out.stdout.ends_with("\n\n"),
                "{args:?}: a blank line at the end"
            );
            assert_eq!(out.stderr, "", "{args:?}");
        }
    }
}

#[test]
fn the_command_list_has_start() {
    let help = agent(&["--help"]);
    let bare = agent(&[]);
    assert_eq!(bare.status.code(), Some(2), "{bare:?}");
    for text in [&help.stdout, &bare.stderr] {
        let names: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "Commands:")
            .skip(1)
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(
            names,
            ["version", "run", "serve", "start", "token"],
            "{text}"
        );
    }
}

#[test]
fn an_unknown_command_gets_a_hint() {
    let out = agent(&["srve"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "agent: unknown command 'srve' (did you mean 'serve'?); the commands are \
         run, serve, start, token, version; `agent --help` says more\n"
    );
    let out = agent(&["bogus"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .starts_with("agent: unknown command 'bogus'; the commands are"),
        "{out:?}"
    );
}

#[test]
fn argument_errors_end_without_a_blank_line_and_point_to_help() {
    for (args, help) in [
        (&["run", "--bogus", "x.yaml"][..], "agent run --help"),
        (&["serve", "--port", "eighty"], "agent serve --help"),
        (&["--bogus"], "agent --help"),
    ] {
        let out = agent(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.ends_with("\n\n"), "{args:?}: {:?}", out.stderr);
        assert!(
            out.stderr.ends_with(&format!("Try `{help}`.\n")),
            "{args:?}: {:?}",
            out.stderr
        );
    }
}

/// Each fatal error is printed once: on stderr as `agent: <message>`, and
/// (for `serve`) once more in the agent log file, not a second time on stderr.
#[test]
fn a_fatal_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let bad_cert = dir.path().join("bad.crt");
    std::fs::write(&bad_cert, "not a certificate\n").unwrap();
    let bad_cert = bad_cert.to_str().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let serve = ["serve", "--host", "127.0.0.1", "--data-dir", data];
    let secret = [
        "--auth-token-secret",
        "a-secret-long-enough-for-no-warning-at-all",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "nope.yaml"],
            "cannot read the job file nope.yaml",
        ),
        (
            [&serve[..], &["--port", "0"]].concat(),
            "no JWT secret: give --auth-token-secret",
        ),
        (
            [&serve[..], &secret, &["--port", &port]].concat(),
            "cannot listen on 127.0.0.1:",
        ),
        (
            [
                &serve[..],
                &secret,
                &["--port", "0", "--tls-cert-path", bad_cert],
            ]
            .concat(),
            "--tls-cert-path needs --tls-key-path too",
        ),
        (
            [
                &serve[..],
                &secret,
                &["--port", "0", "--tls-key-path", bad_cert],
            ]
            .concat(),
            "--tls-key-path needs --tls-cert-path too",
        ),
        (
            [
                &serve[..],
                &secret,
                &[
                    "--port",
                    "0",
                    "--tls-cert-path",
                    bad_cert,
                    "--tls-key-path",
                    bad_cert,
                ],
            ]
            .concat(),
            "certificate",
        ),
        (
            vec!["token", "--auth-token-secret-file", "/nonexistent/secret"],
            "/nonexistent/secret",
        ),
        (
            [
                &serve[..],
                &secret,
                &["--port", "0", "--docker-socket", "root"],
            ]
            .concat(),
            "--docker-socket \"root\" is not one of gate, host, none",
        ),
    ];
    for (args, needle) in cases {
        let out = agent_in(dir.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains(needle) || l.contains("ERROR"))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: stderr:\n{}", out.stderr);
        assert!(errors[0].starts_with("agent: "), "{args:?}: {}", errors[0]);
    }
    drop(busy);
}

/// `build.rs` watches only HEAD and the branch it points to, and never
/// rewrites the index: with nothing changed, a second build compiles nothing.
/// The builds go to a target directory of their own: rewriting
/// `target/debug/agent` would pull the binary from under the other tests.
#[test]
fn a_second_cargo_build_compiles_nothing() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = manifest_dir.join("target/build-twice");
    let build = || {
        let mut command = Command::new(&cargo);
        command
            .args(["build", "--offline", "--message-format=json"])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(manifest_dir);
        run_bounded(command, b"", Duration::from_secs(900)).ok("cargo build")
    };
    build();
    let second = build();
    let rebuilt: Vec<String> = second
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            let kind = &m["reason"];
            (kind == "compiler-artifact" || kind == "build-script-executed") && m["fresh"] == false
        })
        .map(|m| m["package_id"].to_string())
        .collect();
    assert!(rebuilt.is_empty(), "rebuilt: {rebuilt:?}");
    let artifacts = second
        .stdout
        .lines()
        .filter(|l| l.contains("\"compiler-artifact\""))
        .count();
    assert!(artifacts > 0, "no artifact reported:\n{}", second.stdout);
}
