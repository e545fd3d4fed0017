//! Binds one SO_REUSEPORT listener per shard per address, resolving port 0 once so
//! every shard shares the same real port (on the main thread, before shards start), and sets
//! the socket options an accepted connection cannot inherit from its listener.

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

/// Turns TCP quick-ACK mode off on an accepted socket, so the kernel does not ACK the first
/// request on its own the moment it is read: the ACK rides on the response instead. One ACK
/// packet less per new connection (loopback new-connection benchmark: 12.0 -> 11.0 segments per
/// request, as with HAProxy), for one setsockopt. Linux resets quick-ACK mode on its own later,
/// and puts request/response connections into delayed-ACK mode after the first exchange anyway;
/// this only moves the first request there. Not inherited from the listener, hence per socket.
pub fn defer_first_ack(fd: std::os::fd::RawFd) {
    let off: libc::c_int = 0;
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call;
    // setsockopt reads `size_of::<c_int>()` bytes from `off`, which lives across the call.
    // Failure (not a TCP socket) changes nothing, so the result is ignored.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            std::ptr::addr_of!(off).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Listeners grouped per shard: `per_shard[shard]` holds `(i, socket)` pairs, `i` indexing the
/// configured addresses. A shard usually has one socket per address; after a binary upgrade to
/// fewer workers it may hold several inherited sockets of one address.
pub struct Bound {
    pub addrs: Vec<SocketAddr>,
    pub per_shard: Vec<Vec<(usize, TcpListener)>>,
}

pub fn bind_all(addrs: &[SocketAddr], shards: usize) -> io::Result<Bound> {
    bind_inheriting(addrs, shards, &mut |_, _| Vec::new())
}

/// Like `bind_all`, but address `i` first takes the sockets `inherit(i, addr)` returns (a
/// predecessor's listeners, received over the upgrade socket), dealt to shards in turn; shards
/// left without one bind a new SO_REUSEPORT socket on the same address. An inherited socket is
/// the predecessor's own: connections waiting in its queue are accepted here, none is refused.
pub fn bind_inheriting(
    addrs: &[SocketAddr],
    shards: usize,
    inherit: &mut dyn FnMut(usize, SocketAddr) -> Vec<TcpListener>,
) -> io::Result<Bound> {
    let mut per_shard: Vec<Vec<(usize, TcpListener)>> = (0..shards).map(|_| Vec::new()).collect();
    let mut resolved = Vec::with_capacity(addrs.len());
    for (i, &addr) in addrs.iter().enumerate() {
        let taken = inherit(i, addr);
        let first_new = taken.len();
        let real = match taken.first() {
            Some(l) => l.local_addr()?,
            None => {
                let first = bind_one(addr).map_err(|e| with_addr(e, addr))?;
                let real = first.local_addr()?;
                per_shard[0].push((i, first));
                real
            }
        };
        for (j, l) in taken.into_iter().enumerate() {
            per_shard[j % shards].push((i, l));
        }
        for group in per_shard
            .iter_mut()
            .skip(if first_new == 0 { 1 } else { first_new })
        {
            group.push((i, bind_one(real).map_err(|e| with_addr(e, real))?));
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
