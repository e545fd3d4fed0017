//! Real Redis for the fleet tests: a `redis-server` on an ephemeral port in a temp dir (stop and
//! start it again on the same port), and a three-master Redis Cluster. Killed on drop; no gateway code.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::wait_until;

fn free_port() -> u16 {
    super::closed_port().port()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringway-redis-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).expect("temp dir for redis");
    d
}

fn spawn(port: u16, dir: &PathBuf, extra: &[&str]) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ])
    .args(["--appendonly", "no", "--dir"])
    .arg(dir)
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot run redis-server ({e}): install the Debian package redis-server"),
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "redis-server on port {port} did not start listening"
    );
    child
}

/// Kills `child` (if running) and waits until nothing accepts on `addr` any more.
pub(super) fn kill_until_closed(child: Option<Child>, addr: SocketAddr, what: &str) {
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_err()),
        "{what} still accepts after kill"
    );
}

/// One standalone `redis-server`.
pub struct Redis {
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let dir = temp_dir("single");
        let child = spawn(port, &dir, &[]);
        Redis {
            addr: ([127, 0, 0, 1], port).into(),
            dir,
            child: Some(child),
        }
    }

    /// Kills the server (its data is gone, as after a crash without persistence).
    pub fn stop(&mut self) {
        kill_until_closed(self.child.take(), self.addr, "redis-server");
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.addr.port(), &self.dir, &[]));
    }

    pub fn conn(&self) -> redis::Connection {
        let c = redis::Client::open(format!("redis://{}", self.addr)).expect("redis url");
        c.get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test redis-server")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas), slots assigned by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<SocketAddr>,
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        let mut children = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = temp_dir("cluster");
            children.push(spawn(
                port,
                &dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            ));
            nodes.push(([127, 0, 0, 1], port).into());
            dirs.push(dir);
        }
        let c = RedisCluster {
            nodes,
            dirs,
            children,
        };
        let addrs: Vec<String> = c.nodes.iter().map(|a| a.to_string()).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => panic!("cannot run redis-cli ({e}): install the Debian package redis-tools"),
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for a in c.nodes.clone() {
            let ok = wait_until(deadline.saturating_duration_since(Instant::now()), || {
                c.node_conn(a)
                    .and_then(|mut k| {
                        redis::cmd("CLUSTER")
                            .arg("INFO")
                            .query::<String>(&mut k)
                            .ok()
                    })
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            assert!(ok, "cluster node {a} never reported cluster_state:ok");
        }
        c
    }

    fn node_conn(&self, a: SocketAddr) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://{a}"))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()
    }

    /// The node serving `key`'s slot, asked of any node (`CLUSTER KEYSLOT`, then the slot map).
    pub fn owner_of(&self, key: &str) -> SocketAddr {
        let mut c = self.node_conn(self.nodes[0]).expect("cluster node");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("CLUSTER KEYSLOT");
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut c)
            .expect("CLUSTER SLOTS");
        for s in slots {
            let redis::Value::Array(v) = s else { continue };
            let (
                Some(redis::Value::Int(lo)),
                Some(redis::Value::Int(hi)),
                Some(redis::Value::Array(m)),
            ) = (v.first(), v.get(1), v.get(2))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&slot) {
                if let Some(redis::Value::Int(port)) = m.get(1) {
                    return ([127, 0, 0, 1], *port as u16).into();
                }
            }
        }
        panic!("no node owns slot {slot}")
    }

    /// A connection to one node (no redirections followed).
    pub fn conn(&self, a: SocketAddr) -> redis::Connection {
        self.node_conn(a).expect("cluster node connection")
    }

    /// Starts moving `key`'s slot from master `src` to `dst` and migrates the slot's keys: the
    /// old owner answers ASK for them until `finish`.
    pub fn migrate(&self, key: &str, src: SocketAddr, dst: SocketAddr) -> Migration {
        let (mut s, mut d) = (self.conn(src), self.conn(dst));
        let slot: i64 = query(&mut s, &["CLUSTER", "KEYSLOT", key]);
        let slot = slot.to_string();
        let src_id: String = query(&mut s, &["CLUSTER", "MYID"]);
        let dst_id: String = query(&mut d, &["CLUSTER", "MYID"]);
        let _: () = query(&mut d, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]);
        let _: () = query(&mut s, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]);
        let moving: Vec<String> = query(&mut s, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
        let port = dst.port().to_string();
        let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        migrate.extend(moving.iter().map(String::as_str));
        let _: redis::Value = query(&mut s, &migrate);
        Migration { slot, dst_id }
    }

    /// Gives a migrating slot to its new owner on every master: the old one answers MOVED.
    pub fn finish(&self, m: &Migration) {
        for &n in &self.nodes {
            let _: () = query(
                &mut self.conn(n),
                &["CLUSTER", "SETSLOT", &m.slot, "NODE", &m.dst_id],
            );
        }
    }
}

/// A slot on its way between masters (`RedisCluster::migrate`).
pub struct Migration {
    slot: String,
    dst_id: String,
}

fn query<T: redis::FromRedisValue>(c: &mut redis::Connection, args: &[&str]) -> T {
    let mut q = redis::cmd(args[0]);
    for a in &args[1..] {
        q.arg(*a);
    }
    q.query(c)
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")))
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
