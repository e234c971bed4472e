//! `make bench` (cache part): `cache store` then `cache restore` of a tree
//! of 20,000 files totalling 200 MB, in a job of the release agent (`agent
//! run`, its local cache in a scratch data directory; then an SFTP cache on
//! a loopback sshd when this machine can run one), against
//! `tar -c | zstd -1` plus `zstd -d | tar -x` of the same tree. Target: at
//! most 1.5 times the baseline. Also a restore miss and a `has_key` answer
//! on the local cache, each under 50 ms, and the same two over SFTP
//! (printed, no target: each is an ssh connection). Then the same through a
//! three-node Garage cluster on loopback (S3, when `garage` is installed):
//! the same ratio target, lookups under 50 ms, and the agent's peak RSS
//! during the runs under 16 MiB.
//!
//! Times inside the job are taken by the job itself (`date +%s%N` around
//! each command), so the job's start and the agent's own steps are not
//! counted. Each figure is the median of `RUNS` runs, agent and baseline
//! interleaved run by run, each timed step after a `sync` (untimed), so
//! that neither pays for the other's dirty pages. A missed target prints `MISSED`; a run that fails prints
//! `ERROR` and the process exits 1.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The binary measured, as in the main bench.
#[path = "bench/binary.rs"]
mod binary;
use binary::agent_binary;

const N_FILES: usize = 20_000;
/// The mean file size.
const FILE_BYTES: usize = 10_000;
const RUNS: usize = 3;
const RATIO_TARGET: f64 = 1.5;
const LOOKUP_TARGET: Duration = Duration::from_millis(50);
const RSS_TARGET_KIB: u64 = 16 * 1024;

/// The tests' Garage cluster (tests/support/garage.rs).
#[path = "../tests/support/garage.rs"]
#[allow(dead_code)]
mod garage;

/// What garage.rs's test gate calls: a bench skips by saying so.
mod skip {
    pub fn skip(reason: &str) -> bool {
        println!("  s3: SKIPPED ({reason})");
        false
    }
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "cache".contains(f.as_str())) {
        return;
    }
    println!("== cache store and restore ==");
    println!("{}", binary::binary_line());
    let scratch = tempfile::Builder::new()
        .prefix("agent-cache-bench-")
        .tempdir()
        .expect("a scratch directory");
    let tree = scratch.path().join("src/tree");
    make_tree(&tree);
    println!(
        "  tree: {N_FILES} files of {SIZES:?} bytes in turn ({} MB), text-like, random and repetitive",
        N_FILES * FILE_BYTES / 1_000_000
    );
    let mut failed = false;
    let local = run_backend(scratch.path(), "local", &[]);
    failed |= report("local", &local);
    if let Ok(r) = &local {
        report_lookups("the local cache", r);
    }
    match Sftp::start(scratch.path()) {
        Ok(sftp) => {
            let r = run_backend(scratch.path(), "sftp", &sftp.env());
            failed |= report("sftp on loopback", &r);
            // No target: each lookup is an ssh connection of its own.
            if let Ok(r) = &r {
                for (what, took) in [("restore miss", r.miss), ("has_key", r.has_key)] {
                    println!(
                        "  {what} over sftp on loopback: {} (one ssh connection; the target is the local cache's)",
                        ms(took)
                    );
                }
            }
        }
        Err(why) => println!("  sftp: SKIPPED ({why})"),
    }
    match garage::binary() {
        Some(bin) => {
            let cluster = garage::Garage::start_with(bin);
            let env = vec![
                ("SEMAPHORE_CACHE_BACKEND", "s3".to_string()),
                ("SEMAPHORE_CACHE_S3_BUCKET", garage::BUCKET.to_string()),
                ("SEMAPHORE_CACHE_S3_URL", cluster.url(0)),
                ("SEMAPHORE_CACHE_S3_KEY", cluster.key_id.clone()),
                ("SEMAPHORE_CACHE_S3_SECRET", cluster.secret.clone()),
                ("AWS_REGION", garage::REGION.to_string()),
                ("SEMAPHORE_PROJECT_ID", "bench".to_string()),
            ];
            let r = run_backend(scratch.path(), "s3", &env);
            failed |= report("s3 on a 3-node garage cluster", &r);
            if let Ok(r) = &r {
                report_lookups("s3", r);
                let verdict = if r.peak_rss_kib <= RSS_TARGET_KIB {
                    "ok"
                } else {
                    "MISSED"
                };
                println!(
                    "  the agent's peak RSS during the s3 runs: {:.1} MiB (target <= {} MiB) {verdict}",
                    r.peak_rss_kib as f64 / 1024.0,
                    RSS_TARGET_KIB / 1024
                );
            }
        }
        None => println!("  s3: SKIPPED (no garage binary: cargo install garage --locked)"),
    }
    if failed {
        std::process::exit(1);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// File sizes, in turn: a mean of `FILE_BYTES`, so the tree is 200 MB.
const SIZES: [usize; 5] = [200, 1_000, 4_000, 10_000, 34_800];

/// Mixed sizes (`SIZES`) and contents, in turn: text-like (a small
/// alphabet, random order; zstd -1 packs it to about half, as source trees
/// and dependency caches), random bytes (incompressible, as archives and
/// images), and one repeated line (as generated files and logs).
fn make_tree(tree: &Path) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"abcdefghijklmnopqrstuvwxyz      \n{}();=._ABCDEFGH0123";
    let line = b"export const value = compute(input, options); // generated\n";
    for i in 0..N_FILES {
        let dir = tree.join(format!("d{:03}", i / 200));
        if i % 200 == 0 {
            fs::create_dir_all(&dir).expect("create the tree");
        }
        let size = SIZES[i % SIZES.len()];
        let buf: Vec<u8> = match i % 3 {
            0 => (0..size)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect(),
            1 => (0..size).map(|_| next() as u8).collect(),
            _ => line.iter().copied().cycle().take(size).collect(),
        };
        fs::write(dir.join(format!("f{i:05}.dat")), &buf).expect("write the tree");
    }
}

