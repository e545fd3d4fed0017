//! Send timing for one thread: a min-heap of due times, a timerfd read on the ring that wakes
//! the task shortly before the earliest, then a short busy-poll to it. Must not touch sockets.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::runtime::mono;

/// Longest unbroken busy-poll; then one real wait lets the runtime park, so monoio's own timers
/// (the watchdog) still fire at 100k req/s, when some send is always due within the window.
const MAX_SPIN: Duration = Duration::from_millis(1);

/// One worker thread's schedule. Connections `wait` on it; `run` is the task that fires it.
pub struct Pacer {
    /// `None` on the epoll fallback, where waits use monoio's millisecond timer instead.
    timer: Option<Timer>,
    /// Pending due times and the slot waiting for each.
    heap: RefCell<BinaryHeap<Reverse<(Instant, usize)>>>,
    slots: RefCell<Vec<Slot>>,
    /// Slots handed back by `free_slot`, reused before the table grows.
    free: RefCell<Vec<usize>>,
    /// The due time the timerfd is armed for (None: disarmed).
    armed: Cell<Option<Instant>>,
    stopped: Cell<bool>,
    /// Busy-poll window before each due time (zero: the timer alone): the timerfd wakes the
    /// pacer this much early and the rest is polled, since a timer wake-up through the ring
    /// lands 15-80 us late on the test VM and one poll round takes ~2 us. Costs up to
    /// `rate x window` of the thread's CPU.
    spin: Duration,
    /// The busy-poll's yield (see `Requeue`): the firing task's waker, parked for the relay.
    yielded: RefCell<Option<Waker>>,
    /// The relay task's waker, while it waits for the next yield.
    relay: RefCell<Option<Waker>>,
}

#[derive(Default)]
struct Slot {
    fired: bool,
    waker: Option<Waker>,
}

/// A timerfd plus the anchor that maps `Instant`s (CLOCK_MONOTONIC underneath) onto it.
struct Timer {
    fd: OwnedFd,
    anchor: Instant,
    anchor_ns: u128,
}

