//! The job's environment variables: decoded, checked, de-duplicated and
//! sorted (§5.2 step 4), and the env file the session sources.

use std::collections::BTreeMap;
use std::path::Path;

use crate::job::request::{decode_b64, is_shell_identifier, EnvVar};
use crate::util::{shell_quote_bytes, write_private};

/// Decoded variables by name: the value and whether it is a secret.
pub type EnvVars = BTreeMap<String, (Vec<u8>, bool)>;

/// Shorter secret values are not masked: they would match too much.
pub const MIN_SECRET_LEN: usize = 4;

/// Decodes, checks, de-duplicates (last wins) and sorts env vars by name;
/// each value comes with its `secret` flag.
pub fn decode_env(vars: &[EnvVar]) -> Result<EnvVars, String> {
    let mut out = BTreeMap::new();
    for var in vars {
        if !is_shell_identifier(&var.name) {
            return Err(format!(
                "Invalid environment variable name '{}': a name must match [A-Za-z_][A-Za-z0-9_]*\n",
                var.name
            ));
        }
        let value = decode_b64(&var.value).map_err(|_| {
            format!(
                "Failed to decode the value of environment variable '{}': not valid base64\n",
                var.name
            )
        })?;
        // A shell variable ends at its first NUL byte: the value would be
        // cut short without a word.
        if value.contains(&0) {
            return Err(format!(
                "The value of environment variable '{}' contains a NUL byte, which no shell variable can hold\n",
                var.name
            ));
        }
        out.insert(var.name.clone(), (value, var.secret));
    }
    Ok(out)
}

/// Writes the env file the session sources, readable by the agent's user
/// only.
pub fn write_env_file(path: &Path, vars: &EnvVars) -> std::io::Result<()> {
    write_private(path, &env_file_contents(vars))
}

/// The env file's text: one `export NAME='value'` line per variable, values
/// quoted byte-exact.
fn env_file_contents(vars: &EnvVars) -> Vec<u8> {
    let mut contents = Vec::new();
    for (name, (value, _)) in vars {
        contents.extend_from_slice(format!("export {name}=").as_bytes());
        shell_quote_bytes(value, &mut contents);
        contents.push(b'\n');
    }
    contents
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn var(name: &str, value: &[u8]) -> EnvVar {
        use base64::Engine;
        EnvVar {
            name: name.into(),
            value: base64::engine::general_purpose::STANDARD.encode(value),
            secret: false,
        }
    }

    #[test]
    fn env_is_sorted_and_deduplicated() {
        let vars = decode_env(&[var("B", b"1"), var("A", b"2"), var("B", b"3")]).unwrap();
        let names: Vec<_> = vars.keys().cloned().collect();
        assert_eq!(names, ["A", "B"]);
        assert_eq!(vars["B"].0, b"3");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let err = decode_env(&[var("A-B", b"x")]).unwrap_err();
        assert!(err.contains("'A-B'"), "{err}");
        let bad = EnvVar {
            name: "TOKEN".into(),
            value: "not base64!".into(),
            secret: false,
        };
        let err = decode_env(&[bad]).unwrap_err();
        assert!(err.contains("'TOKEN'"), "{err}");
        let err = decode_env(&[var("NUL", b"a\0b")]).unwrap_err();
        assert!(err.contains("'NUL'") && err.contains("NUL byte"), "{err}");
    }

    #[test]
    fn env_file_round_trips_through_bash() {
        let dir = tempfile::tempdir().unwrap();
        let value = b"it's \"$HOME\" `id` \\n\nline2 $(x) !x";
        let vars = decode_env(&[var("V", value), var("W", b"")]).unwrap();
        let file = dir.path().join("env");
        write_env_file(&file, &vars).unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; printf '%s|%s' \"$V\" \"${{W-unset}}\"",
                file.display()
            ))
            .output()
            .unwrap();
        let mut expected = value.to_vec();
        expected.extend_from_slice(b"|");
        assert_eq!(out.stdout, expected);
    }
}