fn sh(script: &str, dir: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(started.elapsed())
}

/// One run of `tar -c | zstd -1` and one of `zstd -d | tar -x`.
fn baseline_once(scratch: &Path) -> Result<(Duration, Duration), String> {
    let src = scratch.join("src");
    let out = scratch.join("baseline-out");
    let archive = scratch.join("baseline.tar.zst");
    let _ = fs::remove_file(&archive);
    sh("sync", scratch)?;
    let pack = sh(
        &format!("tar -cf - tree | zstd -1 -q -o {}", archive.display()),
        &src,
    )?;
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    sh("sync", scratch)?;
    let unpack = sh(
        &format!("zstd -d -q -c {} | tar -xf -", archive.display()),
        &out,
    )?;
    let _ = fs::remove_dir_all(&out);
    let _ = fs::remove_file(&archive);
    Ok((pack, unpack))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Measured {
    store: Duration,
    restore: Duration,
    miss: Duration,
    has_key: Duration,
    archive_bytes: u64,
    /// The highest RSS of the agent (`agent run`, which serves the job's
    /// cache) seen while the jobs ran.
    peak_rss_kib: u64,
    /// The baseline's pack and unpack, run between the agent's runs.
    baseline: (Duration, Duration),
}

/// A command timed by the job: prints `<label> <nanoseconds>`.
fn timed(label: &str, command: &str) -> Value {
    json!({ "directive": format!(
        "s=$(date +%s%N); {command} >/dev/null || exit 1; e=$(date +%s%N); echo \"{label} $((e - s))\""
    ) })
}

/// Runs RUNS jobs, each storing and restoring the tree, and takes medians.
fn run_backend(scratch: &Path, name: &str, env: &[(&str, String)]) -> Result<Measured, String> {
    let (mut stores, mut restores, mut misses, mut has) = (vec![], vec![], vec![], vec![]);
    let (mut packs, mut unpacks) = (vec![], vec![]);
    let mut archive_bytes = 0;
    let mut peak_rss_kib = 0;
    let src = scratch.join("src");
    for run in 0..RUNS {
        // Interleaved, so that a change in the machine's load hits both.
        let (pack, unpack) = baseline_once(scratch)?;
        packs.push(pack);
        unpacks.push(unpack);
        let key = format!("bench-{name}-{run}");
        let work = scratch.join(format!("work-{name}"));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let env_vars: Vec<Value> = env
            .iter()
            .map(|(k, v)| json!({ "name": k, "value": b64(v.as_bytes()) }))
            .collect();
        let job = json!({
            "job_id": format!("bench-cache-{name}-{run}"),
            "env_vars": env_vars,
            "commands": [
                { "directive": format!("cd {} && sync", src.display()) },
                timed("STORE", &format!("cache store {key} tree")),
                { "directive": format!("cd {} && sync", work.display()) },
                timed("RESTORE", &format!("cache restore {key}")),
                { "directive": format!("test $(find tree -type f | wc -l) = {N_FILES}") },
                timed("MISS", "cache restore no-such-key-anywhere"),
                timed("HASKEY", &format!("cache has_key {key}")),
                { "directive": "cache list | grep bench- | tail -n 1" },
            ],
        });
        let data = scratch.join(format!("data-{name}"));
        let job_file = scratch.join("job.json");
        fs::write(&job_file, job.to_string()).map_err(|e| e.to_string())?;
        let child = Command::new(agent_binary())
            .arg("run")
            .arg("--json")
            .arg("--data-dir")
            .arg(&data)
            .arg(&job_file)
            .env("HOME", scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("agent run: {e}"))?;
        let pid = child.id();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (out, peak) = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                let mut peak = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(rss_kib(pid));
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak
            });
            let out = child.wait_with_output();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (out, watcher.join().unwrap_or(0))
        });
        peak_rss_kib = peak_rss_kib.max(peak);
        let out = out.map_err(|e| format!("agent run: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut output = String::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            if v["event"] == "cmd_output" {
                output.push_str(v["output"].as_str().unwrap_or(""));
            }
        }
        if !out.status.success() {
            return Err(format!("{name}: the job failed:\n{output}"));
        }
        let get = |label: &str| -> Result<Duration, String> {
            output
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{label} ")))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .map(Duration::from_nanos)
                .ok_or_else(|| format!("{name}: no {label} figure in:\n{output}"))
        };
        stores.push(get("STORE")?);
        restores.push(get("RESTORE")?);
        misses.push(get("MISS")?);
        has.push(get("HASKEY")?);
        archive_bytes = output
            .lines()
            .find(|l| l.starts_with("bench-"))
            .map(|l| l.to_string())
            .map(|l| parse_human(&l))
            .unwrap_or(0);
        let _ = fs::remove_dir_all(&work);
    }
    Ok(Measured {
        store: median(stores),
        restore: median(restores),
        miss: median(misses),
        has_key: median(has),
        archive_bytes,
        peak_rss_kib,
        baseline: (median(packs), median(unpacks)),
    })
}

