//! Zero-downtime binary upgrade, the new process's side: asks the running process for its
//! sockets and ticket keys, gives them out by address, and confirms once it serves. Binds nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{Header, Kind, SocketInfo, MAX_HEADER, VERSION};
use crate::net::fdpass;
use crate::net::tickets::KeySet;

/// How long the running process may take to answer and, after "ready", to say it drains.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The predecessor's sockets, until each is taken; what is not taken is closed here when this is
/// dropped (the predecessor closes its own copies as it drains).
pub struct Inherited {
    conn: UnixStream,
    pub pid: u32,
    sockets: Vec<(SocketInfo, Option<OwnedFd>)>,
    pub tickets: Option<KeySet>,
}

/// Connects to the running process's upgrade socket and receives its handover.
pub fn request(path: &Path) -> Result<Inherited, String> {
    let conn = UnixStream::connect(path).map_err(|e| {
        format!(
            "no running ringway answers on the upgrade socket {}: {e}",
            path.display()
        )
    })?;
    conn.set_read_timeout(Some(ANSWER_WAIT))
        .map_err(|e| e.to_string())?;
    let mut r = &conn;
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| format!("upgrade socket {}: no handover: {e}", path.display()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(format!("upgrade: handover header of {len} bytes refused"));
    }
    let mut json = vec![0u8; len];
    r.read_exact(&mut json)
        .map_err(|e| format!("upgrade: handover cut short: {e}"))?;
    let header: Header =
        serde_json::from_slice(&json).map_err(|e| format!("upgrade: unreadable handover: {e}"))?;
    if header.version != VERSION {
        return Err(format!(
            "upgrade: the running process speaks handover version {}, this binary {VERSION}",
            header.version
        ));
    }
    let mut fds = Vec::with_capacity(header.sockets.len());
    while fds.len() < header.sockets.len() {
        let batch =
            fdpass::recv_fds(&conn).map_err(|e| format!("upgrade: receiving sockets: {e}"))?;
        fds.extend(batch);
    }
    if fds.len() != header.sockets.len() {
        return Err(format!(
            "upgrade: {} sockets announced, {} received",
            header.sockets.len(),
            fds.len()
        ));
    }
    Ok(Inherited {
        conn,
        pid: header.pid,
        sockets: header
            .sockets
            .into_iter()
            .zip(fds.into_iter().map(Some))
            .collect(),
        tickets: header.tickets,
    })
}

/// Whether a socket the predecessor configured as `had` (bound to `real`, listen entry `at`)
/// serves what this process configures as `want` at entry `index`: the same address, or, when
/// both configs say port 0, the same entry.
fn serves(s: &SocketInfo, want: SocketAddr, index: Option<usize>) -> bool {
    s.real == want || (s.addr == want && (want.port() != 0 || s.index == index))
}

impl Inherited {
    /// The predecessor's shard sockets for `server.listen[index] = addr` (none: bind anew).
    pub fn take_proxy(&mut self, index: usize, addr: SocketAddr) -> Vec<TcpListener> {
        self.take_where(|s| s.kind == Kind::Proxy && serves(s, addr, Some(index)))
    }

    /// The predecessor's status, admin or demo listener if it listened where this process will.
    pub fn take(&mut self, kind: Kind, addr: SocketAddr) -> Option<TcpListener> {
        self.take_where(|s| s.kind == kind && serves(s, addr, None))
            .into_iter()
            .next()
    }

    fn take_where(&mut self, pred: impl Fn(&SocketInfo) -> bool) -> Vec<TcpListener> {
        self.sockets
            .iter_mut()
            .filter(|(s, fd)| fd.is_some() && pred(s))
            .filter_map(|(_, fd)| fd.take().map(TcpListener::from))
            .collect()
    }

    /// Addresses the predecessor listened on that this process does not take over: they stop
    /// accepting when it drains.
    pub fn untaken(&self) -> Vec<SocketAddr> {
        let mut v: Vec<_> = self
            .sockets
            .iter()
            .filter(|(_, fd)| fd.is_some())
            .map(|(s, _)| s.real)
            .collect();
        v.dedup();
        v
    }

    /// Tells the predecessor this process serves, and waits for it to say it drains.
    pub fn confirm(self) -> Result<u32, String> {
        let mut w = &self.conn;
        w.write_all(format!("ready {}\n", std::process::id()).as_bytes())
            .map_err(|e| format!("upgrade: telling the old process to drain: {e}"))?;
        let mut line = String::new();
        BufReader::new(&self.conn)
            .read_line(&mut line)
            .map_err(|e| format!("upgrade: the old process did not answer: {e}"))?;
        if line.trim() != "draining" {
            return Err(format!(
                "upgrade: the old process answered {:?} instead of draining",
                line.trim()
            ));
        }
        Ok(self.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: Kind, index: Option<usize>, addr: &str, real: &str) -> SocketInfo {
        SocketInfo {
            kind,
            index,
            addr: addr.parse().unwrap(),
            real: real.parse().unwrap(),
        }
    }

    #[test]
    fn sockets_match_by_real_address_or_the_same_port_zero_entry() {
        let s = info(Kind::Proxy, Some(1), "127.0.0.1:0", "127.0.0.1:4321");
        assert!(serves(&s, "127.0.0.1:4321".parse().unwrap(), Some(0)));
        assert!(serves(&s, "127.0.0.1:0".parse().unwrap(), Some(1)));
        assert!(!serves(&s, "127.0.0.1:0".parse().unwrap(), Some(0)));
        assert!(!serves(&s, "127.0.0.1:4322".parse().unwrap(), Some(1)));
        let fixed = info(Kind::Status, None, "127.0.0.1:9091", "127.0.0.1:9091");
        assert!(serves(&fixed, "127.0.0.1:9091".parse().unwrap(), None));
    }
}