impl Timer {
    fn new() -> Result<Timer, String> {
        // SAFETY: plain syscall; the returned fd is checked and then owned by `OwnedFd`.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
            )
        };
        if raw < 0 {
            return Err(format!(
                "timerfd_create: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `raw` is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let anchor = Instant::now();
        // SAFETY: `ts` is a valid out-pointer for the duration of the call.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let anchor_ns = ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128;
        Ok(Timer {
            fd,
            anchor,
            anchor_ns,
        })
    }

    /// Arms the timer for `at` (absolute), or disarms it with `None`.
    fn arm(&self, at: Option<Instant>) {
        let value = match at {
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            Some(t) => {
                // A time already past is clamped to "now-ish"; zero would disarm the timer.
                let ns =
                    (self.anchor_ns + t.saturating_duration_since(self.anchor).as_nanos()).max(1);
                libc::timespec {
                    tv_sec: (ns / 1_000_000_000) as libc::time_t,
                    tv_nsec: (ns % 1_000_000_000) as libc::c_long,
                }
            }
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: valid fd and pointers for the duration of the call; the old value is not read.
        unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
    }
}

/// Lets the thread's timers (the timerfd's hrtimer) fire at their time rather than up to the
/// default 50 us slack later.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer; it only affects this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

impl Pacer {
    /// `precise` is false on the epoll fallback (no ring to read the timerfd on).
    pub fn new(slots: usize, precise: bool, spin: Duration) -> Result<Rc<Pacer>, String> {
        let timer = if precise { Some(Timer::new()?) } else { None };
        Ok(Rc::new(Pacer {
            timer,
            heap: RefCell::new(BinaryHeap::with_capacity(slots)),
            slots: RefCell::new((0..slots).map(|_| Slot::default()).collect()),
            free: RefCell::new(Vec::new()),
            armed: Cell::new(None),
            stopped: Cell::new(false),
            spin,
            yielded: RefCell::new(None),
            relay: RefCell::new(None),
        }))
    }

    /// A slot for a waiter that comes and goes (a `serve` connection); give it back with
    /// `free_slot` once it can no longer be waiting.
    pub fn alloc_slot(&self) -> usize {
        if let Some(i) = self.free.borrow_mut().pop() {
            return i;
        }
        let mut slots = self.slots.borrow_mut();
        slots.push(Slot::default());
        slots.len() - 1
    }

    pub fn free_slot(&self, slot: usize) {
        self.slots.borrow_mut()[slot] = Slot::default();
        self.free.borrow_mut().push(slot);
    }

    /// Resolves at `due` (returns at once if it has passed). `slot` is the caller's own index.
    pub async fn wait(&self, slot: usize, due: Instant) {
        if Instant::now() >= due {
            return;
        }
        let Some(timer) = &self.timer else {
            monoio::time::sleep_until(mono(due)).await;
            return;
        };
        self.slots.borrow_mut()[slot].fired = false;
        self.heap.borrow_mut().push(Reverse((due, slot)));
        if self.armed.get().is_none_or(|a| due < a) {
            self.armed.set(Some(due));
            timer.arm(Some(self.early(due)));
        }
        Fired { pacer: self, slot }.await;
    }

    /// The firing task: reads the timerfd on the ring, wakes every slot now due, re-arms for
    /// the next. Ends after `stop`.
    pub async fn run(self: Rc<Self>) {
        let Some(timer) = &self.timer else { return };
        let file = match timer.fd.try_clone().map(std::fs::File::from) {
            Ok(f) => f,
            Err(_) => return,
        };
        let Ok(file) = monoio::fs::File::from_std(file) else {
            return;
        };
        let relay = monoio::spawn(self.clone().relay());
        let mut buf = vec![0u8; 8];
        while !self.stopped.get() {
            let (_res, b) = file.read_at(buf, 0).await;
            buf = b;
            buf.clear();
            buf.resize(8, 0);
            let spin_start = Instant::now();
            loop {
                let (next, fired) = self.fire_due();
                let now = Instant::now();
                let poll_on = next.is_some_and(|due| due <= now + self.spin);
                // Whatever was just fired runs before the timer is re-armed below: re-arming is
                // a syscall (it reprograms the timer hardware) that otherwise sat between the
                // due time and the send, ~8 us at low rates.
                if (poll_on && now - spin_start < MAX_SPIN) || fired {
                    Requeue {
                        pacer: &self,
                        queued: false,
                    }
                    .await;
                }
                if !poll_on || now - spin_start >= MAX_SPIN {
                    break;
                }
            }
            let next = self.heap.borrow().peek().map(|r| r.0 .0);
            self.armed.set(next);
            timer.arm(next.map(|d| self.early(d)));
        }
        if let Some(w) = self.relay.borrow_mut().take() {
            w.wake();
        }
        relay.await;
    }

    /// The busy-poll's helper task: each time it is woken it wakes the firing task, which so
    /// lands at the back of the run queue (see `Requeue`). Ends after `stop`.
    async fn relay(self: Rc<Self>) {
        std::future::poll_fn(|cx| {
            if let Some(w) = self.yielded.borrow_mut().take() {
                w.wake();
            }
            if self.stopped.get() {
                return Poll::Ready(());
            }
            *self.relay.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// When the timerfd should wake the pacer for `due`.
    fn early(&self, due: Instant) -> Instant {
        due.checked_sub(self.spin).unwrap_or(due)
    }

    /// Wakes every slot now due; returns the next due time and whether any slot was woken.
    fn fire_due(&self) -> (Option<Instant>, bool) {
        let mut heap = self.heap.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        let now = Instant::now();
        let mut fired = false;
        while let Some(&Reverse((due, slot))) = heap.peek() {
            if due > now {
                return (Some(due), fired);
            }
            fired = true;
            heap.pop();
            let s = &mut slots[slot];
            s.fired = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
        (None, fired)
    }

    /// Makes `run` return: sets the flag and fires the timer once more.
    pub fn stop(&self) {
        self.stopped.set(true);
        if let Some(t) = &self.timer {
            self.armed.set(None);
            t.arm(Some(Instant::now()));
        }
    }
}

/// Lets every other ready task (and the ring's completions) run once, then resumes. monoio
/// puts a task that wakes itself during its own poll at the *front* of the run queue, so a
/// self-waking yield would poll again before the sends it just fired or any completion: the
/// whole busy-poll window (up to `MAX_SPIN`) went by before they ran. Instead the relay task is
/// woken (a task woken by another goes to the back) and it wakes this one, behind the rest.
struct Requeue<'a> {
    pacer: &'a Pacer,
    queued: bool,
}

impl Future for Requeue<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.queued {
            return Poll::Ready(());
        }
        self.queued = true;
        match self.pacer.relay.borrow_mut().take() {
            Some(relay) => {
                *self.pacer.yielded.borrow_mut() = Some(cx.waker().clone());
                relay.wake();
            }
            // The relay has not run yet (the very first poll): an ordinary yield this once.
            None => cx.waker().wake_by_ref(),
        }
        Poll::Pending
    }
}

struct Fired<'a> {
    pacer: &'a Pacer,
    slot: usize,
}

impl Future for Fired<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slots = self.pacer.slots.borrow_mut();
        let s = &mut slots[self.slot];
        if s.fired {
            Poll::Ready(())
        } else {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}
