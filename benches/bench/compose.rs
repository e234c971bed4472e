//! The docker-compose executor benchmark: per-command overhead inside the
//! job's container and job start, against the docker tools doing the same
//! work directly. It runs only where a compose tool and the test image are.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::events::count_ok_steps;
use crate::measure::{measure, measure_ok, measure_output, Budget};
use crate::report::{fmt_duration, median, Failure, Row};
use crate::serve::{parse_stamps, since, span, STAMP};
use crate::server::{wait_finished, Serve};
use crate::support::docker::BASH_IMAGE;
use crate::throughput::N_COMMANDS;
use crate::RUNS;

/// The image of the compose benchmark (tests/docker/images.sh builds it).
const COMPOSE_IMAGE: &str = BASH_IMAGE;

/// Target: agent overhead per command inside a compose job's container.
const COMPOSE_OVERHEAD_TARGET_MS: f64 = 2.0;

/// Target: how much later than a bare `compose run` the first command runs.
const COMPOSE_START_TARGET_MS: f64 = 500.0;

/// How long one compose job may take (it includes `compose down`).
const COMPOSE_JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The docker-compose executor, when this host can run it: per-command
/// overhead inside the container and job start, against the same work
/// done with the docker tools directly.
///
/// Per command: the job runs `STAMP`, 1000 `true`, `STAMP` in main; the
/// baseline is `docker run --rm <image> bash -c` of the same lines. Both
/// take the time between the two stamps, so neither counts its start-up
/// (the brief's "minus an empty script", measured inside). Job start: POST
/// to the first stamp, against the wall time of a bare
/// `compose -p <new project> -f <file> run --rm main true` of the same
/// image and file, taken in the same run.
pub fn bench_compose() -> Result<Vec<Row>, Failure> {
    let tool = match compose_tool() {
        Ok(tool) => tool,
        Err(reason) => {
            println!("  SKIPPED: {reason}");
            return Ok(vec![Row::skipped("docker compose executor")]);
        }
    };
    let tool_text = tool.join(" ");
    println!(
        "  job: dockercompose, main {COMPOSE_IMAGE}: `{STAMP}`, {N_COMMANDS} x `true`, `{STAMP}`"
    );
    println!("  baselines: `docker run --rm {COMPOSE_IMAGE} bash -c` of the same lines; `{tool_text} run --rm main true`");
    let serve = Serve::for_jobs()?;
    let client = serve.client();
    let compose_file = serve.root().join("docker-compose.yml");
    let file_text = json!({
        "version": "2.0",
        "services": { "main": { "image": COMPOSE_IMAGE } },
    });
    fs::write(&compose_file, file_text.to_string())
        .map_err(|e| Failure::io("write compose file", e))?;
    let mut lines = vec![STAMP.to_owned()];
    lines.extend((0..N_COMMANDS).map(|_| "true".to_owned()));
    lines.push(STAMP.to_owned());
    let commands: Vec<Value> = lines.iter().map(|l| json!({ "directive": l })).collect();
    let script = lines.join("\n");

    let mut base_cmds = Vec::new();
    let mut agent_cmds = Vec::new();
    let mut base_starts = Vec::new();
    let mut agent_starts = Vec::new();
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let project = format!("agent-bench-{}-{run}", std::process::id());
        let compose = |args: &[&str]| {
            let mut cmd = Command::new(&tool[0]);
            cmd.args(&tool[1..])
                .args(["--ansi", "never", "-p", &project, "-f"])
                .arg(&compose_file)
                .args(args)
                .stderr(Stdio::null());
            cmd
        };
        let base_start = measure_ok("compose run", compose(&["run", "--rm", "main", "true"]));
        // The project's network goes whether or not the run worked.
        let down = measure(compose(&["down", "--remove-orphans", "-t", "1"]), false);
        let base_start = base_start?.wall;
        if !down.is_ok_and(|d| d.exit.is_success()) {
            println!("  (compose down of {project} failed)");
        }

        let mut docker = Command::new("docker");
        docker
            .args(["run", "--rm", COMPOSE_IMAGE, "bash", "-c", &script])
            .stderr(Stdio::null());
        let (_, output) = measure_output("docker run", docker, &serve.root().join("out"))?;
        let base_stamps = parse_stamps(&output)?;
        let base_cmd = span(&base_stamps)?;

        let job_id = format!("compose-{run}");
        let job = json!({
            "job_id": job_id,
            "executor": "dockercompose",
            "compose": { "containers": [{ "name": "main", "image": COMPOSE_IMAGE }] },
            "commands": commands,
        });
        let posted_at = SystemTime::now();
        let posted = Instant::now();
        serve.post_job(&job)?;
        let finished = wait_finished(
            client,
            &job_id,
            Duration::from_millis(50),
            COMPOSE_JOB_TIMEOUT,
        )?;
        let mut output = String::new();
        let summary = serve.passed_log(&job_id, |directive, text| {
            if directive == STAMP {
                output.push_str(text);
            }
        })?;
        let n_true = count_ok_steps(&summary, "true");
        if n_true != N_COMMANDS || count_ok_steps(&summary, STAMP) != 2 {
            return Err(serve.failed(Failure::new(format!(
                "job {job_id}: {n_true} successful `true` steps (expected {N_COMMANDS}) and {} of `{STAMP}` (expected 2)",
                count_ok_steps(&summary, STAMP)
            ))));
        }
        let stamps = parse_stamps(&output).map_err(|e| serve.failed(e))?;
        let agent_cmd = span(&stamps).map_err(|e| serve.failed(e))?;
        let agent_start = since(posted_at, stamps[0]).map_err(|e| serve.failed(e))?;
        // When the log showed job_finished, on the wall clock.
        let finished_at = posted_at + (finished.at - posted);
        let tail = since(stamps[1], finished_at).unwrap_or_default();
        println!(
            "  run {run}: start: compose run {}, agent POST to 1st cmd {}; {N_COMMANDS} cmds: docker run {}, agent {}; agent last cmd to job_finished {}",
            fmt_duration(base_start),
            fmt_duration(agent_start),
            fmt_duration(base_cmd),
            fmt_duration(agent_cmd),
            fmt_duration(tail),
        );
        base_starts.push(base_start);
        agent_starts.push(agent_start);
        base_cmds.push(base_cmd);
        agent_cmds.push(agent_cmd);
    }

    let (base_cmd, agent_cmd) = (median(&base_cmds), median(&agent_cmds));
    let (base_start, agent_start) = (median(&base_starts), median(&agent_starts));
    let overhead = Row::at_most(
        "compose per-command overhead",
        Some((agent_cmd, base_cmd)),
        (agent_cmd.as_secs_f64() - base_cmd.as_secs_f64()) * 1000.0 / N_COMMANDS as f64,
        COMPOSE_OVERHEAD_TARGET_MS,
        "ms/cmd",
        3,
    );
    let start = Row::at_most(
        "compose job start (extra over run)",
        Some((agent_start, base_start)),
        (agent_start.as_secs_f64() - base_start.as_secs_f64()) * 1000.0,
        COMPOSE_START_TARGET_MS,
        "ms",
        0,
    );
    println!(
        "  per command: ({} - {}) / {N_COMMANDS} = {}   target {}   {}",
        fmt_duration(agent_cmd),
        fmt_duration(base_cmd),
        overhead.figure,
        overhead.target,
        overhead.outcome
    );
    println!(
        "  job start: {} - {} = {}   target {}   {}",
        fmt_duration(agent_start),
        fmt_duration(base_start),
        start.figure,
        start.target,
        start.outcome
    );
    Ok(vec![overhead, start])
}

/// The compose command line to use, or why the compose benchmark cannot run.
fn compose_tool() -> Result<Vec<String>, String> {
    let works = |argv: &[&str]| {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]).stderr(Stdio::null());
        measure_ok(argv[0], cmd).is_ok()
    };
    let tool: &[&str] = if works(&["docker", "compose", "version"]) {
        &["docker", "compose"]
    } else if works(&["docker-compose", "version"]) {
        &["docker-compose"]
    } else {
        return Err("neither `docker compose version` nor `docker-compose version` works".into());
    };
    if !works(&["docker", "image", "inspect", COMPOSE_IMAGE]) {
        return Err(format!(
            "no image {COMPOSE_IMAGE} (tests/docker/images.sh bash builds it)"
        ));
    }
    Ok(tool.iter().map(|s| (*s).to_owned()).collect())
}
