//! The Docker gate (README "Docker in compose jobs"): the real docker CLI in
//! main, through its job's gate, against the real engine. What a CI job
//! does with docker works; every way out to the host or into another job
//! is refused with the gate's message; and nothing the job created through
//! the gate is left after it.

use super::*;

/// A shell function, defined by a job's first command, that runs a docker
/// command which must be refused and prints the gate's reason.
const REFUSED_FN: &str = "refused() { out=$(\"$@\" 2>&1); case $out in *'agent docker gate: '*) printf '%s\\n' \"${out#*agent docker gate: }\" | head -n 1;; *) printf 'NOT REFUSED: %s\\n' \"$out\"; return 1;; esac; }";

/// The docker CLI in main uses the classic builder: it has no buildx.
const NO_BUILDKIT: &str = "export DOCKER_BUILDKIT=0";

/// The log of a job `agent serve` ran, for its steps.
fn served_outcome(job_id: &str, events: Vec<Value>) -> Outcome {
    Outcome {
        job_id: job_id.to_string(),
        lines: Vec::new(),
        events,
        status: std::process::ExitStatus::default(),
        stderr: String::new(),
    }
}

fn assert_no_gate_objects(job_id: &str) {
    let left = docker::gate_objects_of(job_id);
    assert!(left.is_empty(), "the gate of {job_id} left {left:#?}");
}

/// Checks that each `(command, rule)` step ran, passed and printed the rule.
fn assert_refusals(outcome: &Outcome, refusals: &[(String, &str)]) {
    for (command, rule) in refusals {
        let step = outcome.step(command);
        assert_eq!(
            (step.exit_code, step.output().trim_end()),
            (0, *rule),
            "{command}\n{}",
            outcome.render()
        );
    }
}

#[test]
fn the_gate_refuses_what_would_reach_the_host() {
    if !docker::ready() {
        return;
    }
    let sandbox = Sandbox::new();
    let data_dir = sandbox.data_dir();
    let data_dir = data_dir.display();
    let run = format!("docker run --rm {BASH_IMAGE}");
    let run_with = |flags: &str| format!("refused docker run --rm {flags} {BASH_IMAGE} true");
    let data_dir_rule =
        format!("bind mounts of host paths outside the job's directory ({data_dir})");
    let refusals: Vec<(String, &str)> = vec![
        (run_with(&format!("-v {data_dir}:/stolen")), &data_dir_rule),
        (
            run_with("-v /:/host"),
            "bind mounts of host paths outside the job's directory (/)",
        ),
        (
            run_with("--mount type=bind,source=/etc,target=/e,readonly"),
            "bind mounts of host paths outside the job's directory (/etc)",
        ),
        (run_with("--privileged"), "privileged containers"),
        (run_with("--pid host"), "the host's pid namespace"),
        (run_with("--net host"), "the host's network namespace"),
        (run_with("--ipc host"), "the host's ipc namespace"),
        (
            run_with("--cap-add SYS_ADMIN"),
            "added capabilities (CAP_SYS_ADMIN)",
        ),
        (run_with("--device /dev/sda"), "devices (/dev/sda)"),
        (
            run_with("--security-opt seccomp=unconfined"),
            "the security option seccomp=unconfined",
        ),
        (
            run_with("--security-opt apparmor=unconfined"),
            "the security option apparmor=unconfined",
        ),
        (
            "refused docker volume create -o device=/ -o o=bind -o type=none hostroot".into(),
            "volumes backed by a host device or path (device, o=bind)",
        ),
        (
            "refused docker network create -d macvlan mac".into(),
            "networks with the driver \"macvlan\"",
        ),
        (
            "refused docker network inspect bridge".into(),
            "network bridge was not created by this job",
        ),
        (
            "refused docker swarm init".into(),
            "swarm: swarm and plugins are engine-wide",
        ),
        (
            "refused docker system prune -f".into(),
            "pruning containers",
        ),
        (
            "refused docker image prune -a -f".into(),
            "pruning images or the build cache of the whole engine",
        ),
        (
            format!("refused docker exec --privileged $(docker run -d {BASH_IMAGE} sleep 60) true"),
            "privileged execs",
        ),
    ];
    let mut job = ComposeJob::new("gate-host", Container::new("main", DIND_IMAGE))
        .command(REFUSED_FN)
        // What is allowed still works in the same job.
        .command(&format!("{run} echo allowed"));
    for (command, _) in &refusals {
        job = job.command(command);
    }
    let outcome = job.run_in(&sandbox);
    assert_eq!(outcome.result(), "passed", "{}", outcome.render());
    assert_eq!(
        outcome.step(&format!("{run} echo allowed")).output(),
        "allowed\n"
    );
    assert_refusals(&outcome, &refusals);
    assert_no_gate_objects(job.job_id());
}

