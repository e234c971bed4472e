//! SSH jump points into running jobs (docs/protocol.md §8, §12 items 8 and 9):
//! the job's public keys in the agent user's `~/.ssh/authorized_keys`, and
//! `/tmp/ssh_jump_point` and `/tmp/ssh_jump_point-<job_id>`, scripts that
//! carry the job's env vars themselves: no file that other jobs' sessions
//! or other logins read ever holds them. Everything a job added is taken
//! away again when its guard drops, or by the next agent after a crash;
//! lines others wrote are left alone.
//!
//! Files are replaced atomically (a temporary file renamed over the old
//! one), so a concurrent reader never sees half a file, and every change
//! goes through one lock, so two jobs never lose each other's lines.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::job::request::decode_b64;
use crate::process::sys::{ActingAs, Credentials};
use crate::util::{id_slug, random_hex, shell_quote, write_private};

/// Serializes edits of the shared files between jobs.
static EDIT_LOCK: Mutex<()> = Mutex::new(());

/// The block earlier versions of the agent kept in `~/.bash_profile`, with
/// a line per running job; only removed now (after a crash of such a version).
const BLOCK_BEGIN: &str =
    "# >>> agent: env vars of running jobs (managed; removed when they end) >>>";
const BLOCK_END: &str = "# <<< agent <<<";

/// The keys a job added, as recorded for the next agent.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct AddedKeys {
    keys: Vec<String>,
    created_keys_file: bool,
}

/// Where the jump point leads.
pub enum Target {
    /// The host: the session's bash (its cwd is followed live).
    Shell { session_pid: i32 },
    /// The main container of a compose job.
    Container { name: String },
}

pub struct JumpPoint {
    home: PathBuf,
    added_keys: Vec<String>,
    /// authorized_keys did not exist before: it goes when it is empty again.
    created_keys_file: bool,
    script: PathBuf,
    tmp_dir: PathBuf,
    /// The job's user under `--job-user`, whose home this is: the keys are
    /// written and removed as that user (`sys::ActingAs`), so a link it
    /// planted there leads nowhere it could not write itself.
    creds: Option<Credentials>,
}

/// Decodes the request's keys; the error names the undecodable one.
pub fn decode_keys(keys: &[String]) -> Result<Vec<String>, String> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let bytes = decode_b64(k).map_err(|_| {
                format!(
                    "SSH public key #{} is not valid base64; the jump point cannot be set up",
                    i + 1
                )
            })?;
            let line = String::from_utf8(bytes).map_err(|_| {
                format!(
                    "SSH public key #{} is not text; the jump point cannot be set up",
                    i + 1
                )
            })?;
            let line = line.trim().to_string();
            if line.is_empty() || line.contains('\n') {
                return Err(format!(
                    "SSH public key #{} must be one authorized_keys line",
                    i + 1
                ));
            }
            Ok(line)
        })
        .collect()
}

/// What every shell through a shell job's jump point reads after the
/// startup files: the job's env vars, then its setup script (`cache`,
/// `checkout`), in the order the job's own session has them.
/// `AGENT_JUMP_POINT_ENV` and `AGENT_JUMP_POINT_SETUP` name the files.
const JOB_RC: &str = "[ -r \"$AGENT_JUMP_POINT_ENV\" ] && . \"$AGENT_JUMP_POINT_ENV\"; \
[ -r \"$AGENT_JUMP_POINT_SETUP\" ] && . \"$AGENT_JUMP_POINT_SETUP\"; \
unset AGENT_JUMP_POINT_ENV AGENT_JUMP_POINT_SETUP";

/// What a shell through a shell job's jump point reads first: the startup
/// files of a login shell (then `JOB_RC`).
const PROFILE_RC: &str = "[ -f /etc/profile ] && . /etc/profile; \
for f in ~/.bash_profile ~/.bash_login ~/.profile; do if [ -f \"$f\" ]; then . \"$f\"; break; fi; done";

/// How the jump point runs the command it is given: a program replaces the
/// script's shell, as it always did; a builtin or a function (`checkout`,
/// `type`) runs in it.
const RUN_ARGS: &str = "if [ \"$(type -t -- \"$1\")\" = file ]; then exec \"$@\"; fi; \"$@\"";

