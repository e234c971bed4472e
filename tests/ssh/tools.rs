//! `cache` and `checkout` through the SSH jump point (docs/protocol.md §8,
//! README "SSH into a running job"): a real sshd and a real `ssh` log in
//! with the job's key, and what the jump point gives, a command given to
//! ssh, a shell on a terminal and a shell reading stdin, has the job's
//! `checkout` function and a `cache` that talks to the job's own cache
//! service: a key stored through the jump point is one the job restores.

use serde_json::json;
use std::fs;

use super::{
    assert_key_refused, sshd_for, stop_compose_job, tear_down, wait_for_output, with_keys,
    without_waiting_preamble, COMPOSE_TIMEOUT, SLEEP,
};
use crate::support::cache::static_agent;
use crate::support::docker::{self, ProjectWatch, BASH_IMAGE};
use crate::support::server::{TestAgent, EVENT_TIMEOUT};
use crate::support::sshd::{self, shell_quote, ClientKey, Sshd, SSH_TIMEOUT};
use crate::support::{normalize, Ev, Job};

/// What an interactive shell is asked: the kind of `checkout`, whether
/// `cache` finds `key`, and arithmetic (so the answer comes from a shell
/// that read the line, not from the terminal echoing it).
fn probe_line(key: &str) -> String {
    format!(
        "echo \"[$(type -t checkout) $(cache has_key {key} >/dev/null && echo has)-$((6*7))]\"\n"
    )
}

/// What `probe_line` prints when both are there.
const PROBE_ANSWER: &str = "[function has-42]";

/// Runs `remote` through ssh and returns its stdout; it must exit 0.
fn ssh_ok(sshd: &Sshd, key: &ClientKey, remote: &str) -> String {
    let out = sshd.ssh(key, &[remote]);
    assert_eq!(
        out.code,
        Some(0),
        "ssh {remote:?}: {out:#?}\nsshd log:\n{}",
        sshd.log()
    );
    out.stdout
}

/// An interactive session through `jump_point` answers `probe_line`,
/// typed once the terminal shows `prompt` (when given).
fn assert_interactive_probe(
    sshd: &Sshd,
    key: &ClientKey,
    jump_point: &str,
    cache_key: &str,
    prompt: Option<&str>,
) {
    let mut terminal = sshd.ssh_terminal(key, &["bash", jump_point]);
    if let Some(prompt) = prompt {
        terminal.wait_for(prompt, SSH_TIMEOUT);
    }
    terminal.type_text(&probe_line(cache_key));
    terminal.wait_for(PROBE_ANSWER, SSH_TIMEOUT);
    terminal.type_text("exit\n");
    let (code, shown) = terminal.finish(SSH_TIMEOUT);
    assert_eq!(code, Some(0), "the interactive session showed:\n{shown}");
}

