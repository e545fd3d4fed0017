//! Thread-per-core runtime: shard threads, CPU pinning, io_uring / legacy driver, and the
//! options of the sockets a shard accepts.
use crate::harness::*;
use std::time::Duration;

fn shard_threads(gw: &Gateway) -> Vec<(u32, String)> {
    gw.threads()
        .into_iter()
        .filter(|(_, n)| n.starts_with("ringway-shard-"))
        .collect()
}

fn wait_shard_lines(gw: &Gateway, n: usize) -> Vec<String> {
    let lines = gw.stderr.wait_for_n(
        |l| l.contains("shard ") && l.contains(" started"),
        n,
        Duration::from_secs(5),
    );
    assert!(
        lines.len() >= n,
        "expected {n} `shard N started: cpu X, driver Y` lines, stderr:\n{}",
        gw.logs()
    );
    lines
}

fn line_for_shard(lines: &[String], i: usize) -> &str {
    lines
        .iter()
        .find(|l| l.contains(&format!("shard {i} started")))
        .unwrap_or_else(|| panic!("no `shard {i} started` line in {lines:?}"))
}

#[test]
fn two_pinned_shards() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        // driver named (ringway's default) so RINGWAY_TEST_DRIVER does not change what is checked.
        &[
            ("workers", "2"),
            ("cpu_affinity", "[0, 1]"),
            ("driver", "\"auto\""),
        ],
    ));
    let lines = wait_shard_lines(&gw, 2);
    assert!(
        wait_until(Duration::from_secs(3), || shard_threads(&gw).len() == 2),
        "expected exactly 2 ringway-shard-N threads, threads: {:?}",
        gw.threads()
    );
    let threads = shard_threads(&gw);
    for i in 0..2u32 {
        let (tid, _) = threads
            .iter()
            .find(|(_, n)| n == &format!("ringway-shard-{i}"))
            .unwrap_or_else(|| panic!("no thread named ringway-shard-{i}: {threads:?}"));
        let cpus = thread_cpus_allowed(gw.pid, *tid);
        assert_eq!(cpus, i.to_string(), "ringway-shard-{i} Cpus_allowed_list");
        let line = line_for_shard(&lines, i as usize);
        assert!(
            line.contains(&format!("cpu {i}")),
            "shard {i} line should say `cpu {i}`: {line}"
        );
        if io_uring_allowed() {
            assert!(
                line.contains("driver io_uring"),
                "io_uring is enabled on this kernel; shard {i} line: {line}"
            );
        } else {
            assert!(
                line.contains("driver legacy"),
                "io_uring disabled; shard {i} line: {line}"
            );
        }
    }
    // Both shards are able to serve: many connections all succeed.
    for i in 0..40 {
        let r = one_shot(gw.addr, get_req(&format!("/{i}"), "example.com"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("/{i}"));
    }
}

#[test]
fn legacy_driver_serves() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[("driver", "\"legacy\"")]));
    let lines = wait_shard_lines(&gw, 1);
    assert!(
        lines[0].contains("driver legacy"),
        "driver = legacy but: {}",
        lines[0]
    );
    let mut c = gw.client();
    for i in 0..20 {
        let body = format!("legacy-{i}");
        let r = c.request(format!(
            "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), body);
    }
}

#[test]
fn io_uring_driver_explicit() {
    if !io_uring_allowed() {
        // Kernel forbids io_uring: explicit io_uring must then fail to start or
        // fall back loudly; asserting on the fallback line.
        let out = {
            let tmp = TempFile::new(&simple_config(closed_port(), &[("driver", "\"io_uring\"")]));
            run_cli(&["check", "-c", tmp.path_str()], Duration::from_secs(10))
        };
        assert!(
            out.status.success(),
            "driver = io_uring is a valid config: {}",
            out.all()
        );
        return;
    }
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[("driver", "\"io_uring\"")]));
    let lines = wait_shard_lines(&gw, 1);
    assert!(
        lines[0].contains("driver io_uring"),
        "driver = io_uring: {}",
        lines[0]
    );
    assert_eq!(
        one_shot(gw.addr, get_req("/u", "example.com")).body_str(),
        "/u"
    );
}

