//! Owns a real rsyslogd for the syslog tests: its own config, work dir and ephemeral ports
//! (UDP, TCP, or TLS with the ossl driver), every message written as one line. Asserts nothing.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/sbin/rsyslogd";

/// How the daemon listens.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Listen {
    Udp,
    Tcp,
    /// TLS on TCP (RFC 5425), server certificate from the given PEM files.
    Tls,
}

/// `(ca, cert chain, key)` PEM paths for a TLS listener.
pub type TlsFiles = (String, String, String);

/// One rsyslogd writing `<PRI> <APP-NAME> <MSGID> <MSG>` per received message to `out`.
pub struct Rsyslog {
    child: Option<Child>,
    dir: PathBuf,
    conf: PathBuf,
    pub addr: SocketAddr,
    /// TCP port probed for readiness (the TLS or TCP listener, or an extra TCP one for UDP).
    probe: SocketAddr,
    pub out: PathBuf,
}

fn free_udp() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr")
}

impl Rsyslog {
    pub fn start(listen: Listen, tls: Option<TlsFiles>) -> Rsyslog {
        assert!(
            std::path::Path::new(BINARY).exists(),
            "{BINARY} not found: install the Debian package `rsyslog` (.ci/run does)"
        );
        let dir = std::env::temp_dir().join(format!(
            "ringway-rsyslog-{}-{}",
            std::process::id(),
            super::closed_port().port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("rsyslog dir");
        let out = dir.join("out.log");
        let probe = super::closed_port();
        let addr = if listen == Listen::Udp {
            free_udp()
        } else {
            probe
        };
        let mut conf = format!(
            "global(workDirectory=\"{d}\" maxMessageSize=\"64k\")\n",
            d = dir.display()
        );
        match listen {
            Listen::Udp => conf.push_str(&format!(
                "module(load=\"imudp\")\nmodule(load=\"imtcp\")\n\
                 input(type=\"imudp\" address=\"127.0.0.1\" port=\"{}\" rcvbufSize=\"8m\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{}\")\n",
                addr.port(),
                probe.port()
            )),
            Listen::Tcp => conf.push_str(&format!(
                "module(load=\"imtcp\")\ninput(type=\"imtcp\" address=\"127.0.0.1\" port=\"{}\")\n",
                addr.port()
            )),
            Listen::Tls => {
                let (ca, cert, key) = tls.expect("TLS files");
                assert!(
                    std::path::Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so")
                        .exists(),
                    "rsyslog's TLS driver is missing: install the Debian package `rsyslog-openssl` (.ci/run does)"
                );
                conf.push_str(&format!(
                    "global(DefaultNetstreamDriver=\"ossl\" DefaultNetstreamDriverCAFile=\"{ca}\" \
                     DefaultNetstreamDriverCertFile=\"{cert}\" DefaultNetstreamDriverKeyFile=\"{key}\")\n\
                     module(load=\"imtcp\" StreamDriver.Name=\"ossl\" StreamDriver.Mode=\"1\" \
                     StreamDriver.AuthMode=\"anon\")\n\
                     input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{}\")\n",
                    addr.port()
                ));
            }
        }
        conf.push_str(&format!(
            "template(name=\"line\" type=\"string\" string=\"%PRI% %APP-NAME% %MSGID% %msg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{}\" template=\"line\" flushOnTXEnd=\"on\" asyncWriting=\"off\")\n",
            out.display()
        ));
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).expect("rsyslog.conf");
        let mut r = Rsyslog {
            child: None,
            dir,
            conf: conf_path,
            addr,
            probe,
            out,
        };
        r.run();
        r
    }

    /// Starts the daemon (again) on the same config and ports; waits until it accepts.
    pub fn run(&mut self) {
        let child = Command::new(BINARY)
            .args(["-n", "-f"])
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rsyslogd");
        self.child = Some(child);
        let t0 = Instant::now();
        while TcpStream::connect_timeout(&self.probe, Duration::from_millis(100)).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("rsyslogd exited ({st}); config:\n{}", self.config_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "rsyslogd did not listen on {}",
                self.probe
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn config_text(&self) -> String {
        std::fs::read_to_string(&self.conf).unwrap_or_default()
    }

    /// SIGTERM and wait for it to exit (it writes out what it has taken in first).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::gateway::send_signal(c.id(), "TERM");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Waits until at least `n` lines are written (or `timeout`); returns the lines.
    pub fn wait_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let l = self.lines();
            if l.len() >= n || t0.elapsed() >= timeout {
                return l;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
