//! Owns the ringway process under test: temp config files, `ringway run` and its stderr read line
//! by line, CLI runs (`check`), signals. Must not speak HTTP or build configs (client, config).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::Client;
use super::config::{configured_driver, with_test_driver};
use super::procfs::{raise_nofile_once, rss_kb, thread_list};

/// How long to wait for the gateway to print its listening line(s).
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// `ringway` (the binary cargo built for this test run), about to be spawned; every gateway and CLI
/// run starts here, after this process's fd limit is raised so that each child inherits the same.
pub(super) fn ringway_command() -> Command {
    raise_nofile_once();
    Command::new(env!("CARGO_BIN_EXE_ringway"))
}

static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temp file removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(contents: &str) -> TempFile {
        let n = TEMP_COUNTER.fetch_add(1, SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "ringway-test-{}-{}-{}.toml",
            std::process::id(),
            n,
            nanos
        ));
        std::fs::write(&path, contents).expect("write temp config file");
        TempFile { path }
    }
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("temp path is utf-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct LogState {
    lines: Vec<String>,
    eof: bool,
}

/// Lines read from a child's pipe by a background thread.
#[derive(Clone)]
pub struct LogLines {
    inner: Arc<(Mutex<LogState>, Condvar)>,
}

impl LogLines {
    pub fn spawn_reader<R: Read + Send + 'static>(mut r: R, tag: &'static str) -> LogLines {
        let inner = Arc::new((
            Mutex::new(LogState {
                lines: Vec::new(),
                eof: false,
            }),
            Condvar::new(),
        ));
        let inner2 = inner.clone();
        thread::Builder::new()
            .name(format!("log-{tag}"))
            .spawn(move || {
                let mut pending: Vec<u8> = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = match r.read(&mut buf) {
                        Ok(0) | Err(_) => 0,
                        Ok(n) => n,
                    };
                    let (lock, cv) = &*inner2;
                    let mut st = lock.lock().expect("log lock");
                    if n == 0 {
                        if !pending.is_empty() {
                            let line = String::from_utf8_lossy(&pending).into_owned();
                            eprintln!("[{tag}] {line}");
                            st.lines.push(line);
                        }
                        st.eof = true;
                        cv.notify_all();
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                        let raw: Vec<u8> = pending.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&raw[..raw.len() - 1])
                            .trim_end_matches('\r')
                            .to_string();
                        eprintln!("[{tag}] {line}");
                        st.lines.push(line);
                    }
                    cv.notify_all();
                }
            })
            .expect("spawn log reader thread");
        LogLines { inner }
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.inner.0.lock().expect("log lock").lines.clone()
    }

    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }

    /// Wait until at least `n` lines (from the start) satisfy `pred`; returns them.
    /// Returns what it found so far on timeout or EOF.
    pub fn wait_for_n(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().expect("log lock");
        loop {
            let found: Vec<String> = st.lines.iter().filter(|l| pred(l)).cloned().collect();
            if found.len() >= n || st.eof {
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                return found;
            }
            let step = (deadline - now).min(Duration::from_millis(100));
            st = cv.wait_timeout(st, step).expect("log condvar").0;
        }
    }

    pub fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_for_n(pred, 1, timeout).into_iter().next()
    }

    pub fn wait_eof(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().expect("log lock");
        while !st.eof {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = cv.wait_timeout(st, deadline - now).expect("log condvar").0;
        }
        true
    }
}

/// Parse the address out of a `... listening on 127.0.0.1:PORT ...` line.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let idx = line.find("listening on ")?;
    let rest = &line[idx + "listening on ".len()..];
    let rest = rest.strip_prefix("http://").unwrap_or(rest);
    let tok: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ';' && *c != ')' && *c != '"')
        .collect();
    tok.parse().ok()
}

/// `N` in a `listening on ADDR (N shards)` line.
fn shard_count(listening: &str) -> Option<usize> {
    let (_, rest) = listening.rsplit_once('(')?;
    rest.strip_suffix(" shards)")?.parse().ok()
}

/// Waits (until `deadline`) for the `shard I started: cpu C, driver D` line of each shard the
/// `listening` line announced, so a test's first request does not also time the gateway's
/// start-up. Where `config` says `driver = "legacy"` (every config does under
/// RINGWAY_TEST_DRIVER=legacy), each shard must name that driver: the variable cannot silently do
/// nothing. Err says what was missing.
pub(super) fn wait_shards_started(
    stderr: &LogLines,
    listening: &str,
    config: &str,
    deadline: Instant,
) -> Result<(), String> {
    let shards =
        shard_count(listening).ok_or_else(|| format!("no `(N shards)` in {listening:?}"))?;
    let lines = stderr.wait_for_n(
        |l| l.contains(" shard ") && l.contains(" started: "),
        shards,
        deadline.saturating_duration_since(Instant::now()),
    );
    if lines.len() < shards {
        return Err(format!(
            "{} of {shards} shards logged `shard N started` within {START_TIMEOUT:?}",
            lines.len()
        ));
    }
    if configured_driver(config).as_deref() == Some("legacy") {
        if let Some(l) = lines.iter().find(|l| !l.contains("driver legacy")) {
            return Err(format!("config says driver = \"legacy\", but: {l}"));
        }
    }
    Ok(())
}

