//! StatsD metrics (docs/protocol.md §10) with the watchman naming convention:
//! `tagged.<namespace>.<tag1>.<tag2>.<tag3>.<name>`, missing tags `no_tag`.
//! Sent over UDP only when host and port are configured; a send never
//! blocks or fails a job (UDP, resolved once at start-up).

use std::time::Duration;

use crate::job::eventlog::JobResult;

pub struct Metrics {
    client: statsd::Client,
    namespace: String,
}

/// Every run of characters outside `[a-zA-Z0-9-_]` becomes one `_`.
pub fn clean_tag(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len());
    let mut in_run = false;
    for c in tag.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('_');
            in_run = true;
        }
    }
    out
}

/// The full metric name; more than three tags is refused.
pub fn metric_name(namespace: &str, tags: &[&str], name: &str) -> Option<String> {
    if tags.len() > 3 {
        return None;
    }
    let mut parts = vec!["tagged".to_string(), namespace.to_string()];
    for i in 0..3 {
        parts.push(
            tags.get(i)
                .map(|t| clean_tag(t))
                .unwrap_or_else(|| "no_tag".into()),
        );
    }
    parts.push(name.to_string());
    Some(parts.join("."))
}

impl Metrics {
    pub fn new(host: &str, port: u16, namespace: &str) -> Result<Metrics, String> {
        let client = statsd::Client::new((host, port), "")
            .map_err(|e| format!("cannot set up StatsD at {host}:{port}: {e}"))?;
        Ok(Metrics {
            client,
            namespace: namespace.to_string(),
        })
    }

    pub fn gauge(&self, tags: &[&str], name: &str, value: f64) {
        if let Some(m) = metric_name(&self.namespace, tags, name) {
            self.client.gauge(&m, value);
        }
    }

    pub fn count(&self, tags: &[&str], name: &str) {
        if let Some(m) = metric_name(&self.namespace, tags, name) {
            self.client.incr(&m);
        }
    }

    pub fn timing(&self, tags: &[&str], name: &str, d: Duration) {
        if let Some(m) = metric_name(&self.namespace, tags, name) {
            self.client.timer(&m, d.as_secs_f64() * 1000.0);
        }
    }

    /// A job left the queue for a runner.
    pub fn job_started(&self, queued: Duration) {
        self.count(&[], "jobs.started");
        self.timing(&[], "jobs.queue_time", queued);
    }

    pub fn job_finished(&self, result: JobResult, duration: Duration) {
        self.count(&[result.as_str()], "jobs.finished");
        self.timing(&[result.as_str()], "jobs.duration", duration);
    }

    /// The pull step of a compose job: both metric sets of §10.
    pub fn compose_pull(&self, image: &str, ok: bool, duration: Duration) {
        let tags = [image];
        self.timing(&tags, "compose_ci.docker_pull.duration", duration);
        if ok {
            self.gauge(&tags, "compose_ci.docker_pull.success.rate", 1.0);
        } else {
            self.gauge(&tags, "compose_ci.docker_pull.failure.rate", 1.0);
        }
        // The reference's own set, for dashboards built on it.
        self.gauge(&tags, "compose.docker.pull.rate", 1.0);
        if !ok {
            self.gauge(&tags, "compose.docker.error.rate", 1.0);
        }
        self.gauge(
            &tags,
            "compose.docker.pull.duration",
            duration.as_secs() as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchman_names() {
        assert_eq!(
            metric_name(
                "agent.prod",
                &["semaphoreci/android"],
                "compose.docker.pull.rate"
            )
            .unwrap(),
            "tagged.agent.prod.semaphoreci_android.no_tag.no_tag.compose.docker.pull.rate"
        );
        assert_eq!(clean_tag("a//b::c-d_e"), "a_b_c-d_e");
        assert!(metric_name("n", &["a", "b", "c", "d"], "x").is_none());
    }

    #[test]
    fn packets_reach_a_real_udp_socket() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = sock.local_addr().unwrap().port();
        let m = Metrics::new("127.0.0.1", port, "agent.test").unwrap();
        m.compose_pull("registry:5000/img:1", true, Duration::from_millis(1500));
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        while got.len() < 4 {
            let n = sock.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            got[0],
            "tagged.agent.test.registry_5000_img_1.no_tag.no_tag.compose_ci.docker_pull.duration:1500|ms"
        );
        assert_eq!(
            got[1],
            "tagged.agent.test.registry_5000_img_1.no_tag.no_tag.compose_ci.docker_pull.success.rate:1|g"
        );
        assert!(
            got[3].ends_with("compose.docker.pull.duration:1|g"),
            "{got:?}"
        );
    }
}