#[test]
fn every_io_uring_taskrun_mode_serves_keepalive_requests() {
    let origin = Origin::echo_body("o");
    for mode in ["coop", "defer", "kernel"] {
        let gw = Gateway::start(&simple_config(
            origin.addr,
            &[
                ("workers", "2"),
                ("io_uring_taskrun", &format!("\"{mode}\"")),
                // ringway's default, named so RINGWAY_TEST_DRIVER does not change the test.
                ("driver", "\"auto\""),
            ],
        ));
        let lines = wait_shard_lines(&gw, 2);
        if io_uring_allowed() {
            // The mode is in force, or the kernel refused it and said so.
            let taken = lines
                .iter()
                .all(|l| l.contains(&format!("driver io_uring (taskrun {mode})")));
            assert!(
                taken || gw.logs().contains("refused by the kernel"),
                "io_uring_taskrun = {mode}: {lines:?}"
            );
        }
        // Several connections (both shards), five keep-alive requests each.
        for c in 0..6 {
            let mut cl = gw.client();
            for i in 0..5 {
                let body = format!("{mode}-{c}-{i}");
                let r = cl.request(format!(
                    "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
                assert_eq!((r.status, r.body_str()), (200, body));
            }
        }
    }
}

#[test]
fn unknown_io_uring_taskrun_is_refused_with_its_key() {
    let tmp = TempFile::new(&simple_config(
        closed_port(),
        &[("io_uring_taskrun", "\"fast\"")],
    ));
    let out = run_cli(&["check", "-c", tmp.path_str()], Duration::from_secs(10));
    assert!(!out.status.success(), "{}", out.all());
    assert!(
        out.all().contains("server.io_uring_taskrun")
            && out.all().contains("\"coop\", \"defer\" or \"kernel\""),
        "{}",
        out.all()
    );
}

#[test]
fn shard_line_cpu_matches_actual_affinity_without_cpu_affinity() {
    // cpu_affinity left out: whatever the gateway chooses, the `cpu X` / `cpu none`
    // it reports must match the thread's real affinity.
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[("workers", "1")]));
    let lines = wait_shard_lines(&gw, 1);
    let line = line_for_shard(&lines, 0);
    assert!(
        wait_until(Duration::from_secs(3), || shard_threads(&gw).len() == 1),
        "expected one ringway-shard-0 thread: {:?}",
        gw.threads()
    );
    let (tid, _) = shard_threads(&gw)[0].clone();
    let cpus = thread_cpus_allowed(gw.pid, tid);
    let process_cpus = proc_status_field(
        &format!("/proc/{}/status", std::process::id()),
        "Cpus_allowed_list",
    )
    .expect("own Cpus_allowed_list");
    if line.contains("cpu none") {
        assert_eq!(
            cpus, process_cpus,
            "shard says `cpu none` but its affinity is {cpus}: {line}"
        );
    } else {
        assert!(
            line.contains(&format!("cpu {cpus}")),
            "shard line {line:?} vs actual Cpus_allowed_list {cpus}"
        );
    }
    assert_eq!(one_shot(gw.addr, get_req("/n", "example.com")).status, 200);
}

#[test]
fn cpu_affinity_naming_missing_cpu_is_rejected() {
    let tmp = TempFile::new(&simple_config(closed_port(), &[("cpu_affinity", "[4096]")]));
    let out = run_cli(&["check", "-c", tmp.path_str()], Duration::from_secs(10));
    assert!(
        !out.status.success(),
        "cpu_affinity = [4096] accepted:\n{}",
        out.all()
    );
    assert!(
        out.stderr.contains("server.cpu_affinity"),
        "stderr must name server.cpu_affinity:\n{}",
        out.stderr
    );
}

#[test]
fn auto_workers_start_and_serve() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[("workers", "\"auto\"")]));
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    wait_shard_lines(&gw, ncpu);
    assert!(
        wait_until(Duration::from_secs(3), || shard_threads(&gw).len() == ncpu),
        "workers = auto on {ncpu} CPUs: shard threads {:?}",
        shard_threads(&gw)
    );
    assert_eq!(one_shot(gw.addr, get_req("/a", "example.com")).status, 200);
}

#[test]
fn idle_gateway_memory_is_modest() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[("workers", "2")]));
    assert_eq!(one_shot(gw.addr, get_req("/", "example.com")).status, 200);
    let rss = gw.rss_kb();
    assert!(rss < 64 * 1024, "idle 2-shard gateway uses {rss} KiB RSS");
}