pub struct Gateway {
    child: Child,
    pub pid: u32,
    /// First listener address.
    pub addr: SocketAddr,
    /// All listener addresses, in the order they were printed.
    pub addrs: Vec<SocketAddr>,
    pub stderr: LogLines,
    exit: Option<ExitStatus>,
    _config: TempFile,
}

impl Gateway {
    /// Start `ringway run -c <tmp>` with one listener and wait until it listens.
    pub fn start(config: &str) -> Gateway {
        Self::start_with_listeners(config, 1)
    }

    /// Start with `listeners` listen addresses, wait for as many `listening on` lines and for
    /// every shard to start. The config passes through [`with_test_driver`] first.
    pub fn start_with_listeners(config: &str, listeners: usize) -> Gateway {
        let config = &with_test_driver(config);
        let cfg = TempFile::new(config);
        let mut child = ringway_command()
            .args(["run", "-c", cfg.path_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringway binary");
        let pid = child.id();
        let stderr =
            LogLines::spawn_reader(child.stderr.take().expect("child stderr pipe"), "ringway");
        let deadline = Instant::now() + START_TIMEOUT;
        let mut found: Vec<String>;
        loop {
            found = stderr.wait_for_n(
                |l| parse_listening_line(l).is_some(),
                listeners,
                Duration::from_millis(200),
            );
            if found.len() >= listeners {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                stderr.wait_eof(Duration::from_secs(2));
                panic!(
                    "ringway exited ({status}) before printing {listeners} `listening on` line(s).\nconfig:\n{config}\nstderr:\n{}",
                    stderr.text()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ringway did not print {listeners} `listening on ADDR` line(s) within {START_TIMEOUT:?}.\nconfig:\n{config}\nstderr:\n{}",
                    stderr.text()
                );
            }
        }
        let addrs: Vec<SocketAddr> = found
            .iter()
            .map(|l| parse_listening_line(l).expect("listening line parses"))
            .collect();
        for a in &addrs {
            assert_ne!(
                a.port(),
                0,
                "gateway printed port 0 instead of the real port: {found:?}"
            );
        }
        if let Err(e) = wait_shards_started(&stderr, &found[0], config, deadline) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{e}\nconfig:\n{config}\nstderr:\n{}", stderr.text());
        }
        Gateway {
            child,
            pid,
            addr: addrs[0],
            addrs,
            stderr,
            exit: None,
            _config: cfg,
        }
    }

    pub fn send_signal(&self, sig: &str) {
        send_signal(self.pid, sig);
    }

    pub fn send_sigterm(&self) {
        self.send_signal("TERM");
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.exit = Some(st);
                    return self.exit;
                }
                Ok(None) => {}
                Err(e) => panic!("try_wait on ringway failed: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.pid)
    }

    pub fn threads(&self) -> Vec<(u32, String)> {
        thread_list(self.pid)
    }

    pub fn logs(&self) -> String {
        self.stderr.text()
    }

    /// The config file it runs on (a binary upgrade's successor reads the same path).
    pub fn config_path(&self) -> &Path {
        &self._config.path
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn send_signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("run `kill` to signal ringway");
    assert!(st.success(), "kill -{sig} {pid} failed: {st}");
}

/// Output of a finished CLI invocation.
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Run `ringway ARGS...` to completion (killed + panics after `timeout`).
pub fn run_cli(args: &[&str], timeout: Duration) -> CliOutput {
    let mut child = ringway_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringway binary");
    let out = LogLines::spawn_reader(child.stdout.take().expect("stdout pipe"), "ringway-stdout");
    let err = LogLines::spawn_reader(child.stderr.take().expect("stderr pipe"), "ringway-stderr");
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => panic!("try_wait: {e}"),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`ringway {}` did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                out.text(),
                err.text()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    out.wait_eof(Duration::from_secs(2));
    err.wait_eof(Duration::from_secs(2));
    CliOutput {
        status,
        stdout: out.text(),
        stderr: err.text(),
    }
}

/// Run `ringway check -c <tmp>` on a config string.
pub fn check_config(config: &str) -> CliOutput {
    let cfg = TempFile::new(config);
    run_cli(&["check", "-c", cfg.path_str()], Duration::from_secs(10))
}

pub fn check_config_file(path: &Path) -> CliOutput {
    run_cli(
        &["check", "-c", path.to_str().expect("utf-8 path")],
        Duration::from_secs(10),
    )
}

/// `ringway check` refuses `cfg`, and its output names each of `want`.
pub fn assert_config_rejected(cfg: &str, want: &[&str]) {
    let out = check_config(cfg);
    assert!(!out.status.success(), "accepted:\n{cfg}");
    for w in want {
        assert!(out.all().contains(w), "want {w:?} in:\n{}", out.all());
    }
}
