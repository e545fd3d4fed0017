//! Running on a node: the systemd unit (checked by `systemd-analyze verify` where installed),
//! the .deb built from the cargo-deb metadata by config/debian/build-deb.sh, the open-files
//! limit at start, and SIGUSR2 upgrades with sd_notify.

use crate::harness::*;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn the_systemd_unit_has_what_a_node_needs_and_verifies() {
    let unit = std::fs::read_to_string(repo("config/ringway.service")).expect("unit");
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecStartPre=/usr/bin/ringway check -c /etc/ringway/ringway.toml",
        "ExecStart=/usr/bin/ringway run -c /etc/ringway/ringway.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=1048576",
        "RuntimeDirectory=ringway",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line:?}");
    }
    assert!(
        unit.contains("kill -s USR2"),
        "the upgrade path is documented in the unit"
    );
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed (Debian package `systemd`): static checks only");
        return;
    };
    assert!(out.status.success());
    // verify wants the executables to exist: the unit as installed, pointing at this build.
    let dir = std::env::temp_dir().join(format!("ringway-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("ringway.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/ringway", env!("CARGO_BIN_EXE_ringway")),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    // It exits 0 on unknown keys and bad values too, and says so: any word about the unit fails.
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("ringway.service"),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn the_deb_metadata_names_files_that_exist() {
    let toml: toml::Value = std::fs::read_to_string(repo("Cargo.toml"))
        .expect("Cargo.toml")
        .parse()
        .expect("Cargo.toml parses");
    let deb = &toml["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().expect("assets");
    let mut dests = Vec::new();
    for a in assets {
        let src = a[0].as_str().expect("source");
        dests.push(a[1].as_str().expect("dest").to_string());
        if src != "target/release/ringway" {
            assert!(repo(src).exists(), "deb asset {src} is missing");
        }
    }
    for want in [
        "usr/bin/",
        "etc/ringway/ringway.toml",
        "lib/systemd/system/ringway.service",
    ] {
        assert!(
            dests.iter().any(|d| d == want),
            "deb lacks {want}: {dests:?}"
        );
    }
    let scripts = deb["maintainer-scripts"].as_str().expect("scripts");
    assert!(repo(scripts).join("postinst").exists());
    assert_eq!(
        deb["conf-files"][0].as_str(),
        Some("/etc/ringway/ringway.toml")
    );
}

fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {said}");
    said
}

#[test]
fn the_deb_builds_and_installs_the_binary_unit_config_and_dashboards() {
    assert!(
        std::path::Path::new("/usr/bin/dpkg-deb").exists(),
        "dpkg-deb not found: install the Debian package `dpkg`"
    );
    let dir = std::env::temp_dir().join(format!("ringway-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The test's own (debug) binary stands in for the release one; uncompressed, for speed.
    let built = run_tool(
        Command::new(repo("config/debian/build-deb.sh"))
            .arg(env!("CARGO_BIN_EXE_ringway"))
            .arg(&dir)
            .env("DEB_COMPRESSION", "none"),
    );
    let deb = built
        .trim()
        .lines()
        .last()
        .expect("the .deb's path")
        .to_string();
    assert!(
        deb.ends_with(".deb") && std::path::Path::new(&deb).exists(),
        "{built}"
    );

    let listing = run_tool(Command::new("dpkg-deb").args(["-c", &deb]));
    for (path, mode) in [
        ("./usr/bin/ringway", "-rwxr-xr-x root/root"),
        ("./etc/ringway/ringway.toml", "-rw-r----- root/root"),
        (
            "./lib/systemd/system/ringway.service",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/share/ringway/dashboards/grafana-dashboard.json",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/share/ringway/dashboards/prometheus-alerts.yml",
            "-rw-r--r-- root/root",
        ),
        ("./usr/share/doc/ringway/README.md", "-rw-r--r-- root/root"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(&format!(" {path}"))),
            "{path} ({mode}) not in the package:\n{listing}"
        );
    }
    let info = run_tool(Command::new("dpkg-deb").args(["-I", &deb]));
    for want in [
        "Package: ringway",
        "Architecture: ",
        "Section: net",
        "conffiles",
        "postinst",
    ] {
        assert!(info.contains(want), "control lacks {want:?}:\n{info}");
    }
    let depends = info
        .lines()
        .find(|l| l.trim_start().starts_with("Depends:"))
        .unwrap_or_else(|| panic!("no Depends:\n{info}"));
    assert!(
        depends.contains("libc6") && depends.contains("adduser") && !depends.contains('$'),
        "{depends}"
    );
    let conffiles = run_tool(Command::new("dpkg-deb").args(["-I", &deb, "conffiles"]));
    assert_eq!(conffiles.trim(), "/etc/ringway/ringway.toml");
    let postinst = run_tool(Command::new("dpkg-deb").args(["-I", &deb, "postinst"]));
    assert!(postinst.contains("adduser --system") && !postinst.contains("#DEBHELPER#"));

    // What it unpacks is a working install: the binary accepts the config it ships.
    let root = dir.join("root");
    run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let checked = run_tool(
        Command::new(root.join("usr/bin/ringway"))
            .arg("check")
            .arg("-c")
            .arg(root.join("etc/ringway/ringway.toml")),
    );
    assert!(!checked.to_lowercase().contains("error"), "{checked}");
    assert_eq!(
        std::fs::read(root.join("lib/systemd/system/ringway.service")).expect("unit"),
        std::fs::read(repo("config/ringway.service")).expect("unit")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ringway run` with RLIMIT_NOFILE soft 256, hard 4096; stderr lines until it listens.
fn start_limited(max_connections: u32) -> (std::process::Child, LogLines, TempFile) {
    let cfg = TempFile::new(&with_test_driver(&format!(
        "{}[[upstreams]]\nname = \"u\"\nnodes = [{{ addr = \"127.0.0.1:9\" }}]\n{}",
        server(&[
            ("workers", "2"),
            ("max_connections", &max_connections.to_string())
        ]),
        route("r", &["/*"], "u", "")
    )));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringway"));
    cmd.args(["run", "-c", cfg.path_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn ringway");
    let logs = LogLines::spawn_reader(child.stderr.take().expect("stderr"), "ringway");
    assert!(
        logs.wait_for(|l| l.contains("listening on"), Duration::from_secs(15))
            .is_some(),
        "{}",
        logs.text()
    );
    (child, logs, cfg)
}

fn soft_nofile(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_string())
        .expect("open files line")
}

#[test]
fn start_raises_the_open_files_limit_and_warns_once_with_the_numbers() {
    let (mut child, logs, _cfg) = start_limited(10_000);
    assert_eq!(soft_nofile(child.id()), "4096");
    let text = logs.text();
    assert!(
        text.contains("open-files limit raised from 256 to 4096"),
        "{text}"
    );
    let warn: Vec<_> = text
        .lines()
        .filter(|l| l.contains("is below what this config can use"))
        .collect();
    assert_eq!(warn.len(), 1, "{text}");
    assert!(
        warn[0].contains("open-files limit 4096")
            && warn[0].contains("2 workers x 10000 max_connections x 2 = 40000")
            && warn[0].contains("+ 640 pooled upstream connections + 64 = 40704"),
        "{}",
        warn[0]
    );
    let _ = child.kill();
    let _ = child.wait();

    // A config that fits says nothing.
    let (mut child, logs, _cfg) = start_limited(100);
    std::thread::sleep(Duration::from_millis(200));
    let text = logs.text();
    assert!(text.contains("raised from 256 to 4096"), "{text}");
    assert!(
        !text.contains("is below what this config can use"),
        "{text}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sigusr2_starts_the_new_binary_which_takes_over_and_tells_systemd_its_pid() {
    let origin = Origin::start("o", |r| Resp::text(200, &r.target).into());
    let dir = std::env::temp_dir().join(format!("ringway-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let cfg = TempFile::new(&with_test_driver(&simple_config(
        origin.addr,
        &[("shutdown_timeout", "\"3s\"")],
    )));
    let mut old = Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(["run", "-c", cfg.path_str()])
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .env("RUNTIME_DIRECTORY", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let logs = LogLines::spawn_reader(old.stderr.take().expect("stderr"), "ringway");
    let mut buf = [0u8; 256];
    let n = notify
        .recv(&mut buf)
        .expect("READY=1 from the first process");
    assert_eq!(&buf[..n], b"READY=1");
    let addr = logs
        .wait_for(|l| l.contains("listening on"), Duration::from_secs(5))
        .and_then(|l| parse_listening_line(&l))
        .expect("listening");
    // Made after the listeners say so: waited for, not sampled once.
    assert!(
        wait_until(Duration::from_secs(10), || dir
            .join("upgrade.sock")
            .exists()),
        "upgrade socket in RUNTIME_DIRECTORY"
    );
    assert_eq!(one_shot(addr, get_req("/a", "x")).status, 200);

    send_signal(old.id(), "USR2");
    // The bounds below are for a process start on a loaded 2-core box, not for speed.
    let started = logs
        .wait_for(|l| l.contains("SIGUSR2: started"), Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{}", logs.text()));
    let new_pid: u32 = started
        .rsplit_once("(pid ")
        .and_then(|(_, r)| r.split(')').next()?.parse().ok())
        .expect("pid in the log line");
    let n = notify.recv(&mut buf).expect("MAINPID from the new process");
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        format!("MAINPID={new_pid}\nREADY=1")
    );
    let t0 = Instant::now();
    let status = loop {
        if let Ok(Some(st)) = old.try_wait() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "old process still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert_eq!(
        one_shot(addr, get_req("/b", "x")).status,
        200,
        "the new process serves"
    );
    send_signal(new_pid, "TERM");
    assert!(
        wait_until(Duration::from_secs(30), || !std::path::Path::new(&format!(
            "/proc/{new_pid}"
        ))
        .exists()
            || std::fs::read_to_string(format!("/proc/{new_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))),
        "new process did not exit on SIGTERM"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
