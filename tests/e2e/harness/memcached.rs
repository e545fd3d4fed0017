//! Real memcached for the shared cache tier tests: a `memcached` on an ephemeral port of
//! 127.0.0.1, stopped on demand and killed on drop; no gateway code.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_until;

pub struct Memcached {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Memcached {
    pub fn start() -> Memcached {
        let port = super::closed_port().port();
        let mut cmd = Command::new("memcached");
        // -U 0: no UDP; -m 64: 64 MiB; -u root: allowed to start as root (CI runs as root).
        cmd.args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-m",
            "64",
        ])
        .args(["-u", "root"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot run memcached ({e}): install the Debian package memcached"),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "memcached on port {port} did not start listening"
        );
        Memcached {
            addr,
            child: Some(child),
        }
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        super::redis::kill_until_closed(self.child.take(), self.addr, "memcached");
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
