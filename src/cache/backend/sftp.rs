//! The SFTP backend: archives in a directory of an OpenSSH server (a
//! chrooted `internal-sftp` user is enough), driven through the `sftp`
//! client in batch mode with the agent's key (or, for a job's own server,
//! the key the job handed over), as the agent drives docker.
//!
//! The layout is the toolbox's: one file per key, named exactly as the key,
//! in the configured directory (the login directory by default), so that
//! agents and toolboxes can share one server. Nothing else is kept there:
//! a store uploads under a hidden temporary name (`.incoming-...`, which no
//! key may start with) and hard-links it to the key (OpenSSH's `hardlink`
//! extension), which fails where the key exists: the key only ever names a
//! complete archive, and a key stored by someone else meanwhile is kept.
//! Uploads a crash left are removed by the next store once they are older
//! than any upload can take. `sftp` shows no access times, so `ACCESS_TIME`
//! orders keys by their store time, as the toolbox does when a server
//! reports none.
//!
//! Every `sftp` run is bounded (`hostcmd::run_bounded`): `ConnectTimeout`,
//! keep-alives, a deadline, and the request's `Cancel`; whichever ends it,
//! `sftp` and its `ssh` are killed together, and nothing waits for them.
//!
//! Names go into batch commands double-quoted, with `\` and `"` escaped;
//! inside quotes `sftp` takes glob characters literally, so a key may hold
//! any character but a control character (refused by `keys::check`).

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use super::staging::{self, Staged};
use super::{Call, Entry, Fetched, Listing, STAGED_PREFIX};
use crate::cache::config::{SftpConfig, SFTP_CONNECT_TIMEOUT};
use crate::cache::error::CacheError;
use crate::process::hostcmd::{self, Ended};
use crate::util::random_hex;

/// The longest a listing, a delete or a `df` may take.
const SHORT_DEADLINE: Duration = Duration::from_secs(30);
/// The longest an upload or a download may take.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(3600);
/// A temporary upload untouched for longer than any upload may take (plus
/// the listing's minute) is left over from a crash.
const ABANDONED_UPLOAD: Duration = Duration::from_secs(3600 + 120);
/// The most a listing may print (some hundred thousand keys).
const MAX_LISTING: usize = 64 * 1024 * 1024;
/// The directory of access markers that earlier versions kept beside the
/// archives; `clear` removes what is left of it.
const OLD_ACCESS_DIR: &str = ".access";
/// The spool's names: archives on their way up and down.
const UP: &str = "up-";
const DOWN: &str = "down-";

pub struct Sftp {
    cfg: SftpConfig,
    spool: PathBuf,
}

