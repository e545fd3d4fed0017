//! The messages the main, admin, status and health threads send a shard over its control
//! channel. Data only: what a shard does with each is runtime/shard.rs's business.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::built::Built;

/// A shard's answer to `Prepare` or `Commit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapAck {
    pub shard: usize,
    /// Why the shard could not do the step.
    pub result: Result<(), String>,
}

/// One listening socket of a shard, duplicated: its index into `server.listen` (`usize::MAX`
/// for an address a reload added) and its address as configured.
#[derive(Debug)]
pub struct ListenerCopy {
    pub index: usize,
    pub addr: SocketAddr,
    pub fd: std::os::fd::OwnedFd,
}

/// Messages from the main thread to a shard.
#[derive(Debug)]
pub enum Control {
    /// Stop accepting, finish in-flight requests, exit.
    Shutdown,
    /// A binary upgrade's successor serves on the same sockets now: stop accepting and drain
    /// like `Shutdown`, but idle keep-alive connections wait up to `linger` for one more request
    /// (answered with `Connection: close`) instead of being closed under a client that may be
    /// sending on them.
    HandOver { linger: std::time::Duration },
    /// Duplicates of this shard's listening sockets, for a binary upgrade's successor.
    Sockets(Sender<Vec<ListenerCopy>>),
    /// New TLS configs (SIGHUP certificate reload), one per listener in `listen` order (`None`
    /// for plain ones). Used for new handshakes; open connections keep the session they have.
    ReloadTls(Vec<Option<Arc<rustls::ServerConfig>>>),
    /// Step one of a config swap: build this shard's next generation from `cfg` (upstream
    /// state, plugin instances, counters), keep it pending and ack whether that worked.
    Prepare {
        generation: u64,
        cfg: Arc<Built>,
        /// `Some(id)`: `cfg` differs from the previous generation in route `id` only, so the
        /// shard updates that route's state and shares the rest.
        route: Option<usize>,
        ack: Sender<SwapAck>,
    },
    /// Step two, once every shard prepared: the pending generation becomes current. New
    /// requests use it; requests already running finish on the generation they started with.
    /// A shard without that generation pending stays where it is and acks an error.
    Commit {
        generation: u64,
        ack: Sender<SwapAck>,
    },
    /// Step two when some shard failed or timed out in step one: drop the pending generation
    /// and keep serving the current one.
    Abort { generation: u64 },
    /// Copy this shard's counters out for the status thread.
    Snapshot(Sender<crate::metrics::ShardSnapshot>),
    /// Listeners added by a reload (plain, one socket per shard), by configured address.
    Listen(Vec<(SocketAddr, StdListener)>),
    /// Listen addresses a reload removed: stop accepting on them and close the sockets;
    /// connections already accepted on them are served to the end.
    Unlisten(Vec<SocketAddr>),
    /// An admin-API purge: remove matches from every cache on this shard and report.
    CachePurge {
        target: crate::cache::admin::AdminTarget,
        ack: Sender<crate::cache::admin::AdminAck>,
    },
    /// Active health verdict for one node of the named upstream.
    NodeDown {
        upstream: String,
        node: usize,
        down: bool,
    },
}
