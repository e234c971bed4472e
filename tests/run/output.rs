//! Output as the log shows it: UTF-8, replacement characters, carriage returns, volume, streaming, stdin.

use super::*;

#[test]
fn utf8_output_is_kept_across_chunks() {
    let short = "echo 'héllo wörld — 日本語 🎉🚀'";
    let long = "for i in $(seq 1 4000); do printf 'é日🎉'; done; echo";
    let out = Job::new("utf8").command(short).command(long).run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(short, "héllo wörld — 日本語 🎉🚀\n", 0),
                step(long, &("é日🎉".repeat(4000) + "\n"), 0),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn invalid_utf8_bytes_become_one_replacement_character_each() {
    let five = r"printf '\226\226\226\226\226\n'";
    let lone = r"printf 'a\377b\303\n'";
    let truncated = r"printf 'x\342\202y\n'";
    let at_end = r"printf 'end\342\202'";
    let out = Job::new("invalid-utf8")
        .command(five)
        .command(lone)
        .command(truncated)
        .command(at_end)
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(five, "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\n", 0),
                step(lone, "a\u{FFFD}b\u{FFFD}\n", 0),
                step(truncated, "x\u{FFFD}\u{FFFD}y\n", 0),
                step(at_end, "end\u{FFFD}\u{FFFD}", 0),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn carriage_returns_are_kept_and_crlf_folded() {
    let crlf = r"printf 'a\rb\r\n'";
    let progress = r"printf '10%%\r50%%\r100%%\n'";
    let trailing = r"printf 'no newline\r'";
    let out = Job::new("carriage-returns")
        .command(crlf)
        .command(progress)
        .command(trailing)
        .run();
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(crlf, "a\rb\n", 0),
                step(progress, "10%\r50%\r100%\n", 0),
                step(trailing, "no newline\r", 0),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn fifty_megabytes_of_output_arrive_whole_in_large_chunks() {
    const TOTAL: usize = 50_000_000;
    const WIDTH: usize = 99;
    let directive = "head -c 50000000 /dev/zero | tr '\\0' a | fold -w 99";
    let out = Sandbox::new().run_within(
        &Job::new("fifty-mb").command(directive),
        Duration::from_secs(300),
    );
    let big = out.step(directive);
    let output = big.output();
    // fold ends every full line with a newline and leaves the last partial
    // line without one.
    let full_lines = TOTAL / WIDTH;
    let rest = TOTAL % WIDTH;
    assert_eq!(output.len(), TOTAL + full_lines, "output length");
    let lines: Vec<&str> = output.split('\n').collect();
    assert_eq!(lines.len(), full_lines + 1, "number of lines");
    let bad_line = lines[..full_lines]
        .iter()
        .position(|line| line.len() != WIDTH || line.bytes().any(|b| b != b'a'));
    assert_eq!(bad_line, None, "a line that is not 99 times 'a'");
    assert_eq!(lines[full_lines], "a".repeat(rest));
    assert!(
        big.outputs.len() < 50_000,
        "{} cmd_output events for 50 MB: chunks are too small",
        big.outputs.len()
    );
    assert_eq!(
        with_output(out.normalized(), directive, "<50 MB>"),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(directive, "<50 MB>", 0),
                result_export(0),
            ],
            "passed"
        )
    );
}

#[test]
fn commands_reading_stdin_get_end_of_file_at_once() {
    let started = Instant::now();
    let out = Sandbox::new().run_within(
        &Job::new("stdin")
            .command("cat")
            .command("echo after-cat")
            .command("wc -c")
            .command("read x")
            .command("echo never"),
        Duration::from_secs(15),
    );
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step("cat", "", 0),
                step("echo after-cat", "after-cat\n", 0),
                step("wc -c", "0\n", 0),
                step("read x", "", 1),
                result_export(0),
            ],
            "failed"
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "reading stdin took {:?}",
        started.elapsed()
    );
}

#[test]
fn output_is_streamed_while_the_command_runs() {
    let sandbox = Sandbox::new();
    let release = sandbox.root().join("release");
    let directive = format!(
        "echo first-part; {}; echo second-part",
        wait_for_file_command(&release)
    );
    let mut running = sandbox.spawn(&Job::new("streaming").command(&directive));
    running.wait_for_output("first-part\n", EVENT_TIMEOUT);
    fs::write(&release, "").unwrap();
    let out = running.finish(JOB_TIMEOUT);
    assert_eq!(
        out.normalized(),
        log_of(
            vec![
                env_export(&[]),
                no_files(),
                step(&directive, "first-part\nsecond-part\n", 0),
                result_export(0),
            ],
            "passed"
        )
    );
}
