//! One shard's loops: accept, and the control tick that applies `Control` messages (swaps,
//! snapshots, purges) and drains the mesh lanes. Acts on proxy::shard's state; owns no other.

use std::cell::Cell;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use super::control::{Control, SwapAck};
use super::wake::Doorbell;
use monoio::net::{TcpListener, TcpStream};

use crate::local::drain::Drain;
use crate::proxy::shard::{current, set_current, Shard};

const TICK: Duration = Duration::from_millis(50);
/// The control tick while the shard has no connections: nothing is logged then, and control
/// messages, mesh mail and the first new connection wake the loop anyway, so it only paces the
/// 1 s upstream and cache sweep.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The shard's main future: accept loops plus the control tick. `bell` is what senders ring
/// (the control channel's and the mesh lanes'), `wake` its socket end.
pub async fn run(
    shard: Rc<Shard>,
    listeners: Vec<(usize, StdListener)>,
    control: Receiver<Control>,
    wake: Option<std::os::unix::net::UnixStream>,
    bell: Arc<Doorbell>,
) {
    let mut wake = super::wake::Wakeup::new(wake);
    set_current(&shard);
    monoio::spawn(crate::local::deadline::sweeper());
    monoio::spawn(crate::proxy::run_park(shard.clone()));
    crate::proxy::shard::spawn_housekeeping(&shard);
    let mut pending: Option<Rc<Shard>> = None;
    // Per listening socket: its configured address, what stops its accept loop (a reload may
    // remove the address) and the socket itself (a binary upgrade asks for a copy).
    let mut open: Vec<Open> = Vec::new();
    // Accept loops still running: a drained shard waits for them, since a cancelled accept may
    // still deliver a connection that must be served, not dropped with the runtime.
    let accepting = Rc::new(Cell::new(0usize));
    let configured = shard.built.cfg.server.listen.clone();
    for (index, l) in listeners {
        let Some(&addr) = configured.get(index) else {
            continue;
        };
        open.extend(adopt_listener(&shard, l, addr, index, &accepting));
    }
    let mut last_sweep = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    let mut quiet = super::quiet::Quiet::default();
    loop {
        let idle = shard.conns.get() == 0 && drain_deadline.is_none();
        wake.sleep(if idle { IDLE_TICK } else { TICK }, &shard.bell)
            .await;
        // Before reading: whatever is sent from here on rings (and wakes us) again.
        bell.answer();
        // Mesh mail first too: a cache entry put before an admin purge was sent is purged by it.
        shard.lanes.drain();
        // Requests parked for a control thread's answer look at their mailboxes again.
        crate::local::bell::wake_parked();
        loop {
            match control.try_recv() {
                Ok(Control::HandOver { linger }) => {
                    if !shard.drain.is_draining() {
                        shard.drain.fire_lingering(linger);
                        drain_deadline =
                            Some(Instant::now() + shard.built.cfg.server.shutdown_timeout);
                    }
                    break;
                }
                Ok(Control::Sockets(reply)) => {
                    let _ = reply.send(listener_copies(&shard, &open));
                }
                Ok(Control::Shutdown) | Err(TryRecvError::Disconnected) => {
                    if !shard.drain.is_draining() {
                        shard.drain.fire();
                        drain_deadline =
                            Some(Instant::now() + shard.built.cfg.server.shutdown_timeout);
                    }
                    break;
                }
                Ok(Control::ReloadTls(configs)) => {
                    *shard.tls.borrow_mut() = configs;
                    log::debug!("shard {}: TLS certificates swapped", shard.id);
                }
                Ok(Control::Prepare {
                    generation,
                    cfg,
                    route,
                    ack,
                }) => {
                    let result = if shard.drain.is_draining() {
                        // Nothing would serve the new generation; the swap must not half-happen.
                        pending = None;
                        Err("shutting down".to_string())
                    } else {
                        let cur = current(&shard);
                        let next = match route {
                            // Only valid on top of the generation the change was made from.
                            Some(id) if cur.generation + 1 == generation => {
                                cur.with_route(cfg, generation, id)
                            }
                            _ => cur.next(cfg, generation),
                        };
                        pending = Some(Rc::new(next));
                        Ok(())
                    };
                    let _ = ack.send(SwapAck {
                        shard: shard.id,
                        result,
                    });
                }
                Ok(Control::Commit { generation, ack }) => {
                    let result = match pending.take() {
                        Some(next) if next.generation == generation => {
                            let old = current(&shard);
                            set_current(&next);
                            old.retired.fire();
                            crate::proxy::shard::spawn_housekeeping(&next);
                            log::debug!(
                                "shard {}: now on config generation {generation}",
                                shard.id
                            );
                            Ok(())
                        }
                        other => {
                            // Never switch to what this shard did not prepare for this swap.
                            pending = other;
                            let cur = current(&shard).generation;
                            log::warn!(
                                "shard {}: generation {generation} not pending; stays on {cur}",
                                shard.id
                            );
                            Err(format!("generation {generation} is not pending here"))
                        }
                    };
                    let _ = ack.send(SwapAck {
                        shard: shard.id,
                        result,
                    });
                }
                Ok(Control::Abort { generation }) => {
                    if pending.as_ref().is_some_and(|p| p.generation == generation) {
                        pending = None;
                        log::debug!(
                            "shard {}: config generation {generation} aborted; staying on {}",
                            shard.id,
                            current(&shard).generation
                        );
                    }
                }
                Ok(Control::Listen(ls)) => {
                    for (addr, l) in ls {
                        // Index past the TLS table: served as plain HTTP.
                        open.extend(adopt_listener(&shard, l, addr, usize::MAX, &accepting));
                    }
                }
                Ok(Control::Unlisten(addrs)) => {
                    open.retain(|o| {
                        let gone = addrs.contains(&o.addr);
                        if gone {
                            o.stop.fire();
                        }
                        !gone
                    });
                }
                Ok(Control::Snapshot(reply)) => {
                    let _ = reply.send(current(&shard).snapshot());
                }
                Ok(Control::CachePurge { target, ack }) => {
                    let _ = ack.send(crate::cache::admin::purge_here(
                        &shard.lanes.caches,
                        shard.id,
                        &target,
                    ));
                }
                Ok(Control::NodeDown {
                    upstream,
                    node,
                    down,
                }) => {
                    let cur = current(&shard);
                    for u in cur.upstreams.iter().filter(|u| u.cfg.name == upstream) {
                        u.health.borrow_mut().set_down(node, down);
                    }
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        // After the control messages: a report for a set prepared just now finds it.
        shard.lanes.drain();
        let now = Instant::now();
        if let Some(deadline) = drain_deadline {
            if (shard.conns.get() == 0 && accepting.get() == 0) || now >= deadline {
                if let Some(log) = &shard.log {
                    log.flush();
                }
                return;
            }
        }
        if now.duration_since(last_sweep) >= Duration::from_secs(1) {
            last_sweep = now;
            for u in &current(&shard).upstreams {
                u.sweep(now);
            }
            shard.lanes.caches.sweep();
        }
        if let Some(log) = &shard.log {
            log.flush();
        }
        quiet.tick(
            &shard.stats,
            &shard.drain,
            shard.park.as_deref(),
            shard.id,
            now,
        );
    }
}

/// One listening socket of this shard.
struct Open {
    /// As configured (`server.listen[index]`, or the address a reload added).
    addr: SocketAddr,
    /// Into `server.listen` (`usize::MAX`: added by a reload, plain HTTP).
    index: usize,
    stop: Rc<Drain>,
    listener: Rc<TcpListener>,
}

fn adopt_listener(
    shard: &Rc<Shard>,
    l: StdListener,
    addr: SocketAddr,
    index: usize,
    accepting: &Rc<Cell<usize>>,
) -> Option<Open> {
    match TcpListener::from_std(l) {
        Ok(l) => {
            let stop = Rc::new(Drain::default());
            let listener = Rc::new(l);
            accepting.set(accepting.get() + 1);
            let running = accepting.clone();
            let (sh, li, st) = (shard.clone(), listener.clone(), stop.clone());
            monoio::spawn(async move {
                accept_loop(sh, li, index, st).await;
                running.set(running.get() - 1);
            });
            Some(Open {
                addr,
                index,
                stop,
                listener,
            })
        }
        Err(e) => {
            log::error!("shard {}: cannot adopt listener: {e}", shard.id);
            None
        }
    }
}

/// Duplicates of this shard's listening sockets for a binary upgrade; none once draining (the
/// successor asks before any shard drains, and a drained shard's sockets are being closed).
fn listener_copies(shard: &Shard, open: &[Open]) -> Vec<super::control::ListenerCopy> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    if shard.drain.is_draining() {
        return Vec::new();
    }
    open.iter()
        .filter_map(|o| {
            // SAFETY: the fd belongs to `o.listener`, which `open` keeps alive across this call.
            let fd = unsafe { BorrowedFd::borrow_raw(o.listener.as_raw_fd()) };
            match fd.try_clone_to_owned() {
                Ok(fd) => Some(super::control::ListenerCopy {
                    index: o.index,
                    addr: o.addr,
                    fd,
                }),
                Err(e) => {
                    log::error!("shard {}: cannot duplicate a listener: {e}", shard.id);
                    None
                }
            }
        })
        .collect()
}

/// Accepts until the shard drains or `stop` fires (its address was removed by a reload);
/// returning drops this loop's handle on `listener`, which closes this shard's socket once the
/// shard's table lets go of it too.
///
/// The pending accept is cancelled, never dropped: with io_uring a connection the kernel already
/// accepted for it would otherwise be lost with the dropped operation. A connection that wins
/// the race with the cancellation is served like any other (it sees the drain). That matters on
/// a binary upgrade, where the successor keeps accepting on the same socket.
async fn accept_loop(shard: Rc<Shard>, listener: Rc<TcpListener>, index: usize, stop: Rc<Drain>) {
    let max = shard.built.cfg.server.max_connections;
    let mut warned_fd = false;
    let mut canceller = monoio::io::Canceller::new();
    // Waited on across accepts, registered once: not two waits made and dropped per connection
    // (a new connection per request paid for them on every request).
    let mut drained = std::pin::pin!(shard.drain.wait());
    let mut removed = std::pin::pin!(stop.wait());
    let mut last = false;
    loop {
        let mut accept = std::pin::pin!(listener.cancelable_accept(canceller.handle()));
        // The accept first; once a stop is seen, the accept is cancelled and still awaited (it is
        // woken again when the kernel answers the cancel, with a connection or without).
        let accepted = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = accept.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if !last
                && (drained.as_mut().poll(cx).is_ready() || removed.as_mut().poll(cx).is_ready())
            {
                last = true;
                canceller = std::mem::take(&mut canceller).cancel();
            }
            Poll::Pending
        })
        .await;
        match accepted {
            Ok((stream, peer)) => {
                if shard.conns.get() >= max {
                    // Over the cap: close at once so existing connections keep their share.
                    drop(stream);
                } else {
                    serve_accepted(&shard, stream, peer, index);
                }
            }
            Err(_) if last => {}
            Err(e) => {
                let fd_exhausted = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if fd_exhausted && !warned_fd {
                    log::warn!("shard {}: accept: {e}; backing off", shard.id);
                    warned_fd = true;
                }
                // Back off rather than spin on a condition that will not clear by itself.
                monoio::time::sleep(Duration::from_millis(if fd_exhausted { 50 } else { 5 })).await;
            }
        }
        if last {
            return;
        }
    }
}

