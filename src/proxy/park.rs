//! The shard's park: idle plain keep-alive connections held with no task, as a socket in one
//! epoll set per shard, their expiry and drain; one task wakes them. Owns parked sockets only.
//!
//! Why: an idle connection that keeps its task holds the task (the connection future and its
//! header), the idle state's box, monoio's `SharedFd` and the readiness op's slab entry: about
//! 0.7 KiB, plus the allocator slack of those long-lived blocks (perf/idle-rss.sh, issue 21k in
//! perf/RESULTS.md). A parked connection is a 32-byte entry here, a 24-byte expiry record and
//! the kernel's epoll item.
//!
//! How: once a plain connection's hold passed with nothing read (proxy/conn.rs), [`Park::park`]
//! adds a duplicate of its socket to the set, and the connection's task ends. The connection's
//! state (with its own copy of the socket) stays here until the hold's cancelled read is done
//! (no `HoldBuf` left): a request that read took anyway then still shuts the socket down
//! (net/hold_buf.rs), and the parked copy wakes to that close. [`run`], one task per shard,
//! waits for the set's readiness through monoio, then takes every ready socket out and starts a
//! connection loop for it (woken, as after `hold::ready`), or closes it here when the client
//! closed with nothing queued. Parked connections still count as open (`Shard::conns`, limits,
//! gauges): the park takes over the count when one parks and hands it to the woken task.
//!
//! TLS connections do not park: their stream holds the rustls session, which cannot be turned
//! into an fd and back; it already idles in a boxed state with its buffers freed (`hold.rs`),
//! below nginx's figure. A shard whose park cannot start (no epoll fd) idles as before.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::local::deadline::Wait;
use crate::local::drain::Drain;

/// Events that may mean the client closed.
const HUP: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
/// Ready sockets taken per `epoll_wait`.
const BATCH: usize = 64;
/// Stale expiry records allowed beyond twice the parked count before `Park::compact`.
const COMPACT_SLACK: usize = 1024;
/// How soon the park looks again at connections whose hold's read is still being cancelled.
const SETTLE: Duration = Duration::from_millis(10);

/// One parked connection: the socket and what the connection loop resumes with.
struct Entry {
    /// `None`: the slot is free.
    fd: Option<OwnedFd>,
    /// Counts the slot's reuses; epoll events and expiry records carry it.
    gen: u32,
    served: u32,
    ip: IpAddr,
    nonblocking: bool,
}

/// Parked connections due at the same wait, in the order they parked (so in deadline order).
struct Queue {
    wait: Duration,
    due: VecDeque<(Instant, u32, u32)>,
}

/// A connection to park: its socket, what it resumes with, and how long it may stay.
pub(super) struct Parking {
    pub fd: RawFd,
    pub ip: IpAddr,
    pub served: u64,
    pub nonblocking: bool,
    pub wait: Duration,
}

/// A parked connection's `alive` and the state it left behind (`Park::settling`).
type Settling = (Rc<()>, Box<dyn Any>);

/// What a woken connection resumes with.
pub(super) struct Woken {
    pub fd: OwnedFd,
    pub ip: IpAddr,
    pub served: u64,
    pub nonblocking: bool,
}

/// One shard's park (shared by its config generations, like `Shard::conns`).
pub struct Park {
    ep: OwnedFd,
    slots: RefCell<Vec<Entry>>,
    free: RefCell<Vec<u32>>,
    queues: RefCell<Vec<Queue>>,
    /// Expiry records in `queues`, stale ones included: a woken connection's record stays until
    /// its deadline, so a client that idles past the hold every second would leave one per
    /// idle period for the whole keep-alive wait (75 by default) without `compact`.
    records: Cell<usize>,
    parked: Cell<usize>,
    /// The task runs: a connection parks only then.
    running: Cell<bool>,
    /// The deadline the task's timer is set for; an earlier one must wake it.
    armed: Cell<Option<Instant>>,
    waker: RefCell<Option<Waker>>,
    /// Set by a park whose deadline is earlier than `armed`: the task sets its timer again.
    rearm: Cell<bool>,
    /// A lingering drain closes what is still parked at this time.
    linger_until: Cell<Option<Instant>>,
    conns: Rc<Cell<usize>>,
    /// What parked connections left behind while their hold's cancelled read was still in
    /// flight: the connection's state with its own copy of the socket (so a request that read
    /// takes anyway still shuts that socket down, net/hold_buf.rs), dropped once it is done.
    settling: RefCell<Vec<Settling>>,
}

