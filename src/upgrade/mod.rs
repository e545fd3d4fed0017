//! Zero-downtime binary upgrade, the running side: listens on the upgrade socket and hands a
//! successor (`ringway run --upgrade`) the listening sockets and TLS ticket keys, then lets the
//! caller drain. The successor's side is `successor.rs`. Starts no shards and serves no HTTP.

pub mod successor;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::fdpass;
use crate::net::tickets::KeySet;

/// Bumped when the handover message changes shape; a successor refuses another version.
const VERSION: u32 = 1;
/// How long the running process waits for a successor that took the sockets to say it serves.
const READY_WAIT: Duration = Duration::from_secs(120);
/// Largest handover header accepted (JSON; a few hundred bytes per socket).
const MAX_HEADER: usize = 4 << 20;

/// What a handed-over socket was in the running process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A shard's listener for `server.listen[index]` (`index` None: added by a reload).
    Proxy,
    Status,
    Admin,
    Demo,
}

/// One socket of the handover, in the order its descriptor is sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketInfo {
    pub kind: Kind,
    pub index: Option<usize>,
    /// As configured (may have port 0).
    pub addr: SocketAddr,
    /// What it is bound to.
    pub real: SocketAddr,
}

/// The handover message's header; the descriptors follow in batches.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: u32,
    pid: u32,
    sockets: Vec<SocketInfo>,
    tickets: Option<KeySet>,
}

/// What the running process offers a successor, gathered when one connects (the shards' current
/// sockets: a reload may have added or removed some since start-up).
pub struct Offer {
    pub sockets: Vec<(SocketInfo, OwnedFd)>,
    pub tickets: Option<KeySet>,
}

/// Binds the upgrade socket (replacing a stale file; owner-only permissions) and serves
/// successors on a thread of its own until one takes over: `offer` is asked for the sockets
/// when a successor connects, and `took_over` runs once one confirms it is serving, after which
/// the thread stops listening. A successor that fails before confirming leaves this process
/// serving as before. Only a peer running as this process's user is answered.
pub fn listen(
    path: &Path,
    offer: impl Fn() -> Offer + Send + 'static,
    took_over: impl FnOnce(u32) + Send + 'static,
) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("upgrade socket: cannot listen on {}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let shown = path.display().to_string();
    log::info!("upgrade socket listening on {shown}");
    std::thread::Builder::new()
        .name("ringway-upgrade".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                match hand_over(&conn, &offer) {
                    Ok(pid) => {
                        took_over(pid);
                        return;
                    }
                    Err(e) => log::warn!("upgrade: {e}; this process keeps serving"),
                }
            }
        })
        .map_err(|e| format!("upgrade socket: cannot start thread: {e}"))?;
    Ok(())
}

/// One successor: sockets and keys out, then wait for its "ready". Returns its pid.
fn hand_over(conn: &UnixStream, offer: &dyn Fn() -> Offer) -> Result<u32, String> {
    let uid = fdpass::peer_uid(conn).map_err(|e| format!("peer credentials: {e}"))?;
    if uid != fdpass::my_uid() {
        return Err(format!(
            "refused a successor running as uid {uid} (this process runs as {})",
            fdpass::my_uid()
        ));
    }
    let offer = offer();
    let (infos, fds): (Vec<SocketInfo>, Vec<OwnedFd>) = offer.sockets.into_iter().unzip();
    let header = Header {
        version: VERSION,
        pid: std::process::id(),
        sockets: infos,
        tickets: offer.tickets,
    };
    let json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let mut w = conn;
    w.write_all(&(json.len() as u32).to_be_bytes())
        .and_then(|()| w.write_all(&json))
        .map_err(|e| format!("sending the handover: {e}"))?;
    let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    for batch in raw.chunks(fdpass::BATCH) {
        fdpass::send_fds(conn, batch).map_err(|e| format!("sending sockets: {e}"))?;
    }
    log::info!(
        "upgrade: handed {} sockets to a successor; waiting for it to serve",
        fds.len()
    );
    conn.set_read_timeout(Some(READY_WAIT))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let mut r = BufReader::new(conn);
    r.read_line(&mut line)
        .map_err(|e| format!("the successor did not confirm: {e}"))?;
    let Some(pid) = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
    else {
        return Err(if line.is_empty() {
            "the successor exited before serving".to_string()
        } else {
            format!("the successor said {:?}", line.trim())
        });
    };
    w.write_all(b"draining\n")
        .map_err(|e| format!("answering the successor: {e}"))?;
    Ok(pid)
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) about this process when it runs under it
/// (`NOTIFY_SOCKET` set): `READY=1` once serving, `MAINPID=` when a successor takes over. A
/// failure is logged only: serving does not depend on it.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let r = (|| -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(state.as_bytes(), &path)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        log::warn!("cannot notify systemd ({state:?}): {e}");
    }
}

/// SIGUSR2: starts this binary again (the path it was started as, so a package upgrade's new
/// file is what runs) as `run --upgrade -c CONFIG`; that process takes the sockets over. Its
/// exit status is logged if it ends while this process still runs (a refused config).
pub fn spawn_successor(config: &Path) {
    let Some(exe) = std::env::args_os().next() else {
        log::error!("SIGUSR2: cannot tell which binary this is; no upgrade");
        return;
    };
    let child = std::process::Command::new(&exe)
        .arg("run")
        .arg("--upgrade")
        .arg("-c")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(mut c) => {
            log::info!(
                "SIGUSR2: started {} (pid {}) to take over",
                Path::new(&exe).display(),
                c.id()
            );
            let _ = std::thread::Builder::new()
                .name("ringway-upgrade-child".into())
                .spawn(move || {
                    if let Ok(st) = c.wait() {
                        if !st.success() {
                            log::warn!(
                                "SIGUSR2: the new process exited ({st}); this one keeps serving"
                            );
                        }
                    }
                });
        }
        Err(e) => log::error!(
            "SIGUSR2: cannot start {}: {e}; this process keeps serving",
            Path::new(&exe).display()
        ),
    }
}