#[test]
fn a_shell_job_s_jump_point_has_cache_and_checkout() {
    if !sshd::available() {
        return;
    }
    let agent = TestAgent::builder().stop_grace_period(2).start();
    let home = agent.home();
    let (files, sshd, key) = sshd_for(&agent, "tools");

    // Holds the job (at most 60 s) until the test creates ~/release; the
    // job then restores what was stored through the jump point.
    let hold = "mkdir -p ~/tools && cd ~/tools && printf 'from the jump point\\n' > note && \
                echo ready && \
                for i in $(seq 1 1200); do [ -e ~/release ] && break; sleep 0.05; done && \
                [ -e ~/release ]";
    let restore = "mkdir -p ~/again && cd ~/again && cache restore jp-note && cat note";
    let job = Job::new("ssh-tools").command(hold).command(restore);
    agent.submit_ok(&with_keys(&job, &[&key]));
    wait_for_output(&agent, &job.job_id, "ready\n", EVENT_TIMEOUT);
    let jump_point = super::jump_point_of(&job.job_id);
    let own = shell_quote(&jump_point);

    // A command given to ssh: a function runs, and `cache` works in the
    // job's current directory.
    assert_eq!(
        ssh_ok(&sshd, &key, &format!("bash {own} type -t checkout")),
        "function\n"
    );
    let stored = ssh_ok(&sshd, &key, &format!("bash {own} cache store jp-note note"));
    assert!(
        stored.contains("\nUploading 'note' with cache key 'jp-note'...\n"),
        "{stored}"
    );
    // A shell on a terminal, and one reading its commands from stdin.
    assert_interactive_probe(&sshd, &key, &jump_point, "jp-note", None);
    let piped = format!(
        "printf '%s\\n' {} | bash {own}",
        shell_quote(probe_line("jp-note").trim_end())
    );
    assert_eq!(ssh_ok(&sshd, &key, &piped), format!("{PROBE_ANSWER}\n"));

    fs::write(home.join("release"), "").expect("release the job");
    let events = tear_down(&agent, &job.job_id);
    let normalized = normalize(&events);
    assert_eq!(
        normalized.last(),
        Some(&Ev::JobFinished("passed".to_owned())),
        "{normalized:#?}"
    );
    let restored = normalized
        .iter()
        .skip_while(|ev| **ev != Ev::CmdStarted(restore.to_owned()))
        .find_map(|ev| match ev {
            Ev::Output(text) => Some(text.clone()),
            _ => None,
        })
        .unwrap_or_default();
    assert!(
        restored.starts_with("HIT: 'jp-note', using key 'jp-note'.\n")
            && restored.ends_with("from the jump point\n"),
        "the job did not restore what its jump point stored: {restored:?}"
    );
    assert_key_refused(&sshd, &key);
    files.assert_restored();
}

#[test]
fn a_compose_job_s_jump_point_has_cache_and_checkout() {
    if !sshd::available() || !docker::ready() {
        return;
    }
    let agent = TestAgent::builder()
        .stop_grace_period(2)
        .arg("--cache-static-binary")
        .arg(static_agent().to_str().expect("a UTF-8 path"))
        .start();
    let (files, sshd, key) = sshd_for(&agent, "compose-tools");

    let job = Job::new("sshc-tools").command(SLEEP);
    let mut request = with_keys(&job, &[&key]);
    request["executor"] = json!("dockercompose");
    request["compose"] = json!({ "containers": [{ "name": "main", "image": BASH_IMAGE }] });
    let project = ProjectWatch::new(&format!("agent-{}-", job.job_id.to_lowercase()));
    agent.submit_ok(&request);
    agent.wait_for_event(&job.job_id, COMPOSE_TIMEOUT, |e| {
        e["event"] == "cmd_started" && e["directive"] == SLEEP
    });
    let jump_point = super::jump_point_of(&job.job_id);
    let own = shell_quote(&jump_point);

    let through = |remote: &str| {
        let out = ssh_ok(&sshd, &key, &format!("bash {own} {remote}"));
        without_waiting_preamble(&out).to_owned()
    };
    assert_eq!(through("type -t checkout"), "function\n");
    let store = shell_quote("printf 'in main\\n' > /tmp/n && cache store jp-main /tmp/n");
    let stored = through(&format!("bash -c {store}"));
    assert!(
        stored.contains("\nUploading '/tmp/n' with cache key 'jp-main'...\n"),
        "{stored}"
    );
    assert!(
        agent.root().join("data/cache/jp-main").is_file(),
        "the key stored in main is not in the agent's cache"
    );
    // `docker exec -ti ... bash --login`: the container user's profile
    // reads the job's env and setup. The line is typed at once: what is
    // typed while the jump point checks that main is up reaches the shell.
    assert_interactive_probe(&sshd, &key, &jump_point, "jp-main", None);

    stop_compose_job(&agent, &job.job_id);
    project.assert_gone();
    assert_key_refused(&sshd, &key);
    files.assert_restored();
}
