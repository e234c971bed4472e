//! Image pull credentials (docs/protocol.md §3.3): each entry's strategy
//! (`DOCKER_CREDENTIAL_TYPE`) becomes a bash script run on the host with only
//! that entry's env vars and the job's own `DOCKER_CONFIG`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::job::request::{decode_b64, Credentials};

/// One credential entry's login (§3.3).
#[derive(Debug, Clone)]
pub struct Login {
    /// `Setting up credentials for <what>`.
    pub what: &'static str,
    /// The bash script run on the host, with `$VAR` references unexpanded.
    pub script: String,
    /// The entry's decoded env vars: the login's whole environment, with
    /// PATH, HOME and DOCKER_CONFIG added by the caller.
    pub env: BTreeMap<String, String>,
    /// Files to write on the host first (GCR's key file).
    pub files: Vec<crate::job::request::File>,
}

/// Resolves an entry's strategy from `DOCKER_CREDENTIAL_TYPE`. The error is
/// the line §9.2 prescribes.
pub fn login_for(entry: &Credentials) -> Result<Login, String> {
    let mut env = BTreeMap::new();
    for v in &entry.env_vars {
        let value = decode_b64(&v.value)
            .map_err(|_| format!("Failed to decode the value of '{}'", v.name))?;
        env.insert(v.name.clone(), String::from_utf8_lossy(&value).into_owned());
    }
    let kind = env
        .get("DOCKER_CREDENTIAL_TYPE")
        .cloned()
        .ok_or("Failed to resolve docker login strategy: DOCKER_CREDENTIAL_TYPE not set")?;
    let (what, script) = match kind.as_str() {
        "DockerHub" => (
            "DockerHub",
            "printf '%s' \"$DOCKERHUB_PASSWORD\" | docker login --username \"$DOCKERHUB_USERNAME\" --password-stdin".to_string(),
        ),
        "GenericDocker" => (
            "Docker",
            "printf '%s' \"$DOCKER_PASSWORD\" | docker login --username \"$DOCKER_USERNAME\" --password-stdin \"$DOCKER_URL\"".to_string(),
        ),
        "AWS_ECR" => ("ECR", ecr_script(env.contains_key("AWS_ACCOUNT_ID"))),
        "GCR" => (
            "GCR",
            "docker login --username _json_key --password-stdin \"https://$GCR_HOSTNAME\" < /tmp/gcr/keyfile.json".to_string(),
        ),
        other => {
            return Err(format!(
                "Failed to resolve docker login strategy: unknown DOCKER_CREDENTIAL_TYPE: '{other}'"
            ))
        }
    };
    Ok(Login {
        what,
        script,
        env,
        files: if kind == "GCR" {
            entry.files.clone()
        } else {
            Vec::new()
        },
    })
}

/// ECR: aws CLI 2 pipes `get-login-password` into docker login; aws CLI 1
/// runs the login command `get-login` prints.
fn ecr_script(has_account: bool) -> String {
    let account = if has_account {
        "\"$AWS_ACCOUNT_ID\""
    } else {
        "\"$(aws sts get-caller-identity --query Account --output text)\""
    };
    let registry_ids = if has_account {
        " --registry-ids \"$AWS_ACCOUNT_ID\""
    } else {
        ""
    };
    format!(
        "if aws --version 2>&1 | grep -q '^aws-cli/1\\.'; then \
         $(aws ecr get-login --no-include-email --region \"$AWS_REGION\"{registry_ids}); \
         else aws ecr get-login-password --region \"$AWS_REGION\" | \
         docker login --username AWS --password-stdin {account}.dkr.ecr.\"$AWS_REGION\".amazonaws.com; fi"
    )
}

/// The login's command: bash with the entry's env vars only, plus PATH, HOME
/// and the job's DOCKER_CONFIG (so the login never touches ~/.docker).
pub fn login_command(login: &Login, docker_config: &Path, home: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&login.script)
        .env_clear()
        .envs(&login.env)
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("HOME", home)
        .env("DOCKER_CONFIG", docker_config)
        .stdin(Stdio::null());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::request::test_values::env_vars;

    fn creds(vars: &[(&str, &str)]) -> Credentials {
        Credentials {
            env_vars: env_vars(vars),
            files: vec![],
        }
    }

    #[test]
    fn login_strategies() {
        let hub = login_for(&creds(&[
            ("DOCKER_CREDENTIAL_TYPE", "DockerHub"),
            ("DOCKERHUB_USERNAME", "u"),
            ("DOCKERHUB_PASSWORD", "p"),
        ]))
        .unwrap();
        assert_eq!(hub.what, "DockerHub");
        assert!(hub
            .script
            .contains("docker login --username \"$DOCKERHUB_USERNAME\" --password-stdin"));
        assert_eq!(hub.env["DOCKERHUB_PASSWORD"], "p");

        let generic = login_for(&creds(&[
            ("DOCKER_CREDENTIAL_TYPE", "GenericDocker"),
            ("DOCKER_URL", "127.0.0.1:5000"),
        ]))
        .unwrap();
        assert_eq!(generic.what, "Docker");
        assert!(generic.script.ends_with("--password-stdin \"$DOCKER_URL\""));

        let ecr = login_for(&creds(&[
            ("DOCKER_CREDENTIAL_TYPE", "AWS_ECR"),
            ("AWS_REGION", "eu-west-1"),
        ]))
        .unwrap();
        assert_eq!(ecr.what, "ECR");
        assert!(ecr.script.contains("aws sts get-caller-identity"));
        assert!(ecr
            .script
            .contains("$(aws ecr get-login --no-include-email --region \"$AWS_REGION\")"));
        let ecr = login_for(&creds(&[
            ("DOCKER_CREDENTIAL_TYPE", "AWS_ECR"),
            ("AWS_ACCOUNT_ID", "123"),
        ]))
        .unwrap();
        assert!(ecr.script.contains("--registry-ids \"$AWS_ACCOUNT_ID\""));
        assert!(ecr
            .script
            .contains("\"$AWS_ACCOUNT_ID\".dkr.ecr.\"$AWS_REGION\".amazonaws.com"));

        let gcr = login_for(&creds(&[("DOCKER_CREDENTIAL_TYPE", "GCR")])).unwrap();
        assert!(gcr.script.contains("https://$GCR_HOSTNAME"));
        assert!(gcr.script.contains("/tmp/gcr/keyfile.json"));

        assert_eq!(
            login_for(&creds(&[])).unwrap_err(),
            "Failed to resolve docker login strategy: DOCKER_CREDENTIAL_TYPE not set"
        );
        assert_eq!(
            login_for(&creds(&[("DOCKER_CREDENTIAL_TYPE", "Quay")])).unwrap_err(),
            "Failed to resolve docker login strategy: unknown DOCKER_CREDENTIAL_TYPE: 'Quay'"
        );
    }

    #[test]
    fn login_environment_is_only_the_entry() {
        std::env::set_var("AGENT_TEST_LEAK", "x");
        let login = login_for(&creds(&[
            ("DOCKER_CREDENTIAL_TYPE", "DockerHub"),
            ("DOCKERHUB_USERNAME", "u"),
        ]))
        .unwrap();
        let cmd = login_command(&login, Path::new("/cfg"), Path::new("/home/a"));
        let envs: BTreeMap<String, String> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect();
        assert_eq!(envs["DOCKER_CONFIG"], "/cfg");
        assert_eq!(envs["DOCKERHUB_USERNAME"], "u");
        assert!(envs.contains_key("PATH"));
        assert!(!envs.contains_key("AGENT_TEST_LEAK"));
    }
}
