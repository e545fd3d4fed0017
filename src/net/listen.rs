//! Binds one SO_REUSEPORT listener per shard per address, resolving port 0 once so
//! every shard shares the same real port. Runs on the main thread before shards start.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

const BACKLOG: i32 = 4096;

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Linux clones an accepted socket from its listener, TCP_NODELAY included: set once here
    // instead of one setsockopt per accepted connection.
    socket.set_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Listeners grouped per shard: `result[shard][i]` listens on the i-th resolved address.
pub struct Bound {
    pub addrs: Vec<SocketAddr>,
    pub per_shard: Vec<Vec<TcpListener>>,
}

pub fn bind_all(addrs: &[SocketAddr], shards: usize) -> io::Result<Bound> {
    let mut per_shard: Vec<Vec<TcpListener>> = (0..shards).map(|_| Vec::new()).collect();
    let mut resolved = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let first = bind_one(addr).map_err(|e| with_addr(e, addr))?;
        let real = first.local_addr()?;
        per_shard[0].push(first);
        for group in per_shard.iter_mut().skip(1) {
            group.push(bind_one(real).map_err(|e| with_addr(e, real))?);
        }
        resolved.push(real);
    }
    Ok(Bound {
        addrs: resolved,
        per_shard,
    })
}

fn with_addr(e: io::Error, addr: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
}
