//! What a command finds on its stdin, stdout and stderr (docs/protocol.md
//! §4, §6.6): stdin is a terminal of the terminal's size that reads as
//! end-of-file, whatever a command did to its modes, in shell jobs (`agent
//! run` and `agent serve`) and in a compose job's main container; `docker
//! run -it` and `-t` work; a user's `stty echo` never shows the agent's
//! instructions; and the output of host commands, which never crosses a
//! terminal, reaches the log byte-exact.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::docker::{
    self, run_with_env, ComposeJob, Container, ProjectWatch, BASH_IMAGE, DIND_IMAGE,
};
use crate::support::server::TestAgent;
use crate::support::{
    env_export, log_of, no_files, normalize, result_export, step, Ev, Job, Sandbox,
};

/// The commands every kind of job runs, with the output each must give.
const STDIN_CHECKS: &[(&str, &str, i64)] = &[
    ("[ -t 0 ] && echo stdin-tty", "stdin-tty\n", 0),
    ("stty size", "40 160\n", 0),
    ("echo \"$COLUMNS $LINES\"", "160 40\n", 0),
    ("stty echo", "", 0),
    ("echo Hello World", "Hello World\n", 0),
    ("cat", "", 0),
    ("read x || echo eof", "eof\n", 0),
    // A read that waits with `select` is woken by the end-of-file at once.
    ("read -t 3 x; echo $?", "1\n", 0),
    ("stty sane; read x || echo eof", "eof\n", 0),
    ("stty sane; read x; read y || echo eof", "eof\n", 0),
    ("stty icanon min 1; read x || echo eof", "eof\n", 0),
    ("stty -echo; stty echo </dev/tty; echo on", "on\n", 0),
    ("echo Hello World", "Hello World\n", 0),
    // What a command changed is undone before the next one.
    ("stty raw echo -extproc", "", 0),
    (
        "stty -a | tr ' ;' '\\n\\n' | grep -x -e -icanon -e icanon -e -echo -e echo -e -extproc -e extproc; \
         stty -a | grep -o 'min = 0'",
        "icanon\n-echo\nextproc\nmin = 0\n",
        0,
    ),
];

/// `tput`, which the compose test image lacks.
const TPUT_CHECK: (&str, &str, i64) = ("tput cols; tput lines", "160\n40\n", 0);

fn checks_job(name: &str) -> Job {
    STDIN_CHECKS
        .iter()
        .chain([&TPUT_CHECK])
        .fold(Job::new(name), |job, (directive, _, _)| {
            job.command(directive)
        })
}

fn expected_steps(checks: &[(&str, &str, i64)]) -> Vec<Vec<Ev>> {
    checks
        .iter()
        .map(|(directive, output, code)| step(directive, output, *code))
        .collect()
}

fn expected_shell_log() -> Vec<Ev> {
    let mut steps = vec![env_export(&[]), no_files()];
    steps.extend(expected_steps(STDIN_CHECKS));
    steps.extend(expected_steps(&[TPUT_CHECK]));
    steps.push(result_export(0));
    log_of(steps, "passed")
}

#[test]
fn stdin_is_a_terminal_that_reads_as_end_of_file() {
    let started = Instant::now();
    let out = Sandbox::new().run_within(&checks_job("stdin-tty"), Duration::from_secs(30));
    assert_eq!(out.normalized(), expected_shell_log());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the job took {:?}",
        started.elapsed()
    );
}

#[test]
fn stdin_is_a_terminal_that_reads_as_end_of_file_under_serve() {
    let agent = TestAgent::start_default();
    let job = checks_job("stdin-tty-serve");
    agent.submit_ok(&job.to_value());
    let events = agent.wait_for_job_finished(&job.job_id);
    assert_eq!(normalize(&events), expected_shell_log());
}

/// A program that waits on its stdin with `select`, `poll` or `epoll`, as
/// event loops do, is told at once that stdin is readable, and then reads
/// end-of-file; so does one that reads it to its end through an event loop.
#[test]
fn stdin_wakes_a_program_that_waits_for_it() {
    let waits = "python3 -c 'import os, select; \
        r = select.select([0], [], [], 5)[0] == [0]; \
        p = select.poll(); p.register(0, select.POLLIN); \
        e = select.epoll(); e.register(0, select.EPOLLIN); \
        print(r, bool(p.poll(5000)), bool(e.poll(5)), repr(os.read(0, 64)))'";
    let event_loop = "python3 -c 'import asyncio, sys
async def main():
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(repr(await reader.read()))
asyncio.run(main())'";
    let job = Job::new("stdin-select")
        .command(waits)
        .command(event_loop)
        .command(waits);
    let started = Instant::now();
    let out = Sandbox::new().run_within(&job, Duration::from_secs(60));
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(waits, "True True True b''\n", 0),
                step(event_loop, "b''\n", 0),
                step(waits, "True True True b''\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
    // Each wait would take 5 s without the end-of-file.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the job took {:?}",
        started.elapsed()
    );
}

