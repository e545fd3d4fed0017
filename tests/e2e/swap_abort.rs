//! A config swap that one shard cannot prepare is aborted on every shard, against the real
//! binary: one shard thread is stopped (ptrace), as a wedged event loop would leave it; an admin
//! change and a SIGHUP reload both fail after the prepare wait with the old generation serving
//! everywhere and the failures counted; once the shard runs again, changes go through.

use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::ops::{self, http_within, Proc};
use crate::harness::prometheus;
use crate::harness::{route, server, upstream, wait_until, Client, Origin, Resp};

const KEY: &str = "admin-key-0123456789";

fn cfg(to: &str, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\nkey = \"{KEY}\"\n\n{}{}{}",
        server(&[("workers", "2")]),
        upstream("a", &[a], ""),
        upstream("b", &[b], ""),
        route("r", &["/*"], to, "")
    )
}

/// Stops one thread of the gateway until dropped. ptrace works per thread: the shard's thread
/// stops while the rest of the process (the other shard, admin, status) runs on. Every call
/// must come from the thread that attached, so this stays on the test's thread.
struct Stopped(libc::pid_t);

impl Stopped {
    fn thread(pid: u32, name: &str) -> Stopped {
        let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
            .find(|t| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm"))
                    .is_ok_and(|c| c.trim() == name)
            })
            .unwrap_or_else(|| panic!("no thread {name} in {pid}"));
        let os = std::io::Error::last_os_error;
        // SAFETY: plain syscalls on a thread of our own child process.
        unsafe {
            let none = std::ptr::null_mut::<libc::c_void>();
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, none, none),
                0,
                "seize: {}",
                os()
            );
            assert_eq!(
                libc::ptrace(libc::PTRACE_INTERRUPT, tid, none, none),
                0,
                "interrupt: {}",
                os()
            );
            let mut status = 0;
            assert_eq!(
                libc::waitpid(tid, &mut status, libc::__WALL),
                tid,
                "wait: {}",
                os()
            );
        }
        let state = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
        assert!(state.contains(") t "), "{name} not stopped: {state}");
        Stopped(tid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: detaching the thread this test attached to (it is in a ptrace stop).
        unsafe {
            let none = std::ptr::null_mut::<libc::c_void>();
            libc::ptrace(libc::PTRACE_DETACH, self.0, none, none);
        }
    }
}

fn status(at: SocketAddr) -> serde_json::Value {
    let (code, body) = ops::get(at, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Each shard's (generation, requests served), once every shard answers.
fn shards(at: SocketAddr) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        let s = status(at);
        out = s["per_shard"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["generation"].as_u64().unwrap(),
                    p["requests"].as_u64().unwrap(),
                )
            })
            .collect();
        out.len() == 2
    }));
    out
}

/// Twenty fresh connections (spread over both shards by the kernel); their bodies.
fn bodies(gw: SocketAddr) -> Vec<String> {
    (0..20)
        .map(|_| Client::connect(gw).get("/x").body_str())
        .collect()
}

#[test]
fn a_swap_one_shard_cannot_prepare_is_aborted_on_every_shard() {
    let a = Origin::start("a", |_| Resp::text(200, "from-a").into());
    let b = Origin::start("b", |_| Resp::text(200, "from-b").into());
    let p = Proc::start("swap-abort", &cfg("a", a.addr, b.addr));
    let stat = ops::listener(&p.logs, "status");
    let adm = ops::listener(&p.logs, "admin");
    assert_eq!(shards(stat), [(1, 0), (1, 0)]);
    let put = |upstream: &str, limit: Duration| {
        let (code, body) = http_within(
            limit,
            adm,
            "PUT",
            "/apisix/admin/routes/r",
            &[("X-API-KEY", KEY), ("Content-Type", "application/json")],
            &format!(r#"{{"paths":["/*"],"upstream":"{upstream}"}}"#),
        );
        (
            code,
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        )
    };

    let stopped = Stopped::thread(p.pid, "ringway-shard-1");
    // Admin API: shard 0 prepares, shard 1 never answers; after the prepare wait (10 s) the
    // swap is aborted and the change refused with 503.
    let (code, v) = put("b", Duration::from_secs(30));
    assert_eq!(code, 503, "{v}");
    let msg = v["error_msg"].as_str().unwrap();
    assert!(
        msg.contains("generation 2 aborted")
            && msg.contains("shard(s) [1] did not answer")
            && msg.contains("config generation 1 keeps running"),
        "{msg}"
    );
    // SIGHUP with a file that changes the route: aborted the same way, and said so.
    p.rewrite(&cfg("b", a.addr, b.addr));
    p.signal("HUP");
    let line = p
        .logs
        .wait_for(
            |l| l.contains("SIGHUP") && l.contains("keeping config generation"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| panic!("no SIGHUP outcome:\n{}", p.logs.text()));
    assert!(
        line.contains("generation 2 aborted") && line.contains("keeping config generation 1"),
        "{line}"
    );
    drop(stopped);

    // The stopped shard now reads its late prepare and the abort after it; nothing switched.
    let before = shards(stat);
    assert!(before.iter().all(|s| s.0 == 1), "{before:?}");
    assert!(bodies(p.addr).iter().all(|b| b == "from-a"));
    let after = shards(stat);
    assert!(after.iter().all(|s| s.0 == 1), "{after:?}");
    for (s, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a.1 > b.1,
            "shard {s} served none of the requests: {after:?}"
        );
    }
    let samples = prometheus::scrape(stat);
    assert_eq!(
        prometheus::value(&samples, "ringway_config_generation", &[]),
        1.0
    );
    let reloads = |result| {
        prometheus::value(
            &samples,
            "ringway_config_reloads_total",
            &[("result", result)],
        )
    };
    assert_eq!((reloads("ok"), reloads("error")), (0.0, 2.0));
    assert!(p.logs.text().contains("aborted on every shard"));

    // Both shards answer again: the same change goes through (as generation 2) everywhere.
    let (code, v) = put("b", Duration::from_secs(10));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["config_generation"], 2, "{v}");
    assert!(bodies(p.addr).iter().all(|b| b == "from-b"));
    assert!(shards(stat).iter().all(|s| s.0 == 2));
}