#[test]
fn the_gate_keeps_concurrent_jobs_apart() {
    if !docker::ready() {
        return;
    }
    let rendezvous = tempfile::tempdir().expect("a rendezvous directory");
    let agent = TestAgent::builder()
        .jobs(2)
        .stop_grace_period(2)
        .arg("--files")
        .arg(&format!("{}:/rendezvous", rendezvous.path().display()))
        .start();
    let tag = unique_tag("gate-apart");
    let victim = format!("victim-{tag}");
    let secret = "secret-of-the-victim-456";
    let victim_check = format!(
        "docker ps --format '{{{{.Names}}}}' | sed 's/^agent-.*-main$/main/'; docker inspect -f '{{{{.State.Running}}}}' {victim}"
    );
    // The victim's job: a container with a secret in its environment, its
    // id and name left for the prying job, held until that one is done.
    let victim_job = ComposeJob::new("gate-victim", Container::new("main", DIND_IMAGE))
        // The id is written last: the prying job starts when it is there.
        .command(&format!("docker network create net-victim-{tag} >/dev/null"))
        .command(&format!(
            "docker run -d --name {victim} -e SECRET={secret} {BASH_IMAGE} sleep 1000 >/tmp/id && cp /tmp/id /rendezvous/victim-id"
        ))
        // A container made while the prying job listens to the events.
        .command(&retry("[ -e /rendezvous/listening ]"))
        .command(&format!(
            "docker run --rm --name {victim}-2 {BASH_IMAGE} true && touch /rendezvous/victim-2"
        ))
        .command(&retry("[ -e /rendezvous/done ]"))
        .command(&victim_check);
    let id = "$(cat /rendezvous/victim-id)";
    let not_ours = format!("container {victim} was not created by this job");
    let not_ours_id = "container $(cat /rendezvous/victim-id) was not created by this job";
    let probes: Vec<(String, String)> = vec![
        (format!("refused docker inspect {victim}"), not_ours.clone()),
        (
            format!("refused docker exec {victim} env"),
            not_ours.clone(),
        ),
        (format!("refused docker logs {victim}"), not_ours.clone()),
        (format!("refused docker stop {victim}"), not_ours.clone()),
        (format!("refused docker inspect {id}"), not_ours_id.into()),
        (format!("refused docker exec {id} env"), not_ours_id.into()),
        (format!("refused docker logs {id}"), not_ours_id.into()),
        (format!("refused docker kill {id}"), not_ours_id.into()),
        (
            format!("refused docker run --rm --volumes-from {victim} {BASH_IMAGE} true"),
            not_ours.clone(),
        ),
        (
            format!("refused docker run --rm --network container:{victim} {BASH_IMAGE} true"),
            not_ours.clone(),
        ),
        (
            format!("refused docker network connect net-victim-{tag} {victim}"),
            format!("network net-victim-{tag} was not created by this job"),
        ),
    ];
    let copy = format!(
        "refused docker cp {victim}:/etc/passwd /tmp/stolen >/dev/null; test -e /tmp/stolen || echo nothing copied"
    );
    let mine = format!("mine-{tag}");
    // The job's own main container is listed too, under its project's name.
    let lists = "docker ps -a --format '{{.Names}}' | sed 's/^agent-.*-main$/main/'; docker network ls --format '{{.Name}}'".to_string();
    let mut prying = ComposeJob::new("gate-prying", Container::new("main", DIND_IMAGE))
        .command(REFUSED_FN)
        .command(&retry("[ -s /rendezvous/victim-id ]"))
        .command(&format!(
            "docker create --name {mine} {BASH_IMAGE} true >/dev/null && docker network create net-mine-{tag} >/dev/null"
        ));
    for (command, _) in &probes {
        prying = prying.command(command);
    }
    // The events: a listener started (and seen to get this job's own
    // events) before the victim makes a container, stopped once this job's
    // next container has been seen after it. (The engine keeps only its
    // last 256 events for `--since`, which a busy engine overruns.)
    let seen = |name: &str| format!("grep -q \"^{name} create\" /tmp/events");
    // The listener's subscription starts some time after its request: a
    // container is made every tenth of a second until one is seen.
    let listen = format!(
        "(docker events --filter type=container --format '{{{{.Actor.Attributes.name}}}} {{{{.Action}}}}' >/tmp/events 2>&1 & echo $! >/tmp/events.pid); for i in $(seq 300); do docker create --name probe-{tag}-$i {BASH_IMAGE} true >/dev/null; {} && break; sleep 0.1; done; touch /rendezvous/listening",
        seen(&format!("probe-{tag}-$i"))
    );
    let events = format!(
        "{}; docker create --name after-{tag} {BASH_IMAGE} true >/dev/null; {}; kill $(cat /tmp/events.pid); grep ' create$' /tmp/events | cut -d' ' -f1",
        retry("[ -e /rendezvous/victim-2 ]"),
        retry(&seen(&format!("after-{tag}")))
    );
    let prying = prying
        .command(&copy)
        .command(&lists)
        .command(&listen)
        .command(&events)
        .always("touch /rendezvous/done");
    agent.submit_ok(&victim_job.to_value());
    agent.submit_ok(&prying.to_value());

    let prying_events = wait_for_compose_job(&agent, prying.job_id());
    let victim_events = wait_for_compose_job(&agent, victim_job.job_id());
    let prying_out = served_outcome(prying.job_id(), prying_events);
    let victim_out = served_outcome(victim_job.job_id(), victim_events);
    assert_eq!(prying_out.result(), "passed", "{:#?}", prying_out.steps());
    let victim_id =
        fs::read_to_string(rendezvous.path().join("victim-id")).expect("the victim's id");
    for (command, rule) in &probes {
        let rule = rule.replace("$(cat /rendezvous/victim-id)", victim_id.trim());
        let step = prying_out.step(command);
        assert_eq!(
            (step.exit_code, step.output().trim_end()),
            (0, rule.as_str()),
            "{command}"
        );
    }
    assert_eq!(prying_out.step(&copy).output(), "nothing copied\n");
    assert_eq!(
        prying_out.step(&lists).output(),
        format!("{mine}\nmain\nnet-mine-{tag}\n"),
        "the prying job sees only its own objects"
    );
    let seen_events = prying_out.step(&events).output();
    let (probes, after) = seen_events
        .trim_end()
        .rsplit_once('\n')
        .expect("a probe and the last container");
    assert_eq!(after, format!("after-{tag}"), "{seen_events}");
    assert!(
        probes
            .lines()
            .all(|name| name.starts_with(&format!("probe-{tag}-"))),
        "the prying job's events show only its own containers: {seen_events}"
    );
    // The victim's container lived through it all, and its secret never
    // reached the prying job's log.
    assert_eq!(victim_out.result(), "passed", "{:#?}", victim_out.steps());
    assert_eq!(
        victim_out.step(&victim_check).output(),
        format!("{victim}\nmain\ntrue\n")
    );
    let all_output: String = prying_out.steps().iter().map(|s| s.output()).collect();
    assert!(!all_output.contains(secret), "{all_output}");
    assert_no_job_processes(prying.job_id());
    assert_no_job_processes(victim_job.job_id());
    assert_no_gate_objects(prying.job_id());
    assert_no_gate_objects(victim_job.job_id());
}