impl Sftp {
    pub fn new(cfg: &SftpConfig, spool: &Path) -> Result<Sftp, CacheError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(spool)
            .map_err(|e| CacheError::io("cannot create the cache spool directory", spool, e))?;
        clear_spool(spool);
        Ok(Sftp {
            cfg: cfg.clone(),
            spool: spool.to_path_buf(),
        })
    }

    /// The base directory, quoted for a batch command.
    fn base(&self) -> String {
        quote(if self.cfg.base.is_empty() {
            "/"
        } else {
            &self.cfg.base
        })
    }

    /// The path of `name` in the base directory, quoted for a batch
    /// command.
    fn remote(&self, name: &str) -> String {
        let base = self.cfg.base.trim_end_matches('/');
        if base.is_empty() {
            quote(&format!("/{name}"))
        } else {
            quote(&format!("{base}/{name}"))
        }
    }

    /// The `sftp` command line: one key only, no agent, no config file, no
    /// prompt; the destination after `--`.
    pub fn argv(&self, identity: &Path) -> Vec<String> {
        let opt = |o: String| ["-o".to_string(), o];
        let mut argv = vec![
            "sftp".to_string(),
            "-b".into(),
            "-".into(),
            "-F".into(),
            "/dev/null".into(),
            "-P".into(),
            self.cfg.port.to_string(),
            "-i".into(),
            identity.to_string_lossy().into_owned(),
        ];
        for o in [
            "BatchMode=yes".to_string(),
            format!("ConnectTimeout={}", SFTP_CONNECT_TIMEOUT.as_secs()),
            "ServerAliveInterval=5".into(),
            "ServerAliveCountMax=3".into(),
            "IdentitiesOnly=yes".into(),
            "IdentityAgent=none".into(),
            "StrictHostKeyChecking=accept-new".into(),
            format!("UserKnownHostsFile={}", self.cfg.known_hosts.display()),
            "LogLevel=ERROR".into(),
        ] {
            argv.extend(opt(o));
        }
        argv.push("--".into());
        argv.push(format!("{}@{}", self.cfg.user, self.cfg.host));
        argv
    }

    /// Runs a batch of commands; a failing command fails the run.
    fn run(&self, batch: &str, deadline: Duration, call: &Call<'_>) -> Result<String, CacheError> {
        let server = self.cfg.server();
        let identity =
            call.identity
                .or(self.cfg.key.as_deref())
                .ok_or_else(|| CacheError::Sftp {
                    server: server.clone(),
                    detail: "no key to log in with".into(),
                })?;
        if call.cancel.is_set() {
            return Err(CacheError::Abandoned);
        }
        let argv = self.argv(identity);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            // Names in listings come out as they are only in a UTF-8
            // locale; in C, sftp writes `?` for every non-ASCII byte.
            .env("LC_ALL", "C.UTF-8");
        let ran = hostcmd::run_bounded(
            cmd,
            batch.as_bytes(),
            Instant::now() + deadline,
            &|| call.cancel.is_set(),
            MAX_LISTING,
        )
        .map_err(|e| CacheError::Sftp {
            server: server.clone(),
            detail: format!("cannot run sftp: {e}"),
        })?;
        let stderr = String::from_utf8_lossy(&ran.stderr);
        let detail = reason(&stderr);
        match ran.ended {
            Ended::Exited(s) if s.success() => {
                Ok(String::from_utf8_lossy(&ran.stdout).into_owned())
            }
            Ended::Exited(_) if is_connection_failure(&stderr) => {
                Err(CacheError::Unreachable { server, detail })
            }
            Ended::Exited(_) => Err(CacheError::Sftp { server, detail }),
            Ended::TimedOut => Err(CacheError::Unreachable {
                server,
                detail: format!("no answer within {}s", deadline.as_secs()),
            }),
            Ended::GivenUp => Err(CacheError::Abandoned),
            Ended::TooMuchOutput => Err(CacheError::Sftp {
                server,
                detail: format!("it answered more than {} MiB", MAX_LISTING >> 20),
            }),
        }
    }

    pub fn listing(&self, call: &Call<'_>) -> Result<Listing, CacheError> {
        let out = self.run(&format!("ls -alt {}\n", self.base()), SHORT_DEADLINE, call)?;
        Ok(parse_listing(&out, now_ms()))
    }

    pub fn stage(&self) -> Result<(File, Staged), CacheError> {
        staging::remove_abandoned(&self.spool, UP);
        staging::create(&self.spool, UP)
    }

    /// Uploads under a temporary name, then links the key to it. A key
    /// that is there by then (stored meanwhile by another agent or a
    /// toolbox) is kept: false. A server without OpenSSH's `hardlink`
    /// extension gets a rename instead, which replaces, as the toolbox's.
    pub fn commit(&self, key: &str, staged: &Path, call: &Call<'_>) -> Result<bool, CacheError> {
        let tmp = self.remote(&format!("{STAGED_PREFIX}{}", random_hex(8)));
        let dest = self.remote(key);
        let batch = format!(
            "put {} {tmp}\nln {tmp} {dest}\n-rm {tmp}\n",
            quote(&staged.to_string_lossy()),
        );
        let failed = match self.run(&batch, TRANSFER_DEADLINE, call) {
            Ok(_) => return Ok(true),
            Err(e) => e,
        };
        let detail = match &failed {
            CacheError::Sftp { detail, .. } => detail.as_str(),
            _ => "",
        };
        if detail.contains("does not support hardlink") {
            let renamed = self.run(&format!("rename {tmp} {dest}\n"), SHORT_DEADLINE, call);
            if renamed.is_err() {
                self.remove_quietly(&tmp, call);
            }
            return renamed.map(|_| true);
        }
        // OpenSSH 9 says `remote link "A" to "B": Failure`, earlier ones
        // `Couldn't link file "A" to "B": Failure`.
        let link_failed = detail.starts_with("remote link") || detail.starts_with("Couldn't link");
        // Best effort: a half-uploaded temporary file is never a key, and
        // the next store removes it once it is old.
        self.remove_quietly(&tmp, call);
        if link_failed
            && self
                .list_keys(call)
                .is_ok_and(|keys| keys.iter().any(|k| k == key))
        {
            return Ok(false);
        }
        Err(failed)
    }

    fn list_keys(&self, call: &Call<'_>) -> Result<Vec<String>, CacheError> {
        Ok(self
            .listing(call)?
            .entries
            .into_iter()
            .map(|e| e.key)
            .collect())
    }

    /// Removes a remote file (quoted), if the request still runs.
    fn remove_quietly(&self, quoted: &str, call: &Call<'_>) {
        if !call.cancel.is_set() {
            let _ = self.run(&format!("-rm {quoted}\n"), SHORT_DEADLINE, call);
        }
    }

    /// Removes the temporary uploads among `staged` that are older than
    /// any upload can take: left by an agent that was killed.
    pub fn remove_abandoned(&self, staged: &[Entry], call: &Call<'_>) {
        let now = now_ms();
        let old: Vec<&Entry> = staged
            .iter()
            .filter(|e| now.saturating_sub(e.stored_ms) > ABANDONED_UPLOAD.as_millis() as u64)
            .collect();
        if old.is_empty() {
            return;
        }
        let batch: String = old
            .iter()
            .map(|e| format!("-rm {}\n", self.remote(&e.key)))
            .collect();
        match self.run(&batch, SHORT_DEADLINE, call) {
            Ok(_) => log::info!(
                "removed {} upload(s) a crash left on {}",
                old.len(),
                self.cfg.server()
            ),
            Err(e) => log::warn!("cannot remove old uploads on {}: {e}", self.cfg.server()),
        }
    }

    pub fn fetch(&self, key: &str, call: &Call<'_>) -> Result<Fetched<'static>, CacheError> {
        let (file, spooled) = staging::create(&self.spool, DOWN)?;
        let ran = self.run(
            &format!(
                "get {} {}\n",
                self.remote(key),
                quote(&spooled.path().to_string_lossy())
            ),
            TRANSFER_DEADLINE,
            call,
        );
        if let Err(e) = ran {
            return Err(match e {
                CacheError::Sftp { detail, .. } if detail.contains("not found") => {
                    CacheError::NotFound(key.to_string())
                }
                other => other,
            });
        }
        Ok(Fetched::file(file, Some(spooled)))
    }

    pub fn delete(&self, key: &str, call: &Call<'_>) -> Result<(), CacheError> {
        match self.run(&format!("rm {}\n", self.remote(key)), SHORT_DEADLINE, call) {
            Ok(_) => Ok(()),
            Err(CacheError::Sftp { detail, .. })
                if detail.contains("No such file") || detail.contains("not found") =>
            {
                Err(CacheError::NotFound(key.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the access markers' directory that earlier versions of the
    /// agent kept beside the archives (the toolbox would list it as a key,
    /// and its `clear` fails on it). The glob is outside the quotes.
    pub fn clear_old_markers(&self, call: &Call<'_>) -> Result<(), CacheError> {
        let dir = self.remote(OLD_ACCESS_DIR);
        let dir_slash = self.remote(&format!("{OLD_ACCESS_DIR}/"));
        let batch = format!("-rm {dir_slash}*\n-rmdir {dir}\n");
        self.run(&batch, SHORT_DEADLINE, call).map(|_| ())
    }
}

/// Removes the transfers a crash left in the spool directory: called when
/// the agent starts, whatever its own backend (jobs may bring an SFTP
/// server of their own), and when an SFTP backend opens.
pub fn clear_spool(spool: &Path) {
    staging::remove_abandoned(spool, UP);
    staging::remove_abandoned(spool, DOWN);
}

/// A name for a batch command: double-quoted, with `\` and `"` escaped.
/// Inside quotes, sftp takes `*`, `?` and `[` literally, also where it
/// globs (`get`, `rm`, `ls`).
fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The line of sftp's stderr that says why: ssh's own reason rather than
/// sftp's "Connection closed" after it, else the last line.
fn reason(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| is_connection_failure(l) && !l.starts_with("Connection closed"))
        .or(lines.last())
        .map(|l| l.strip_prefix("ssh: ").unwrap_or(l).to_string())
        .unwrap_or_default()
}

/// ssh's words for a server it could not log in to.
fn is_connection_failure(stderr: &str) -> bool {
    [
        "Connection refused",
        "Connection timed out",
        "timed out",
        "No route to host",
        "Could not resolve",
        "Permission denied",
        "Connection closed",
        "Host key verification failed",
        "Network is unreachable",
    ]
    .iter()
    .any(|w| stderr.contains(w))
}

fn now_ms() -> u64 {
    super::unix_ms(Ok(SystemTime::now()))
}

/// The `ls -alt` output of sftp's batch mode (commands are echoed after
/// `sftp> `): regular files only, archives on their way in apart. The
/// name is the rest of the line after the eighth field and its one space,
/// taken as it is (a key may hold spaces). The listing shows times to the
/// minute, so store times are made strictly decreasing in the listed
/// (newest first) order; the access time is the store time.
fn parse_listing(stdout: &str, now_ms: u64) -> Listing {
    let mut listing = Listing::default();
    for line in stdout.lines() {
        if !line.starts_with('-') {
            continue;
        }
        let Some((fields, name)) = split_fields(line, 8) else {
            continue;
        };
        let Ok(size) = fields[4].parse::<u64>() else {
            continue;
        };
        let name = name.rsplit('/').next().unwrap_or("").to_string();
        if name.is_empty() {
            continue;
        }
        let mut stored = listing_time(fields[5], fields[6], fields[7], now_ms).unwrap_or(now_ms);
        if name.starts_with(STAGED_PREFIX) {
            listing.staged.push(Entry {
                key: name,
                size,
                stored_ms: stored,
                accessed_ms: stored,
            });
            continue;
        }
        if let Some(prev) = listing.entries.last() {
            stored = stored.min(prev.stored_ms.saturating_sub(1));
        }
        listing.entries.push(Entry {
            key: name,
            size,
            stored_ms: stored,
            accessed_ms: stored,
        });
    }
    listing
}

/// The first `n` whitespace-separated fields of `line`, and the rest after
/// the one space that follows them.
fn split_fields(line: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut fields = Vec::with_capacity(n);
    let mut rest = line;
    for _ in 0..n {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ')?;
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    Some((fields, rest.strip_prefix(' ')?))
}

/// `Nov 29 20:01` (this year, or last year when that would be in the
/// future) or `Nov 29 2024`, in UTC as the server prints it.
fn listing_time(month: &str, day: &str, time_or_year: &str, now_ms: u64) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let day: u32 = day.parse().ok()?;
    let (this_year, _, _) = crate::cache::format::civil_from_days((now_ms / 86_400_000) as i64);
    let (year, minutes) = match time_or_year.split_once(':') {
        Some((h, m)) => (
            this_year,
            h.parse::<u64>().ok()? * 60 + m.parse::<u64>().ok()?,
        ),
        None => (time_or_year.parse().ok()?, 0),
    };
    let at = |y: i64| {
        let days = crate::cache::format::days_from_civil(y, month, day);
        (days as u64) * 86_400_000 + minutes * 60_000
    };
    let t = at(year);
    if t > now_ms + 86_400_000 && time_or_year.contains(':') {
        return Some(at(year - 1));
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_read_newest_first_with_distinct_times_and_exact_names() {
        let out = "sftp> ls -alt \"/cache\"\n\
                   drwxr-xr-x    3 0        0            4096 Nov 29 20:01 /cache/.\n\
                   -rw-r--r--    1 0        0            1234 Nov 29 20:01 /cache/b-key\n\
                   -rw-r--r--    1 0        0              99 Nov 29 20:01 /cache/ two  spaces\n\
                   -rw-r--r--    1 0        0               7 Nov  9  2024 /cache/.dot\n\
                   -rw-------    1 0        0               9 Nov 29 20:01 /cache/.incoming-1\n\
                   drwxr-xr-x    2 0        0            4096 Nov 29 19:00 /cache/.access\n";
        let now = crate::cache::format::days_from_civil(2026, 11, 29) as u64 * 86_400_000
            + 21 * 3_600_000;
        let listing = parse_listing(out, now);
        let entries = &listing.entries;
        let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["b-key", " two  spaces", ".dot"]);
        assert_eq!(listing.staged.len(), 1);
        assert_eq!(
            (listing.staged[0].key.as_str(), listing.staged[0].size),
            (".incoming-1", 9)
        );
        assert_eq!(entries[0].size, 1234);
        assert!(entries[0].stored_ms > entries[1].stored_ms);
        let expected = crate::cache::format::days_from_civil(2026, 11, 29) as u64 * 86_400_000
            + (20 * 60 + 1) * 60_000;
        assert_eq!(entries[0].stored_ms, expected);
        assert_eq!(entries[0].accessed_ms, entries[0].stored_ms);
    }

    #[test]
    fn names_are_quoted_for_batch_commands() {
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("q\"u\\o*te"), "\"q\\\"u\\\\o*te\"");
    }

    #[test]
    fn the_reason_is_ssh_s_not_sftp_s() {
        let stderr =
            "ssh: connect to host 127.0.0.1 port 9: Connection refused\r\nConnection closed\n";
        assert_eq!(
            reason(stderr),
            "connect to host 127.0.0.1 port 9: Connection refused"
        );
        assert_eq!(
            reason("remote open: No such file\n"),
            "remote open: No such file"
        );
    }
}