impl Park {
    /// None when no epoll instance can be made (fd limit): connections then idle in their tasks.
    pub fn new(conns: Rc<Cell<usize>>) -> Option<Park> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd we own.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            log::warn!(
                "no epoll instance for idle connections ({}); they idle in their tasks",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Park {
            // SAFETY: `ep` was just created and is owned by nothing else.
            ep: unsafe { OwnedFd::from_raw_fd(ep) },
            slots: RefCell::default(),
            free: RefCell::default(),
            queues: RefCell::default(),
            records: Cell::new(0),
            parked: Cell::new(0),
            running: Cell::new(false),
            armed: Cell::new(None),
            waker: RefCell::default(),
            rearm: Cell::new(false),
            linger_until: Cell::new(None),
            conns,
            settling: RefCell::default(),
        })
    }

    /// Connections parked now.
    pub fn parked(&self) -> usize {
        self.parked.get()
    }

    /// Parks a duplicate of `p.fd` (a plain client socket idle past its hold with nothing read)
    /// for up to `p.wait`. `rest` is the connection's state (its copy of the socket among it),
    /// kept until the hold's cancelled read is done: until `alive` has no weak reference left.
    /// Ok: parked, and counted as an open connection here (the caller's count goes when its
    /// task ends). Err: not parked (draining without linger, the task does not run, or out of
    /// fds); the caller gets `rest` back.
    pub(super) fn park(
        &self,
        drain: &Drain,
        p: Parking,
        alive: Rc<()>,
        rest: Box<dyn Any>,
    ) -> Result<(), Box<dyn Any>> {
        let Parking {
            fd,
            ip,
            served,
            nonblocking,
            wait,
        } = p;
        if !self.running.get() || (drain.is_draining() && drain.linger().is_none()) {
            return Err(rest);
        }
        // SAFETY: `fd` is the caller's open socket; F_DUPFD_CLOEXEC touches no memory and
        // returns a new fd (close-on-exec, so a binary upgrade's successor does not inherit it).
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(rest);
        }
        // SAFETY: `dup` was just made and is owned by nothing else.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        let (index, gen) = {
            let mut slots = self.slots.borrow_mut();
            let index = match self.free.borrow_mut().pop() {
                Some(i) => i,
                None => {
                    slots.push(Entry {
                        fd: None,
                        gen: 0,
                        served: 0,
                        ip,
                        nonblocking,
                    });
                    (slots.len() - 1) as u32
                }
            };
            let e = &mut slots[index as usize];
            e.gen = e.gen.wrapping_add(1);
            (index, e.gen)
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: (u64::from(gen) << 32) | u64::from(index),
        };
        // SAFETY: both fds are open; `ev` is a valid event for the call.
        let added = unsafe {
            libc::epoll_ctl(
                self.ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                dup.as_raw_fd(),
                &mut ev,
            )
        };
        if added < 0 {
            self.free.borrow_mut().push(index);
            return Err(rest);
        }
        let slot = Entry {
            fd: Some(dup),
            gen,
            served: served.min(u64::from(u32::MAX)) as u32,
            ip,
            nonblocking,
        };
        self.slots.borrow_mut()[index as usize] = slot;
        let deadline = Instant::now() + wait;
        {
            let mut queues = self.queues.borrow_mut();
            let q = match queues.iter().position(|q| q.wait == wait) {
                Some(i) => &mut queues[i],
                None => {
                    queues.push(Queue {
                        wait,
                        due: VecDeque::new(),
                    });
                    queues.last_mut().expect("just pushed")
                }
            };
            q.due.push_back((deadline, index, gen));
        }
        self.records.set(self.records.get() + 1);
        if self.records.get() > 2 * self.parked.get() + COMPACT_SLACK {
            self.compact();
        }
        self.parked.set(self.parked.get() + 1);
        self.conns.set(self.conns.get() + 1);
        let mut deadline = deadline;
        if Rc::weak_count(&alive) > 0 {
            // io_uring: the cancel goes in with the next submission; checked again at the
            // park's next wake-up, a tick away at most.
            self.settling.borrow_mut().push((alive, rest));
            deadline = deadline.min(Instant::now() + SETTLE);
        } else {
            drop(rest);
        }
        if self.armed.get().map_or(true, |a| deadline < a) {
            self.rearm.set(true);
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
        Ok(())
    }

    /// Drops the expiry records of connections no longer parked (woken, or their slot reused):
    /// run when they outnumber the live ones, so its cost is spread over as many parks.
    fn compact(&self) {
        let slots = self.slots.borrow();
        let live = |&(_, i, gen): &(Instant, u32, u32)| {
            slots
                .get(i as usize)
                .is_some_and(|e| e.gen == gen && e.fd.is_some())
        };
        let mut queues = self.queues.borrow_mut();
        let mut kept = 0;
        for q in queues.iter_mut() {
            q.due.retain(live);
            q.due.shrink_to(q.due.len() * 2);
            kept += q.due.len();
        }
        queues.retain(|q| !q.due.is_empty());
        self.records.set(kept);
    }

    /// Gives back what the tables grew to in a burst (a quiet shard calls it, runtime/quiet.rs):
    /// stale expiry records first, then the free slots past the last parked one. The order
    /// matters: a slot made again at a dropped index restarts its generation, so no record
    /// naming a dropped slot may be left to match it.
    pub fn trim(&self) {
        self.compact();
        crate::util::slots::trim_tail(
            &mut self.slots.borrow_mut(),
            &mut self.free.borrow_mut(),
            |e| e.fd.is_some(),
        );
    }

    /// Drops what settled (see `settling`); the next time to look again, if any is left.
    fn settle(&self, now: Instant) -> Option<Instant> {
        let done: Vec<_> = {
            let mut s = self.settling.borrow_mut();
            let (done, left) = std::mem::take(&mut *s)
                .into_iter()
                .partition(|(alive, _)| Rc::weak_count(alive) == 0);
            *s = left;
            done
        };
        drop(done);
        (!self.settling.borrow().is_empty()).then(|| now + SETTLE)
    }

    /// Takes entry `index` out if it is still generation `gen`, leaving the epoll set.
    fn take(&self, index: u32, gen: u32) -> Option<Woken> {
        let woken = {
            let mut slots = self.slots.borrow_mut();
            let e = slots.get_mut(index as usize).filter(|e| e.gen == gen)?;
            Woken {
                fd: e.fd.take()?,
                ip: e.ip,
                served: u64::from(e.served),
                nonblocking: e.nonblocking,
            }
        };
        // SAFETY: both fds are open; EPOLL_CTL_DEL ignores the event pointer.
        unsafe {
            libc::epoll_ctl(
                self.ep.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                woken.fd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
        self.free.borrow_mut().push(index);
        self.parked.set(self.parked.get() - 1);
        Some(woken)
    }

    /// Closes entry `index` (generation `gen`) if it is still parked.
    fn close(&self, index: u32, gen: u32) {
        if self.take(index, gen).is_some() {
            self.conns.set(self.conns.get().saturating_sub(1));
        }
    }

    fn close_all(&self) {
        let live: Vec<(u32, u32)> = self
            .slots
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, e)| e.fd.is_some())
            .map(|(i, e)| (i as u32, e.gen))
            .collect();
        for (i, gen) in live {
            self.close(i, gen);
        }
        self.queues.borrow_mut().clear();
        self.records.set(0);
    }

    /// Closes what is due at `now`; the next deadline.
    fn expire(&self, now: Instant) -> Option<Instant> {
        if self.linger_until.get().is_some_and(|t| t <= now) {
            self.close_all();
            return None;
        }
        let mut due = Vec::new();
        let mut next = self.linger_until.get();
        {
            let mut queues = self.queues.borrow_mut();
            for q in queues.iter_mut() {
                while let Some(&(at, i, gen)) = q.due.front() {
                    if at > now {
                        next = Some(next.map_or(at, |n| n.min(at)));
                        break;
                    }
                    q.due.pop_front();
                    self.records.set(self.records.get().saturating_sub(1));
                    due.push((i, gen));
                }
            }
            queues.retain(|q| !q.due.is_empty());
        }
        for (i, gen) in due {
            self.close(i, gen);
        }
        next
    }

    /// Takes every ready socket out of the set, each handed to `wake`.
    fn ready(&self, mut wake: impl FnMut(Woken)) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            // SAFETY: `events` has room for BATCH events; timeout 0 never blocks.
            let n = unsafe {
                libc::epoll_wait(self.ep.as_raw_fd(), events.as_mut_ptr(), BATCH as i32, 0)
            };
            if n <= 0 {
                return;
            }
            for ev in &events[..n as usize] {
                let (data, hup) = (ev.u64, ev.events & HUP != 0);
                if let Some(w) = self.take(data as u32, (data >> 32) as u32) {
                    // The client closed (or reset) with nothing to read: closed here, with no
                    // task and no read buffer (as a read of the close would end the loop).
                    if hup && crate::net::hold_buf::closed(w.fd.as_raw_fd()) {
                        self.conns.set(self.conns.get().saturating_sub(1));
                    } else {
                        wake(w);
                    }
                }
            }
            if (n as usize) < BATCH {
                return;
            }
        }
    }
}

