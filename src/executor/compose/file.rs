//! The compose file of a job (docs/protocol.md §9.4, §9.5): generated with
//! serde from the request's containers, every value literal (compose
//! interpolation is escaped), plus the container path rules for injected
//! files and the `--files` volumes of main.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::job::request::{decode_b64, Container};
use crate::util::shell_quote;

/// Compose interpolates `$VAR` in every value; `$$` is a literal `$`.
fn literal(s: &str) -> Value {
    Value::String(s.replace('$', "$$"))
}

/// Options of the compose file that come from the agent, not the job.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// Add `/dev/kvm` (only when the host has it and the flag allows it).
    pub kvm: bool,
    /// `--files host:dest` volumes for main.
    pub volumes: Vec<String>,
    /// Labels of every container: the job's Docker gate's, so that the
    /// job sees its own containers (main and the others) in `docker ps`.
    pub labels: Vec<(String, String)>,
}

/// The compose file (§9.4) as a JSON value: services keyed by name (the
/// first container is main and links to the others), every
/// value literal (no interpolation), env values byte-exact.
pub fn compose_file(containers: &[Container], opts: &FileOptions) -> Result<Value, String> {
    let mut services = Map::new();
    for (i, c) in containers.iter().enumerate() {
        let mut svc = Map::new();
        svc.insert("image".into(), literal(&c.image));
        if opts.kvm {
            svc.insert("devices".into(), json!(["/dev/kvm:/dev/kvm"]));
        }
        if !opts.labels.is_empty() {
            let labels: Map<String, Value> = opts
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), literal(v)))
                .collect();
            svc.insert("labels".into(), Value::Object(labels));
        }
        if !c.command.is_empty() {
            svc.insert("command".into(), literal(&c.command));
        }
        if !c.user.is_empty() {
            svc.insert("user".into(), literal(&c.user));
        }
        if !c.entrypoint.is_empty() {
            svc.insert("entrypoint".into(), literal(&c.entrypoint));
        }
        if !c.env_vars.is_empty() {
            let mut env = Map::new();
            for v in &c.env_vars {
                let value = decode_b64(&v.value)
                    .map_err(|_| format!("cannot decode env var '{}' of '{}'", v.name, c.name))?;
                let value = String::from_utf8(value).map_err(|_| {
                    format!("env var '{}' of '{}' is not UTF-8 text", v.name, c.name)
                })?;
                env.insert(v.name.clone(), literal(&value));
            }
            svc.insert("environment".into(), Value::Object(env));
        }
        if i == 0 {
            let others: Vec<Value> = containers[1..].iter().map(|o| literal(&o.name)).collect();
            if !others.is_empty() {
                svc.insert("links".into(), Value::Array(others));
            }
            if !opts.volumes.is_empty() {
                let vols: Vec<Value> = opts.volumes.iter().map(|v| literal(v)).collect();
                svc.insert("volumes".into(), Value::Array(vols));
            }
        }
        services.insert(c.name.clone(), Value::Object(svc));
    }
    Ok(json!({ "version": "2.0", "services": services }))
}

/// The compose path rules (§9.5): absolute or `~`-prefixed as given (the
/// container's bash expands the tilde), else `~/<path>`; quoted for bash so
/// spaces and quotes survive, with a leading `~` or `~/` left unquoted.
pub fn container_path(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("~/") {
        format!("~/{}", shell_quote(rest))
    } else if path == "~" {
        "~".into()
    } else if path.starts_with('/') {
        shell_quote(path)
    } else {
        format!("~/{}", shell_quote(path))
    }
}

/// `--files host:dest,...` (§9.6): pairs whose host path exists.
pub fn host_volumes(spec: Option<&str>) -> Vec<String> {
    let Some(spec) = spec else { return Vec::new() };
    spec.split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|pair| {
            let (host, dest) = pair.split_once(':')?;
            if Path::new(host).exists() {
                Some(format!("{host}:{dest}"))
            } else {
                log::warn!("--files: {host} does not exist; not mounted");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::request::test_values::env_vars;

    fn container(name: &str, env: &[(&str, &str)]) -> Container {
        Container {
            name: name.into(),
            image: "agent-test/bash:1".into(),
            env_vars: env_vars(env),
            ..Container::default()
        }
    }

    #[test]
    fn hostile_values_survive_the_compose_file() {
        let nasty = "multi\nline: value # not a comment\n- \"quoted\" 'single' $HOME ${X} {a} * !tag &anchor";
        let file = compose_file(
            &[container("main", &[("NASTY", nasty)]), container("db", &[])],
            &FileOptions::default(),
        )
        .unwrap();
        let text = serde_json::to_string_pretty(&file).unwrap();
        let back: Value = serde_yaml_ng::from_str(&text).unwrap();
        let env = &back["services"]["main"]["environment"]["NASTY"];
        // `$` is doubled for compose, which turns `$$` back into `$`.
        assert_eq!(env.as_str().unwrap().replace("$$", "$"), nasty);
        assert_eq!(back["services"]["main"]["links"][0], "db");
        assert!(back["services"]["main"].get("devices").is_none());
        assert!(back["services"]["db"].get("links").is_none());
    }

    #[test]
    fn kvm_only_when_asked() {
        let opts = FileOptions {
            kvm: true,
            ..FileOptions::default()
        };
        let file = compose_file(&[container("main", &[])], &opts).unwrap();
        assert_eq!(file["services"]["main"]["devices"][0], "/dev/kvm:/dev/kvm");
    }

    #[test]
    fn every_container_gets_the_gates_label() {
        let opts = FileOptions {
            labels: vec![("agent.job".into(), "j$1.abc".into())],
            ..FileOptions::default()
        };
        let file = compose_file(&[container("main", &[]), container("db", &[])], &opts).unwrap();
        for service in ["main", "db"] {
            assert_eq!(file["services"][service]["labels"]["agent.job"], "j$$1.abc");
        }
        let plain = compose_file(&[container("main", &[])], &FileOptions::default()).unwrap();
        assert!(plain["services"]["main"].get("labels").is_none());
    }

    #[test]
    fn container_paths() {
        assert_eq!(container_path("/etc/a b"), "'/etc/a b'");
        assert_eq!(container_path("~/x y"), "~/'x y'");
        assert_eq!(container_path("rel/p"), "~/'rel/p'");
    }
}
