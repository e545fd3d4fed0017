//! Owns reading a process's state from /proc (RSS, threads, CPU affinity, fds) and this process's
//! RLIMIT_NOFILE. Must not signal or change other processes; only ever raises our own soft limit.

use std::sync::Once;
use std::time::Duration;

use super::wait_until;

pub fn proc_status_field(path: &str, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .map(|l| l[field.len() + 1..].trim().to_string())
}

/// A "Field:   N kB" line of a /proc file (status, smaps_rollup), in KiB.
pub fn proc_kb(path: &str, field: &str) -> u64 {
    let v = proc_status_field(path, field)
        .unwrap_or_else(|| panic!("no {field} in {path} (process gone?)"));
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unparsable {field} {v:?} in {path}"))
}

/// VmRSS of a process in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    proc_kb(&format!("/proc/{pid}/status"), "VmRSS")
}

/// (tid, comm) of every thread of a process.
pub fn thread_list(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let dir = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"));
    for e in dir.flatten() {
        let tid: u32 = match e.file_name().to_str().and_then(|s| s.parse().ok()) {
            Some(t) => t,
            None => continue,
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        out.push((tid, comm));
    }
    out.sort();
    out
}

pub fn thread_cpus_allowed(pid: u32, tid: u32) -> String {
    proc_status_field(
        &format!("/proc/{pid}/task/{tid}/status"),
        "Cpus_allowed_list",
    )
    .unwrap_or_else(|| panic!("no Cpus_allowed_list for thread {tid} of {pid}"))
}

/// io_uring usable per /proc/sys/kernel/io_uring_disabled (0 or absent).
pub fn io_uring_allowed() -> bool {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(s) => s.trim() == "0",
        Err(_) => true,
    }
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
}

/// Waits (up to `timeout`) for the process's fd count to drop to `max` or below; returns
/// the last count seen.
pub fn wait_fds_at_most(pid: u32, max: usize, timeout: Duration) -> usize {
    let mut n = fd_count(pid);
    wait_until(timeout, || {
        n = fd_count(pid);
        n <= max
    });
    n
}

/// The soft RLIMIT_NOFILE of this process and so of every gateway it starts. The one test process
/// holds the sockets of all tests running at the time (exhaustion.rs's flood alone ~2,300), and a
/// gateway inherits the limit: set before the first start, not whenever exhaustion.rs happens to run.
const TEST_NOFILE: u64 = 8192;

/// Raises the soft RLIMIT_NOFILE to [`TEST_NOFILE`] the first time it is called.
pub(super) fn raise_nofile_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        raise_nofile(TEST_NOFILE);
    });
}

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (bounded by the hard limit);
/// returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < want {
            rl.rlim_cur = want.min(rl.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        }
    }
    rl.rlim_cur
}