/// The jump point script (§8): the job's env vars and setup script, then a
/// shell or the given command (a program, a builtin or a function such as
/// `checkout`), on the host in the job's current directory or inside main.
pub fn script(job_id: &str, target: &Target, env_file: &Path, setup_file: &Path) -> String {
    let env = shell_quote(&env_file.to_string_lossy());
    let setup = shell_quote(&setup_file.to_string_lossy());
    match target {
        Target::Shell { session_pid } => format!(
            "#!/usr/bin/env bash\n\
             # SSH jump point into job {job}\n\
             [ -r {env} ] && . {env}\n\
             [ -r {setup} ] && . {setup}\n\
             cd \"$(readlink /proc/{session_pid}/cwd 2>/dev/null || echo ~)\" 2>/dev/null || cd ~\n\
             if [ $# -gt 0 ]; then {RUN_ARGS}; exit; fi\n\
             export AGENT_JUMP_POINT_ENV={env} AGENT_JUMP_POINT_SETUP={setup}\n\
             if [ -t 0 ]; then exec bash --rcfile <(printf '%s\\n' {rc}) -i; fi\n\
             BASH_ENV=<(printf '%s\\n' {bash_env}) exec bash\n",
            job = job_id.replace('\n', " "),
            rc = shell_quote(&format!("{PROFILE_RC}; {JOB_RC}")),
            // Read before anything else, so nothing the profile starts
            // inherits it.
            bash_env = shell_quote(&format!("unset BASH_ENV; {PROFILE_RC}; {JOB_RC}")),
        ),
        Target::Container { name } => {
            let name = shell_quote(name);
            format!(
                "#!/usr/bin/env bash\n\
                 # SSH jump point into job {job}\n\
                 cd /tmp\n\
                 echo 'Waiting for the container to start up'\n\
                 tries=0\n\
                 until docker exec {name} true </dev/null >/dev/null 2>&1; do\n\
                 \ttries=$((tries + 1))\n\
                 \tif [ $tries -ge 200 ]; then echo; echo 'The container did not start.'; exit 1; fi\n\
                 \tprintf .; sleep 3\n\
                 done\n\
                 echo\n\
                 if [ $# -eq 0 ]; then\n\
                 \tif [ -t 0 ]; then exec docker exec -ti {name} bash --login; fi\n\
                 \texec docker exec -i {name} bash --login\n\
                 fi\n\
                 exec docker exec -i {name} bash -c {run} {env} {setup} \"$@\"\n",
                job = job_id.replace('\n', " "),
                run = shell_quote(&format!(
                    "[ -r \"$0\" ] && . \"$0\"; [ -r \"$1\" ] && . \"$1\"; shift; {RUN_ARGS}"
                )),
            )
        }
    }
}

/// The jump point files' names: `/tmp/ssh_jump_point` and one per job.
pub fn script_paths(tmp: &Path, job_id: &str) -> (PathBuf, PathBuf) {
    let safe = id_slug(job_id, 128);
    (
        tmp.join("ssh_jump_point"),
        tmp.join(format!("ssh_jump_point-{safe}")),
    )
}