fn serve_accepted(shard: &Rc<Shard>, stream: TcpStream, peer: SocketAddr, index: usize) {
    shard.conns.set(shard.conns.get() + 1);
    if shard.conns.get() == 1 {
        shard.bell.ring();
    }
    shard.stats.accepted.set(shard.stats.accepted.get() + 1);
    // The generation a reload may have swapped in applies from this connection on.
    let gen = current(shard);
    // TCP_NODELAY comes from the listener (net/listen.rs), no syscall here.
    if gen.built.cfg.server.defer_first_ack {
        crate::net::listen::defer_first_ack(std::os::fd::AsRawFd::as_raw_fd(&stream));
    }
    // Looked up per connection so a reload applies to the next handshake.
    let tls = shard.tls.borrow().get(index).cloned().flatten();
    match tls {
        None => {
            monoio::spawn(crate::proxy::serve(gen, stream, peer, None));
        }
        Some(cfg) => {
            monoio::spawn(serve_tls(gen, cfg, stream, peer, index));
        }
    }
}

/// Handshake on this shard, then the same connection loop as plain TCP.
fn serve_tls(
    shard: Rc<Shard>,
    cfg: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
    index: usize,
) -> impl std::future::Future<Output = ()> + 'static {
    let limit = shard.built.cfg.server.client_header_timeout;
    // Boxed, and made before the async part: the handshake's state (session, socket, timer) is
    // ~4 KB, and inline (or kept as an argument, rust-lang/rust#62958) it would stay in the task
    // of every TLS connection for its whole life, idle ones too (perf/idle-rss.sh).
    let handshake = Box::pin(crate::net::tls::accept(cfg, stream, limit));
    after_handshake(shard, handshake, peer, index)
}