/// The park's task: waits for any parked socket to become readable (or the next expiry, or
/// the shard's drain) and starts a connection loop for each readable one. Spawned once per
/// shard (`shard` names it in logs); while it does not run, nothing parks. `drain` is the
/// shard's; `wake` starts a connection loop.
pub(super) async fn run(
    park: Rc<Park>,
    drain: Rc<Drain>,
    shard: usize,
    mut wake: impl FnMut(Woken),
) {
    // The set's readiness through monoio: a stream made from a duplicate of the epoll fd (an
    // epoll fd is pollable; io_uring waits with a POLL_ADD, the legacy driver with its own
    // epoll). Only `readable` is ever called on it, never a socket call.
    let ep = park
        .ep
        .try_clone()
        .and_then(|fd| monoio::net::TcpStream::from_std(std::net::TcpStream::from(fd)));
    let ep = match ep {
        Ok(ep) => ep,
        Err(e) => {
            log::warn!("shard {}: idle connections cannot park: {e}", shard);
            return;
        }
    };
    struct Running<'a>(&'a Park);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.running.set(false);
            self.0.close_all();
        }
    }
    park.running.set(true);
    let _running = Running(&park);
    let mut lingering = false;
    let mut next: Option<Instant> = None;
    loop {
        park.armed.set(next);
        let readable = {
            let mut op = pin!(ep.readable(false));
            let mut timer = next.map(|d| Wait::new(d.saturating_duration_since(Instant::now())));
            let mut drain = (!drain.is_draining()).then(|| drain.wait());
            std::future::poll_fn(|cx| {
                if let Some(d) = drain.as_mut() {
                    if Pin::new(d).poll(cx).is_ready() {
                        return Poll::Ready(Ok(()));
                    }
                }
                // A park with an earlier deadline than the timer's.
                if park.rearm.replace(false) {
                    return Poll::Ready(Ok(()));
                }
                *park.waker.borrow_mut() = Some(cx.waker().clone());
                match timer.as_mut() {
                    Some(t) => t.poll_with(op.as_mut(), cx).map(|r| r.unwrap_or(Ok(()))),
                    None => op.as_mut().poll(cx),
                }
            })
            .await
        };
        park.waker.borrow_mut().take();
        if let Err(e) = readable {
            log::warn!("shard {}: idle connections' epoll failed: {e}", shard);
            return;
        }
        if drain.is_draining() && !lingering {
            lingering = true;
            match drain.linger() {
                // A request already on its way is answered (with a close), as in hold::ready.
                Some(l) => park.linger_until.set(Some(Instant::now() + l)),
                None => park.close_all(),
            }
        }
        park.ready(&mut wake);
        let now = Instant::now();
        next = match (park.expire(now), park.settle(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_connection_is_small() {
        let entry = std::mem::size_of::<Entry>();
        let record = std::mem::size_of::<(Instant, u32, u32)>();
        eprintln!("parked entry {entry} B, expiry record {record} B");
        assert!(entry <= 32, "parked entry grew to {entry} bytes");
        assert!(record <= 24, "expiry record grew to {record} bytes");
    }

    #[test]
    fn records_of_woken_connections_do_not_pile_up() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let park = Park::new(Rc::new(Cell::new(0))).expect("epoll");
        park.running.set(true);
        let drain = Drain::default();
        // One connection idling past the hold, then woken, 10,000 times within one wait: each
        // park leaves a record that only expires at the end of the (long) wait.
        for _ in 0..10_000 {
            let p = Parking {
                fd: server.as_raw_fd(),
                ip: IpAddr::from([127, 0, 0, 1]),
                served: 1,
                nonblocking: true,
                wait: Duration::from_secs(75),
            };
            assert!(park.park(&drain, p, Rc::new(()), Box::new(())).is_ok());
            let (index, gen) = {
                let slots = park.slots.borrow();
                let i = slots.iter().position(|e| e.fd.is_some()).expect("parked");
                (i as u32, slots[i].gen)
            };
            assert!(park.take(index, gen).is_some());
        }
        let held: usize = park.queues.borrow().iter().map(|q| q.due.len()).sum();
        assert_eq!(held, park.records.get());
        assert!(held <= COMPACT_SLACK + 1, "{held} expiry records kept");
        assert_eq!(park.parked(), 0);
    }

    #[test]
    fn trim_gives_back_free_slots_and_keeps_parked_ones() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pairs: Vec<_> = (0..100)
            .map(|_| {
                let c = std::net::TcpStream::connect(addr).expect("connect");
                (c, listener.accept().expect("accept").0)
            })
            .collect();
        let park = Park::new(Rc::new(Cell::new(0))).expect("epoll");
        park.running.set(true);
        let drain = Drain::default();
        let parking = |server: &std::net::TcpStream, wait| Parking {
            fd: server.as_raw_fd(),
            ip: IpAddr::from([127, 0, 0, 1]),
            served: 1,
            nonblocking: true,
            wait,
        };
        // A burst with a short wait: its records are due almost at once.
        for (_, server) in &pairs {
            let p = parking(server, Duration::from_millis(1));
            assert!(park.park(&drain, p, Rc::new(()), Box::new(())).is_ok());
        }
        // All but slot 5 wake: the burst is over, one connection stays parked.
        let first: Vec<(u32, u32)> = park
            .slots
            .borrow()
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u32, e.gen))
            .collect();
        for &(i, gen) in &first {
            if i != 5 {
                assert!(park.take(i, gen).is_some());
            }
        }
        park.trim();
        assert_eq!(park.slots.borrow().len(), 6);
        assert!(park.free.borrow().iter().all(|&i| i < 6));
        let records: usize = park.queues.borrow().iter().map(|q| q.due.len()).sum();
        assert_eq!(records, 1);
        assert_eq!(park.parked(), 1);
        // The one left still wakes. New parks with a long wait reuse the freed slots, then make
        // slots again at dropped indices, whose generations start over.
        assert!(park.take(5, first[5].1).is_some());
        for (_, server) in pairs.iter().take(40) {
            let p = parking(server, Duration::from_secs(75));
            assert!(park.park(&drain, p, Rc::new(()), Box::new(())).is_ok());
        }
        assert_eq!(park.slots.borrow().len(), 40);
        // The burst's records are due now; had any naming a dropped slot survived the trim, it
        // would match a remade slot's generation and close a connection 75 s early.
        std::thread::sleep(Duration::from_millis(5));
        assert!(park.expire(Instant::now()).is_some());
        assert_eq!(park.parked(), 40);
    }
}