/// Writes `contents` to `path` through a temporary file and a rename.
fn replace_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        random_hex(6)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The permission bits of an existing file: a user's own choice is kept.
fn existing_mode(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

fn read_or_empty(path: &Path) -> std::io::Result<String> {
    match fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// Removes `line` from the managed block; the block goes when it holds
/// nothing of a job any more.
fn profile_without_line(text: &str, line: &str) -> String {
    let (before, mut lines, after) = split_block(text);
    if let Some(i) = lines.iter().position(|l| l == line) {
        lines.remove(i);
    }
    let only_profile = lines
        .iter()
        .all(|l| l == "[ -f ~/.profile ] && . ~/.profile");
    if lines.is_empty() || only_profile {
        return format!("{before}{after}");
    }
    format!(
        "{before}{BLOCK_BEGIN}\n{}\n{BLOCK_END}\n{after}",
        lines.join("\n")
    )
}

/// (text before the block, the block's lines, text after it).
fn split_block(text: &str) -> (String, Vec<String>, String) {
    let Some(start) = text.find(BLOCK_BEGIN) else {
        return (text.to_string(), Vec::new(), String::new());
    };
    let rest = &text[start + BLOCK_BEGIN.len()..];
    let Some(end) = rest.find(BLOCK_END) else {
        return (text.to_string(), Vec::new(), String::new());
    };
    let lines = rest[..end]
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let after = rest[end + BLOCK_END.len()..]
        .strip_prefix('\n')
        .unwrap_or(&rest[end + BLOCK_END.len()..]);
    (text[..start].to_string(), lines, after.to_string())
}

/// Removes the line sourcing `env_file` from the block an earlier version
/// of the agent kept in `~/.bash_profile` (left there by a crash).
pub fn remove_legacy_profile_line(home: &Path, env_file: &Path) {
    let _guard = EDIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let profile = home.join(".bash_profile");
    let Ok(text) = read_or_empty(&profile) else {
        return;
    };
    let line = format!(
        "[ -r {env} ] && . {env}",
        env = shell_quote(&env_file.to_string_lossy())
    );
    let out = profile_without_line(&text, &line);
    if out == text {
        return;
    }
    let result = if out.is_empty() {
        fs::remove_file(&profile)
    } else {
        replace_file(
            &profile,
            out.as_bytes(),
            existing_mode(&profile).unwrap_or(0o644),
        )
    };
    match result {
        Ok(()) => log::info!("removed a line of a crashed job from {}", profile.display()),
        Err(e) => log::error!("cannot restore {}: {e}", profile.display()),
    }
}

impl JumpPoint {
    /// Installs the keys. The script follows with `write_script` once the
    /// target is known. The keys are first written to `record` (in the
    /// job's private directory), so that the next agent can remove them
    /// should this one crash (docs/protocol.md §7.3).
    pub fn install(
        home: &Path,
        tmp_dir: &Path,
        job_id: &str,
        keys: Vec<String>,
        record: &Path,
        creds: Option<&Credentials>,
    ) -> Result<JumpPoint, String> {
        let _guard = EDIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut jp = JumpPoint {
            home: home.to_path_buf(),
            added_keys: Vec::new(),
            created_keys_file: false,
            script: script_paths(tmp_dir, job_id).1,
            tmp_dir: tmp_dir.to_path_buf(),
            creds: creds.cloned(),
        };
        if keys.is_empty() {
            return Ok(jp);
        }
        let added = AddedKeys {
            keys: keys.clone(),
            // Corrected below, once the file is looked at as its user.
            created_keys_file: !home.join(".ssh/authorized_keys").exists(),
        };
        serde_json::to_vec(&added)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_private(record, &bytes))
            .map_err(|e| format!("cannot write {}: {e}", record.display()))?;
        let _acting = creds
            .map(ActingAs::enter)
            .transpose()
            .map_err(|e| format!("cannot act as the job's user: {e}"))?;
        let ssh = home.join(".ssh");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ssh)
            .and_then(|_| fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("cannot create {}: {e}", ssh.display()))?;
        let path = ssh.join("authorized_keys");
        jp.created_keys_file = !path.exists();
        let mode = existing_mode(&path).unwrap_or(0o600);
        let mut text =
            read_or_empty(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for key in &keys {
            text.push_str(key);
            text.push('\n');
        }
        replace_file(&path, text.as_bytes(), mode)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        jp.added_keys = keys;
        Ok(jp)
    }

    /// The jump point of a job an earlier agent did not finish, from the
    /// `record` its `install` wrote: dropping it removes the job's keys
    /// (one occurrence each) from `home`, the home of the user the job ran
    /// as (written as `creds`, the job's user, when it had one of its own),
    /// and its scripts. Without a home only the scripts go.
    pub fn left_behind(
        home: Option<&Path>,
        creds: Option<&Credentials>,
        tmp_dir: &Path,
        job_id: &str,
        record: &Path,
    ) -> JumpPoint {
        let added: AddedKeys = fs::read(record)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(|_| home.is_some())
            .unwrap_or_default();
        JumpPoint {
            home: home.map(Path::to_path_buf).unwrap_or_default(),
            added_keys: added.keys,
            created_keys_file: added.created_keys_file,
            script: script_paths(tmp_dir, job_id).1,
            tmp_dir: tmp_dir.to_path_buf(),
            creds: creds.cloned(),
        }
    }

    /// Writes `/tmp/ssh_jump_point-<job_id>` and `/tmp/ssh_jump_point`.
    pub fn write_script(
        &self,
        job_id: &str,
        target: &Target,
        env_file: &Path,
        setup_file: &Path,
    ) -> Result<(), String> {
        let text = script(job_id, target, env_file, setup_file);
        let (latest, own) = script_paths(&self.tmp_dir, job_id);
        for path in [&own, &latest] {
            replace_file(path, text.as_bytes(), 0o755)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }

    fn remove(&mut self) {
        let _guard = EDIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let acting = match self.creds.as_ref().map(ActingAs::enter).transpose() {
            Ok(acting) => Some(acting),
            Err(e) => {
                log::error!("cannot act as the job's user to remove its keys: {e}");
                None
            }
        };
        if let (Some(_acting), false) = (&acting, self.added_keys.is_empty()) {
            let path = self.home.join(".ssh/authorized_keys");
            if let Ok(text) = read_or_empty(&path) {
                let mut lines: Vec<&str> = text.lines().collect();
                // One occurrence per key this job added: another job may
                // have added the same key and still need it.
                for key in &self.added_keys {
                    if let Some(i) = lines.iter().rposition(|l| l == key) {
                        lines.remove(i);
                    }
                }
                let mut out = lines.join("\n");
                if !out.is_empty() {
                    out.push('\n');
                }
                let mode = existing_mode(&path).unwrap_or(0o600);
                let result = if out.is_empty() && self.created_keys_file {
                    fs::remove_file(&path)
                } else {
                    replace_file(&path, out.as_bytes(), mode)
                };
                if let Err(e) = result {
                    log::error!("cannot remove keys from {}: {e}", path.display());
                }
            }
            self.added_keys.clear();
        }
        drop(acting);
        // The shared /tmp/ssh_jump_point goes only if it is still ours.
        let latest = self.tmp_dir.join("ssh_jump_point");
        if let (Ok(a), Ok(b)) = (fs::read(&latest), fs::read(&self.script)) {
            if a == b {
                let _ = fs::remove_file(&latest);
            }
        }
        let _ = fs::remove_file(&self.script);
    }
}

impl Drop for JumpPoint {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_profile_line_is_removed() {
        let home = std::env::temp_dir().join(format!("agent-jp-legacy-{}", std::process::id()));
        fs::create_dir_all(&home).unwrap();
        let original = "export PATH=$PATH:/opt/bin\n";
        let block = format!(
            "{original}{BLOCK_BEGIN}\n[ -f ~/.profile ] && . ~/.profile\n[ -r '/d/a/env' ] && . '/d/a/env'\n[ -r '/d/b/env' ] && . '/d/b/env'\n{BLOCK_END}\n"
        );
        fs::write(home.join(".bash_profile"), &block).unwrap();
        remove_legacy_profile_line(&home, Path::new("/d/a/env"));
        let left = fs::read_to_string(home.join(".bash_profile")).unwrap();
        assert!(
            left.contains("/d/b/env") && !left.contains("/d/a/env"),
            "{left}"
        );
        remove_legacy_profile_line(&home, Path::new("/d/b/env"));
        assert_eq!(
            fs::read_to_string(home.join(".bash_profile")).unwrap(),
            original
        );
        fs::remove_dir_all(home).unwrap();
    }

    #[test]
    fn the_shell_script_carries_the_env_and_setup_into_every_kind_of_session() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let dir = std::env::temp_dir().join(format!("agent-jp-script-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (env, setup) = (dir.join("env"), dir.join("setup.sh"));
        fs::write(&env, "export JOB_VAR='it'\\''s'\n").unwrap();
        // A profile that resets PATH, as /etc/profile often does (the
        // setup script still comes after it), and runs a bash script of its
        // own (which must not read what the jump point hands its shell).
        fs::write(
            dir.join(".profile"),
            "export PATH=/usr/bin:/bin\nfrom_child=$(bash -c 'echo ok')\n",
        )
        .unwrap();
        fs::write(
            &setup,
            "jobfn() { printf 'fn:%s' \"$JOB_VAR\"; }\nexport PATH=/job/bin:\"$PATH\"\n",
        )
        .unwrap();
        let text = script("j", &Target::Shell { session_pid: 1 }, &env, &setup);
        let path = dir.join("jp");
        fs::write(&path, &text).unwrap();
        let run = |args: &[&str], stdin: &str| {
            let mut child = Command::new("bash")
                .arg(&path)
                .args(args)
                .env("HOME", &dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(stdin.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        // A program, a function of the setup script, a builtin.
        assert_eq!(run(&["bash", "-c", "printf '%s' \"$JOB_VAR\""], ""), "it's");
        assert_eq!(run(&["jobfn"], ""), "fn:it's");
        assert_eq!(run(&["type", "-t", "jobfn"], ""), "function\n");
        // No command and no terminal: a shell reading stdin, with the
        // user's profile, then the job's env and setup.
        assert_eq!(
            run(
                &[],
                "jobfn; printf ' %s %s %s' \"${PATH%%:*}\" \"${BASH_ENV-unset}\" \"$from_child\""
            ),
            "fn:it's /job/bin unset ok"
        );
        // The interactive rc file is valid bash and ends with the job's files.
        let rc = Command::new("bash")
            .args([
                "-c",
                &format!("{PROFILE_RC}; {JOB_RC}\njobfn; printf ' %s' \"${{PATH%%:*}}\""),
            ])
            .env("AGENT_JUMP_POINT_ENV", &env)
            .env("AGENT_JUMP_POINT_SETUP", &setup)
            .env("HOME", &dir)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&rc.stdout), "fn:it's /job/bin");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn keys_are_decoded_or_named() {
        use base64::Engine;
        let good = base64::engine::general_purpose::STANDARD.encode("ssh-ed25519 AAAA test\n");
        assert_eq!(decode_keys(&[good]).unwrap(), ["ssh-ed25519 AAAA test"]);
        let err = decode_keys(&["!!".into()]).unwrap_err();
        assert!(err.contains("#1"), "{err}");
    }

    #[test]
    fn install_and_remove_leave_other_lines() {
        let home = std::env::temp_dir().join(format!("agent-jp-{}", std::process::id()));
        let tmp = home.join("tmp");
        fs::create_dir_all(home.join(".ssh")).unwrap();
        fs::create_dir_all(&tmp).unwrap();
        fs::write(home.join(".ssh/authorized_keys"), "ssh-rsa OTHER\n").unwrap();
        let env = home.join("env");
        let record = home.join("keys.json");
        let jp = JumpPoint::install(
            &home,
            &tmp,
            "job/1",
            vec!["ssh-ed25519 MINE".into()],
            &record,
            None,
        )
        .unwrap();
        jp.write_script("job/1", &Target::Shell { session_pid: 1 }, &env, &env)
            .unwrap();
        let keys = fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap();
        assert_eq!(keys, "ssh-rsa OTHER\nssh-ed25519 MINE\n");
        let mode = fs::metadata(home.join(".ssh/authorized_keys"))
            .unwrap()
            .permissions()
            .mode();
        // The user's own mode of an existing file is kept.
        assert_eq!(mode & 0o777, 0o644);
        assert!(tmp.join("ssh_jump_point-job_1").exists());
        assert!(tmp.join("ssh_jump_point").exists());
        // What a crashed agent left is found from the record alone.
        std::mem::forget(jp);
        drop(JumpPoint::left_behind(
            Some(&home),
            None,
            &tmp,
            "job/1",
            &record,
        ));
        assert_eq!(
            fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap(),
            "ssh-rsa OTHER\n"
        );
        assert!(!home.join(".bash_profile").exists());
        assert!(!tmp.join("ssh_jump_point-job_1").exists());
        assert!(!tmp.join("ssh_jump_point").exists());
        // A keys file the job created is 0600 and goes with the job.
        fs::remove_file(home.join(".ssh/authorized_keys")).unwrap();
        let jp = JumpPoint::install(
            &home,
            &tmp,
            "j2",
            vec!["ssh-ed25519 K".into()],
            &record,
            None,
        )
        .unwrap();
        let mode = fs::metadata(home.join(".ssh/authorized_keys"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(jp);
        assert!(!home.join(".ssh/authorized_keys").exists());
        fs::remove_dir_all(home).unwrap();
    }
}