/// The resident set of a process, in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The size column of a `cache list` line (the toolbox's `91.3M`), in
/// bytes, approximately.
fn parse_human(line: &str) -> u64 {
    let Some(size) = line.split_whitespace().nth(1) else {
        return 0;
    };
    let (number, mult) = match size.char_indices().last() {
        Some((i, unit)) if unit.is_ascii_alphabetic() => {
            let power = "KMGTPE".find(unit).map_or(0, |p| p as i32 + 1);
            (&size[..i], 1024f64.powi(power))
        }
        _ => (size, 1.0),
    };
    (number.parse::<f64>().unwrap_or(0.0) * mult) as u64
}

/// A restore miss and a `has_key` on `on`, against the lookup target.
fn report_lookups(on: &str, r: &Measured) {
    for (what, took) in [("restore miss", r.miss), ("has_key", r.has_key)] {
        let verdict = if took <= LOOKUP_TARGET {
            "ok"
        } else {
            "MISSED"
        };
        println!(
            "  {what} on {on}: {} (target < {}) {verdict}",
            ms(took),
            ms(LOOKUP_TARGET)
        );
    }
}

/// Prints the figures; returns whether the run failed.
fn report(name: &str, r: &Result<Measured, String>) -> bool {
    match r {
        Err(e) => {
            println!("  {name}: ERROR: {e}");
            true
        }
        Ok(m) => {
            let base = m.baseline;
            println!(
                "  {name}: baseline tar -c | zstd -1 {} + zstd -d | tar -x {} = {}",
                ms(base.0),
                ms(base.1),
                ms(base.0 + base.1)
            );
            let total = m.store + m.restore;
            let ratio = total.as_secs_f64() / (base.0 + base.1).as_secs_f64();
            let verdict = if ratio <= RATIO_TARGET {
                "ok"
            } else {
                "MISSED"
            };
            println!(
                "  {name}: store {} + restore {} = {} (archive {:.0} MB); {ratio:.2}x the baseline (target <= {RATIO_TARGET}x) {verdict}",
                ms(m.store),
                ms(m.restore),
                ms(total),
                m.archive_bytes as f64 / 1e6
            );
            false
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A loopback sshd serving a chrooted `internal-sftp`, for the SFTP figure.
struct Sftp {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    port: u16,
    key: PathBuf,
}

impl Sftp {
    fn start(scratch: &Path) -> Result<Sftp, String> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n");
        if !Path::new("/usr/sbin/sshd").exists() || !root {
            return Err("needs /usr/sbin/sshd and root".into());
        }
        fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
        let dir = tempfile::Builder::new()
            .prefix("agent-cache-bench-sftp-")
            .tempdir_in("/run")
            .map_err(|e| e.to_string())?;
        let chroot = dir.path().join("root");
        fs::create_dir_all(chroot.join("cache")).map_err(|e| e.to_string())?;
        let keygen = |p: &PathBuf| {
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(p)
                .status()
                .map_err(|e| e.to_string())
        };
        let host = dir.path().join("host");
        let client = scratch.join("client-key");
        keygen(&host)?;
        keygen(&client)?;
        fs::copy(client.with_extension("pub"), dir.path().join("keys"))
            .map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let config = dir.path().join("config");
        let mut f = fs::File::create(&config).map_err(|e| e.to_string())?;
        write!(
            f,
            "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nStrictModes no\nUsePAM no\nPidFile {}\nSubsystem sftp internal-sftp\nChrootDirectory {}\nForceCommand internal-sftp\n",
            host.display(),
            dir.path().join("keys").display(),
            dir.path().join("pid").display(),
            chroot.display()
        )
        .map_err(|e| e.to_string())?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("sshd did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Sftp {
            child,
            _dir: dir,
            port,
            key: client,
        })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SEMAPHORE_CACHE_BACKEND", "sftp".into()),
            ("SEMAPHORE_CACHE_URL", format!("127.0.0.1:{}", self.port)),
            ("SEMAPHORE_CACHE_USERNAME", "root".into()),
            (
                "SEMAPHORE_CACHE_PRIVATE_KEY_PATH",
                self.key.to_string_lossy().into_owned(),
            ),
        ]
    }
}

impl Drop for Sftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
