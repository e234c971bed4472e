//! The Docker gate benchmark: the docker CLI in a compose job's main
//! container, through the job's gate, against the same CLI in a container
//! given the engine's own socket. It runs only where a compose tool and
//! the image `agent-test/dind:1` are.
//!
//! One script does the work in both places and prints what it measured
//! inside (so neither side counts a container start): `docker ps` 50 times
//! (each call's wall time), a `docker run` printing 200 MB (read to the
//! end), and a `docker build` of a 200 MB context (sent whole; the
//! Dockerfile uses none of it).

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::measure::{measure_ok, measure_output, Budget};
use crate::report::{fmt_duration, fmt_duration_fine, median, ratio, Failure, Row};
use crate::server::{wait_finished, Serve};
use crate::support::docker::{BASH_IMAGE, DIND_IMAGE};

/// Target: added latency of one API call through the gate.
const LATENCY_TARGET_MS: f64 = 2.0;
/// Target: a stream through the gate against the direct socket.
const STREAM_TARGET: f64 = 1.1;
/// How many `docker ps` calls each side makes.
const N_PS: usize = 50;
/// How much the `docker run` prints and the build context holds.
const BYTES: u64 = 200_000_000;
/// How long one job may take (two 200 MB transfers and 50 calls).
const JOB_TIMEOUT: Duration = Duration::from_secs(300);
/// The runs of each side; the budget may stop them earlier.
const RUNS: usize = 2;

/// The measuring script, one line (a job's command), for `tag`.
fn script(tag: &str) -> String {
    format!(
        "set -e; export DOCKER_BUILDKIT=0; ns() {{ date +%s%N; }}; \
         docker ps >/dev/null; \
         for i in $(seq {N_PS}); do s=$(ns); docker ps >/dev/null; echo \"ps $(( $(ns) - s ))\"; done; \
         s=$(ns); n=$(docker run --rm {BASH_IMAGE} head -c {BYTES} /dev/zero | wc -c); echo \"run $(( $(ns) - s )) $n\"; \
         mkdir -p /tmp/ctx-{tag}; head -c {BYTES} /dev/urandom >/tmp/ctx-{tag}/blob; \
         printf 'FROM {BASH_IMAGE}\\nLABEL bench={tag}\\n' >/tmp/ctx-{tag}/Dockerfile; \
         s=$(ns); docker build -q -t gate-bench-{tag} /tmp/ctx-{tag} >/dev/null; echo \"build $(( $(ns) - s ))\"; \
         docker rmi gate-bench-{tag} >/dev/null; rm -rf /tmp/ctx-{tag}"
    )
}

/// What one side measured.
#[derive(Default)]
struct Figures {
    ps: Vec<Duration>,
    run: Vec<Duration>,
    build: Vec<Duration>,
}

impl Figures {
    fn parse(&mut self, output: &str) -> Result<(), Failure> {
        let mut ps = 0;
        let mut found = (false, false);
        for line in output.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let nanos = |w: Option<&&str>| -> Result<Duration, Failure> {
                w.and_then(|w| w.parse().ok())
                    .map(Duration::from_nanos)
                    .ok_or_else(|| Failure::new(format!("a line not understood: {line:?}")))
            };
            match words.first() {
                Some(&"ps") => {
                    self.ps.push(nanos(words.get(1))?);
                    ps += 1;
                }
                Some(&"run") => {
                    if words.get(2) != Some(&BYTES.to_string().as_str()) {
                        return Err(Failure::new(format!("docker run printed {line:?}")));
                    }
                    self.run.push(nanos(words.get(1))?);
                    found.0 = true;
                }
                Some(&"build") => {
                    self.build.push(nanos(words.get(1))?);
                    found.1 = true;
                }
                _ => {}
            }
        }
        if ps != N_PS || found != (true, true) {
            return Err(Failure::new(format!(
                "the script's output is incomplete:\n{output}"
            )));
        }
        Ok(())
    }
}