#[test]
fn docker_in_docker_works_through_the_gate() {
    if !docker::ready() {
        return;
    }
    let registry = Registry::start();
    let tag = unique_tag("gate-works");
    let image = format!("{}/gate/{tag}:1", registry.addr);
    let _cleanup = ImageTag(image.clone());
    let build = format!(
        "{NO_BUILDKIT}; mkdir -p /tmp/ctx && printf 'FROM {BASH_IMAGE}\\nRUN echo built-in-{tag} >/built\\n' >/tmp/ctx/Dockerfile && if docker build -t {image} /tmp/ctx >/tmp/build.log 2>&1; then echo built; else cat /tmp/build.log; fi"
    );
    let login = format!(
        "echo {REGISTRY_PASSWORD} | docker login -u {REGISTRY_USER} --password-stdin {} >/dev/null 2>&1 && echo logged-in",
        registry.addr
    );
    let push =
        format!("docker push {image} >/dev/null && docker rmi {image} >/dev/null && echo pushed");
    let pull_run =
        format!("docker pull -q {image} >/dev/null && docker run --rm {image} cat /built");
    let tty = format!("docker run --rm -t {BASH_IMAGE} echo with-a-tty");
    let exec = format!(
        "docker run -d --name ex-{tag} {BASH_IMAGE} sleep 1000 >/dev/null && docker exec ex-{tag} echo exec-ok && docker exec -i ex-{tag} cat <<<stdin-ok"
    );
    let logs = format!(
        "docker run -d --name lg-{tag} {BASH_IMAGE} sh -c 'for i in 1 2 3; do echo line$i; sleep 0.2; done' >/dev/null && docker logs -f lg-{tag}"
    );
    let volume = format!(
        "docker volume create shared-{tag} >/dev/null && docker run --rm -v shared-{tag}:/s {BASH_IMAGE} sh -c 'echo shared-ok >/s/f' && docker run --rm -v shared-{tag}:/s:ro {BASH_IMAGE} cat /s/f"
    );
    let auto_volume = format!(
        "docker run --rm -v auto-{tag}:/a {BASH_IMAGE} true && docker volume inspect -f '{{{{index .Labels \"agent.job\"}}}}' auto-{tag} | grep -c ."
    );
    let network = format!(
        "docker network create net-{tag} >/dev/null && docker run -d --name srv-{tag} --network net-{tag} {BASH_IMAGE} sh -c 'echo from-srv | nc -l -p 7000' >/dev/null && docker run --rm --network net-{tag} {BASH_IMAGE} sh -c 'for i in $(seq 50); do nc srv-{tag} 7000 </dev/null 2>/dev/null && break; sleep 0.1; done'"
    );
    let lists = "docker ps -a --format '{{.Names}}' | sed 's/^agent-.*-main$/main/' | sort | tr '\\n' ' '; echo".to_string();
    // A container of the job's on its compose project's network, and a
    // network of the job's that main joins: neither may keep the other's
    // owner from removing its network after the job.
    let joined = format!(
        "net=$(docker inspect -f '{{{{range $k, $v := .NetworkSettings.Networks}}}}{{{{$k}}}}{{{{end}}}}' $HOSTNAME) && docker run -d --network \"$net\" {BASH_IMAGE} sleep 1000 >/dev/null && docker network create joined-{tag} >/dev/null && docker network connect joined-{tag} $HOSTNAME && echo joined"
    );
    let job = ComposeJob::new("gate-works", Container::new("main", DIND_IMAGE))
        .command(&build)
        .command(&login)
        .command(&push)
        .command(&pull_run)
        .command(&tty)
        .command(&exec)
        .command(&logs)
        .command(&volume)
        .command(&auto_volume)
        .command(&network)
        .command(&lists)
        .command(&joined);
    let outcome = job.run();
    assert_eq!(outcome.result(), "passed", "{}", outcome.render());
    let expect = [
        (&build, "built\n".to_string()),
        (&login, "logged-in\n".into()),
        (&push, "pushed\n".into()),
        (&pull_run, format!("built-in-{tag}\n")),
        (&tty, "with-a-tty\n".into()),
        (&exec, "exec-ok\nstdin-ok\n".into()),
        (&logs, "line1\nline2\nline3\n".into()),
        (&volume, "shared-ok\n".into()),
        (&auto_volume, "1\n".into()),
        (&network, "from-srv\n".into()),
        (&lists, format!("ex-{tag} lg-{tag} main srv-{tag} \n")),
        (&joined, "joined\n".into()),
    ];
    for (command, output) in expect {
        assert_eq!(&outcome.step(command).output(), &output, "{command}");
    }
    assert_no_gate_objects(job.job_id());
}