/// Transparent huge pages are off for the gateway (src/main.rs `no_huge_pages`): mimalloc's arena
/// was madvised for them, so a connection burst left whole 2 MiB pages resident that its purge
/// could not return (perf/RESULTS.md, issue 21m). Here 200 keep-alive connections each serve a
/// request and stay open: none of the gateway's memory is in huge pages.
#[test]
fn the_gateway_uses_no_transparent_huge_pages() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[("workers", "1")]));
    let mut clients: Vec<Client> = (0..200).map(|_| Client::connect(gw.addr)).collect();
    for c in &mut clients {
        c.send(get_req("/", "example.com"));
    }
    for c in &mut clients {
        assert_eq!(c.read_response().status, 200);
    }
    // Kernels since 6.x show the process's THP switch; older ones only the pages themselves.
    if let Some(on) = proc_status_field(&format!("/proc/{}/status", gw.pid), "THP_enabled") {
        assert_eq!(on, "0", "THP_enabled of the gateway");
    }
    let huge = proc_kb(&format!("/proc/{}/smaps_rollup", gw.pid), "AnonHugePages");
    assert_eq!(huge, 0, "gateway memory in transparent huge pages (KiB)");
    drop(clients);
}

/// Times each thread has been scheduled in (`/proc/<pid>/task/<tid>/schedstat`, third field):
/// one per wake-up for a thread that otherwise sleeps.
fn scheduled_in(pid: u32, tid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .unwrap_or_else(|e| panic!("read schedstat of thread {tid}: {e}"));
    s.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected schedstat line {s:?}"))
}

#[test]
fn idle_gateway_threads_sleep_and_wake_for_traffic() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[("workers", "2")]));
    wait_shard_lines(&gw, 2);
    // One request and its connection gone, so every per-connection timer has come and gone.
    assert_eq!(one_shot(gw.addr, get_req("/", "example.com")).status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let watched: Vec<(u32, String)> = gw
        .threads()
        .into_iter()
        .filter(|(_, n)| n.starts_with("ringway-shard-") || n == "ringway-health")
        .collect();
    assert_eq!(watched.len(), 3, "threads: {:?}", gw.threads());
    let before: Vec<u64> = watched
        .iter()
        .map(|(t, _)| scheduled_in(gw.pid, *t))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for ((tid, name), b) in watched.iter().zip(before) {
        let woke = scheduled_in(gw.pid, *tid) - b;
        // Ticking timers woke each shard ~120 times a second and the prober 20 times; idle now
        // means a 1 s control tick and a sweeper that dozes.
        assert!(
            woke < 40,
            "{name} woke {woke} times in 2 s with no connections"
        );
    }
    // Asleep, and still serving: the first connection rings the control loop awake.
    let mut c = gw.client();
    for i in 0..3 {
        let r = c.request(get_req(&format!("/after-idle-{i}"), "example.com"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("/after-idle-{i}"));
    }
}

/// The gateway's own end of a client connection (`peer` is the client's address), borrowed from
/// the gateway process with pidfd_getfd(2); `None` until the shard has accepted it.
fn gateway_end(pid: u32, peer: std::net::SocketAddr) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; nothing is borrowed.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `pidfd` was just returned by pidfd_open and is owned here only.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as libc::c_int) };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    for e in fds.flatten() {
        let Some(target) = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        let is_socket =
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and flags, and
        // returns a new descriptor of ours (a duplicate) or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                target,
                0,
            )
        };
        assert!(
            fd >= 0,
            "pidfd_getfd on the gateway (the test needs to be allowed to ptrace its child): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` was just returned by pidfd_getfd and is owned here only.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) };
        let at = socket2::SockRef::from(&fd).peer_addr().ok();
        if at.and_then(|a| a.as_socket()) == Some(peer) {
            return Some(fd);
        }
    }
    None
}

/// net/listen.rs sets TCP_NODELAY once on each listening socket instead of once per accepted
/// connection, because Linux copies it to every socket accepted from that listener: this reads it
/// on the gateway's own end of a real connection (both drivers: RINGWAY_TEST_DRIVER).
#[test]
fn accepted_connections_have_nodelay_from_their_listener() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    for _ in 0..3 {
        let client = std::net::TcpStream::connect(gw.addr).expect("connect");
        let me = client.local_addr().expect("local address");
        let mut fd = None;
        assert!(
            wait_until(Duration::from_secs(5), || {
                fd = gateway_end(gw.pid, me);
                fd.is_some()
            }),
            "the gateway has no socket connected to {me}"
        );
        let fd = fd.expect("found above");
        let nodelay = socket2::SockRef::from(&fd).nodelay().expect("getsockopt");
        assert!(
            nodelay,
            "TCP_NODELAY off on the accepted connection from {me}"
        );
    }
}