pub fn bench_gate() -> Result<Vec<Row>, Failure> {
    let has = |image: &str| {
        let mut cmd = Command::new("docker");
        cmd.args(["image", "inspect", image]).stdout(Stdio::null());
        cmd.stderr(Stdio::null());
        measure_ok("docker image inspect", cmd).is_ok()
    };
    if !has(DIND_IMAGE) || !has(BASH_IMAGE) {
        println!("  SKIPPED: no image {DIND_IMAGE} (tests/docker/images.sh dind builds it)");
        return Ok(vec![Row::skipped("docker gate")]);
    }
    println!(
        "  in main ({DIND_IMAGE}): {N_PS} x `docker ps`, `docker run` printing {BYTES} bytes, `docker build` of a {BYTES}-byte context"
    );
    println!(
        "  baseline: the same script in `docker run -v /var/run/docker.sock:...` of the image"
    );
    let serve = Serve::for_jobs()?;
    let client = serve.client();
    let (mut gate, mut direct) = (Figures::default(), Figures::default());
    let budget = Budget::start();
    for run in 1..=RUNS {
        if !budget.allows_run(run) {
            break;
        }
        let tag = format!("{}-{run}", std::process::id());
        let mut docker = Command::new("docker");
        docker
            .args([
                "run",
                "--rm",
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
                DIND_IMAGE,
                "bash",
                "-c",
                &script(&format!("direct-{tag}")),
            ])
            .stderr(Stdio::null());
        let (_, output) = measure_output("docker run", docker, &serve.root().join("out"))?;
        direct.parse(&output)?;

        let job_id = format!("gate-{run}");
        let command = script(&format!("gate-{tag}"));
        let job = json!({
            "job_id": job_id,
            "executor": "dockercompose",
            "compose": { "containers": [{ "name": "main", "image": DIND_IMAGE }] },
            "commands": [{ "directive": command }],
        });
        serve.post_job(&job)?;
        wait_finished(client, &job_id, Duration::from_millis(100), JOB_TIMEOUT)?;
        let mut output = String::new();
        serve.passed_log(&job_id, |directive, text| {
            if directive == command {
                output.push_str(text);
            }
        })?;
        gate.parse(&output).map_err(|e| serve.failed(e))?;
        println!(
            "  run {run}: docker ps median: direct {}, gate {}; run: direct {}, gate {}; build: direct {}, gate {}",
            fmt_duration_fine(median(&direct.ps)),
            fmt_duration_fine(median(&gate.ps)),
            fmt_duration(*direct.run.last().unwrap_or(&Duration::ZERO)),
            fmt_duration(*gate.run.last().unwrap_or(&Duration::ZERO)),
            fmt_duration(*direct.build.last().unwrap_or(&Duration::ZERO)),
            fmt_duration(*gate.build.last().unwrap_or(&Duration::ZERO)),
        );
    }
    let (ps_gate, ps_direct) = (median(&gate.ps), median(&direct.ps));
    let latency = Row::at_most(
        "docker gate: added latency per call",
        Some((ps_gate, ps_direct)),
        (ps_gate.as_secs_f64() - ps_direct.as_secs_f64()) * 1000.0,
        LATENCY_TARGET_MS,
        "ms",
        2,
    );
    let stream = |check: &str, gate: &[Duration], direct: &[Duration]| {
        let (g, d) = (median(gate), median(direct));
        Row::at_most(check, Some((g, d)), ratio(g, d), STREAM_TARGET, "x", 2)
    };
    let run = stream("docker gate: run printing 200 MB", &gate.run, &direct.run);
    let build = stream(
        "docker gate: build of a 200 MB context",
        &gate.build,
        &direct.build,
    );
    for row in [&latency, &run, &build] {
        println!(
            "  {}: {}   target {}   {}",
            row.check, row.figure, row.target, row.outcome
        );
    }
    Ok(vec![latency, run, build])
}