#[test]
fn docker_socket_none_mounts_nothing() {
    if !docker::ready() {
        return;
    }
    let agent = TestAgent::builder()
        .arg("--docker-socket")
        .arg("none")
        .start();
    let check = "test -e /var/run/docker.sock && echo mounted || echo nothing";
    let job = ComposeJob::new("gate-none", Container::new("main", DIND_IMAGE)).command(check);
    let watch = ProjectWatch::new(&job.project_prefix());
    agent.submit_ok(&job.to_value());
    let outcome = served_outcome(job.job_id(), wait_for_compose_job(&agent, job.job_id()));
    assert_eq!(outcome.step(check).output(), "nothing\n");
    watch.assert_gone();
}

#[test]
fn docker_compose_runs_its_own_project_in_main() {
    if !docker::ready() {
        return;
    }
    let tag = unique_tag("gate-compose");
    let file = format!(
        "services:\n  srv:\n    image: {BASH_IMAGE}\n    command: sh -c 'while true; do echo from-srv | nc -l -p 7000; done'\n    volumes: [data:/data]\n  cli:\n    image: {BASH_IMAGE}\n    command: sh -c 'for i in $$(seq 50); do nc srv 7000 </dev/null 2>/dev/null && break; sleep 0.1; done; cat /data/hello'\n    volumes: [data:/data]\n    depends_on: [srv]\nvolumes:\n  data: {{}}\n"
    );
    let quietly = |command: &str, word: &str| {
        format!("out=$({command} 2>&1) && echo {word} || {{ echo \"$out\"; false; }}")
    };
    let up = quietly("docker-compose up -d srv", "up");
    let seed = "docker-compose exec -T srv sh -c 'echo via-volume >/data/hello'".to_string();
    let run = "docker-compose run --rm -T cli 2>/dev/null".to_string();
    let ps = "docker-compose ps -q | wc -l".to_string();
    let lists = "docker ps --format '{{.Label \"com.docker.compose.service\"}}'; docker volume ls -q | grep -c _data"
        .to_string();
    let job = ComposeJob::new(
        "gate-compose",
        Container::new("main", docker::COMPOSE_IMAGE),
    )
    .env("COMPOSE_PROJECT_NAME", &tag)
    .file("app/docker-compose.yml", file, "0644")
    .command("cd app")
    .command(&up)
    .command(&seed)
    .command(&run)
    .command(&ps)
    .command(&lists);
    // The project is left up: the gate removes it after the job.
    let outcome = job.run();
    assert_eq!(outcome.result(), "passed", "{}", outcome.render());
    for (command, output) in [
        (&up, "up\n"),
        (&seed, ""),
        (&run, "from-srv\nvia-volume\n"),
        (&ps, "1\n"),
        (&lists, "srv\nmain\n1\n"),
    ] {
        assert_eq!(outcome.step(command).output(), output, "{command}");
    }
    assert_no_gate_objects(job.job_id());
}