/// Non-canonical with MIN > 0 is the one mode where a read waits: nothing
/// is ever typed, so the job's time limit ends it.
#[test]
fn a_read_in_raw_mode_waits_until_the_time_limit() {
    let sandbox = Sandbox::new();
    let directive = "stty -icanon min 1; read x";
    let mut job = Job::new("stdin-raw").command(directive).to_value();
    job["execution_time_limit_seconds"] = json!(2);
    let started = Instant::now();
    let out = sandbox
        .spawn_text(
            "job.json",
            &job.to_string(),
            job["job_id"].as_str().unwrap(),
        )
        .finish(Duration::from_secs(30));
    assert_eq!(out.result(), "stopped", "{}", out.render());
    assert_eq!(out.step(directive).exit_code, 1, "{}", out.render());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the job took {:?}",
        started.elapsed()
    );
}

#[test]
fn docker_run_with_a_terminal_works_in_a_shell_job() {
    if !docker::ready() {
        return;
    }
    let commands = [
        format!("docker run --rm -it {BASH_IMAGE} echo hi-it"),
        format!("docker run --rm -t {BASH_IMAGE} echo hi-t"),
        // With stdin attached but no terminal, the container reads the
        // same end-of-file.
        format!("docker run --rm -i {BASH_IMAGE} cat"),
    ];
    let job = commands
        .iter()
        .fold(Job::new("docker-tty"), |job, c| job.command(c));
    let out = Sandbox::new().run_within(&job, Duration::from_secs(120));
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(&commands[0], "hi-it\n", 0),
                step(&commands[1], "hi-t\n", 0),
                step(&commands[2], "", 0),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn stdin_is_a_terminal_in_the_main_container() {
    if !docker::ready() {
        return;
    }
    // As a user other than root, who must be able to open the terminal.
    let job = STDIN_CHECKS.iter().fold(
        ComposeJob::new(
            "stdin-tty",
            Container::new("main", BASH_IMAGE).user("runner"),
        ),
        |job, (directive, _, _)| job.command(directive),
    );
    let outcome = job.run();
    let mut steps = vec![docker::compose_started(), env_export(&[]), no_files()];
    steps.extend(expected_steps(STDIN_CHECKS));
    steps.push(result_export(0));
    assert_eq!(job.normalize(&outcome.events), log_of(steps, "passed"));
}

#[test]
fn docker_run_with_a_terminal_works_in_the_main_container() {
    if !docker::ready() {
        return;
    }
    let commands = [
        format!("docker run --rm -it {BASH_IMAGE} echo hi-it"),
        format!("docker run --rm -t {BASH_IMAGE} echo hi-t"),
        TPUT_CHECK.0.to_string(),
    ];
    let job = commands.iter().fold(
        ComposeJob::new("dind-tty", Container::new("main", DIND_IMAGE)),
        |job, c| job.command(c),
    );
    let outcome = job.run();
    assert_eq!(
        job.normalize(&outcome.events),
        log_of(
            vec![
                docker::compose_started(),
                env_export(&[]),
                no_files(),
                step(&commands[0], "hi-it\n", 0),
                step(&commands[1], "hi-t\n", 0),
                step(&commands[2], TPUT_CHECK.1, 0),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn host_command_output_is_byte_exact() {
    if !docker::ready() {
        return;
    }
    let failing = "printf 'one\\r\\ntwo\\r\\n\\rthree'; exit 3";
    let job = ComposeJob::new("hostexact", Container::new("main", BASH_IMAGE))
        .host_setup(failing)
        .command("echo never");
    let outcome = job.run();
    // As the reference: no step at all; the agent's remark (stderr with
    // `--json`) has the command's output, byte for byte.
    assert_eq!(outcome.normalized(), log_of(vec![], "failed"));
    let remark = format!(
        "agent: The host setup command `{failing}` failed with exit status 3; \
         the job did not start. Its output:\none\r\ntwo\r\n\rthree\n"
    );
    assert!(
        outcome.stderr.contains(&remark),
        "{remark:?} not in stderr:\n{:?}",
        outcome.stderr
    );
}

/// The compose tool wrapped so that its `pull` and `up` (which pulls what
/// is missing) print progress lines ending in `\r\n` before their work.
#[test]
fn pull_output_keeps_its_crlf() {
    if !docker::ready() {
        return;
    }
    let sandbox = Sandbox::new();
    let bin = sandbox.root().join("bin");
    fs::create_dir(&bin).expect("create bin");
    let tool = match docker::compose_tool() {
        docker::ComposeTool::Plugin => "docker",
        docker::ComposeTool::Standalone => "docker-compose",
    };
    let real = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on PATH"));
    let wrapper = bin.join(tool);
    fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\ncase \" $* \" in *' pull '*|*' up '*) printf 'progress 1/2\\r\\nprogress 2/2\\r\\n';; esac\nexec '{}' \"$@\"\n",
            real.display()
        ),
    )
    .expect("write the wrapper");
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let job = ComposeJob::new("pullcrlf", Container::new("main", BASH_IMAGE))
        .service(Container::new("side", BASH_IMAGE).command("sleep 1000"))
        .command("echo done");
    let project = ProjectWatch::new(&job.project_prefix());
    let (events, status, _) = run_with_env(&sandbox, &job, &[("PATH", &path)]);
    project.assert_gone();
    assert_eq!(status.code(), Some(0), "{events:#?}");
    let pull: String = events
        .iter()
        .skip_while(|e| e["directive"] != docker::PULL_STEP)
        .take_while(|e| e["event"] != "cmd_finished")
        .filter_map(|e| e["output"].as_str())
        .collect();
    assert!(
        pull.starts_with("progress 1/2\r\nprogress 2/2\r\n"),
        "the pull step's output: {pull:?}"
    );
}