type Accepted = Result<(crate::net::tls::ServerStream, crate::net::tls::TlsInfo), String>;

async fn after_handshake(
    shard: Rc<Shard>,
    handshake: std::pin::Pin<Box<impl std::future::Future<Output = Accepted>>>,
    peer: SocketAddr,
    index: usize,
) {
    // The handshake's result is moved into `connected`, so the session is not also kept in
    // this future while the connection runs (it lives in the connection's own boxed state).
    let Some(conn) = connected(shard, handshake.await, peer, index) else {
        return;
    };
    conn.await
}

/// The connection loop for a finished handshake (None when it failed).
fn connected(
    shard: Rc<Shard>,
    accepted: Accepted,
    peer: SocketAddr,
    index: usize,
) -> Option<impl std::future::Future<Output = ()> + 'static> {
    match accepted {
        Ok((tls, mut info)) => {
            info.hsts = shard
                .built
                .cfg
                .server
                .tls
                .get(index)
                .and_then(|t| t.as_ref()?.hsts.clone());
            Some(crate::proxy::serve(shard, tls, peer, Some(Box::new(info))))
        }
        Err(e) => {
            // `serve` (whose guard would decrement) never ran.
            shard.conns.set(shard.conns.get().saturating_sub(1));
            log::debug!("shard {}: TLS handshake with {peer} failed: {e}", shard.id);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    //! A real shard loop on its own thread, driven over its control link.

    use super::*;
    use crate::proxy::shard::Lanes;
    use crate::runtime::wake::{self, ShardLink};
    use crossbeam_channel::{unbounded, Sender};

    const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
[[upstreams]]
name = "u"
nodes = [{ addr = "127.0.0.1:9" }]

[[routes]]
name = "r"
paths = ["/*"]
upstream = "u"
"#;

    #[test]
    fn a_tls_connection_task_is_small_once_its_handshake_is_done() {
        // The task of an idle TLS connection is this future, in its `serve` state, for the
        // connection's whole life (memory per idle connection, perf/idle-rss.sh).
        fn output_size<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let task = output_size(serve_tls);
        eprintln!("TLS connection task future {task} B");
        assert!(task <= 480, "TLS connection task grew to {task} bytes");
    }

    #[test]
    fn a_shard_switches_only_to_the_generation_it_has_pending() {
        let built = Arc::new(crate::built::from_str(CONFIG).expect("test config builds"));
        let (tx, rx) = unbounded();
        let (nudge, end) = wake::pair().expect("socketpair");
        let bell = Arc::new(Doorbell::new(Some(nudge)));
        let link = ShardLink::new(tx, bell.clone());
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = built.clone();
        let thread = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let shard = Rc::new(Shard::new(0, cfg, Lanes::solo()));
                run(shard, vec![(0, listener)], rx, Some(end), bell).await
            });
        });
        let (ack, acks) = unbounded();
        let step = |msg: Control| {
            assert!(link.send(msg));
            let a: SwapAck = acks.recv_timeout(Duration::from_secs(5)).expect("answer");
            a.result
        };
        let snapshot = || {
            let (tx, rx) = unbounded();
            assert!(link.send(Control::Snapshot(tx)));
            rx.recv_timeout(Duration::from_secs(5)).expect("snapshot")
        };
        let on = || snapshot().generation;
        let prepare = |generation, ack: &Sender<SwapAck>| Control::Prepare {
            generation,
            cfg: built.clone(),
            route: None,
            ack: ack.clone(),
        };
        let commit = |generation, ack: &Sender<SwapAck>| Control::Commit {
            generation,
            ack: ack.clone(),
        };
        assert_eq!(step(prepare(2, &ack)), Ok(()));
        assert_eq!(on(), 1, "prepared is not committed");
        assert!(link.send(Control::Abort { generation: 2 }));
        assert!(
            step(commit(2, &ack)).is_err(),
            "committed an aborted generation"
        );
        assert_eq!(on(), 1);
        assert!(
            step(commit(3, &ack)).is_err(),
            "committed what it never prepared"
        );
        assert_eq!(on(), 1);
        // Prepared again (the same number: an aborted swap does not use one up), then committed.
        assert_eq!(step(prepare(2, &ack)), Ok(()));
        assert_eq!(step(commit(2, &ack)), Ok(()));
        assert_eq!(on(), 2);
        // A draining shard refuses to prepare (a connection keeps it from finishing at once:
        // it is idle, so the drain closes it soon, but the prepare was queued first).
        let client = std::net::TcpStream::connect(addr).unwrap();
        let t0 = Instant::now();
        while snapshot().active_connections == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "connection not accepted"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(link.send(Control::Shutdown));
        let refused = step(prepare(3, &ack)).unwrap_err();
        assert!(refused.contains("shutting down"), "{refused}");
        // The idle connection is closed by the drain, and the shard's loop ends.
        drop(client);
        thread.join().unwrap();
    }
}
