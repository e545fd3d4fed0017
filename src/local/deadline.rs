//! Coarse deadlines for socket reads and writes: one sweeper task per shard counts ticks and wakes
//! the waits whose tick has come. Owns this thread's tick counter and wait slots; knows no sockets.
//!
//! Why not `monoio::time::timeout` per operation: each one reads the clock, builds a 640-byte
//! `Sleep` (moved with the future), and inserts into and removes from the timer wheel; callgrind
//! put that at ~900 instructions of a ~13.9k-instruction proxied request (four timed steps). Here a
//! step costs a slot push/pop and no clock read. The price is precision: a wait ends between
//! `limit` and `limit + 2 * TICK` after it started (never early, since ticks are at least `TICK`
//! apart), which is far inside what the client/upstream timeouts are for.
//!
//! A quiet shard should not wake 100 times a second for nothing: once no wait has registered for
//! `QUIET_TICKS`, the sweeper dozes until the earliest registered wait is due (or indefinitely
//! when none is). A wait registering during a doze brings the tick up to the clock first and
//! wakes the sweeper, so the doze changes when ticks are counted, never how long a wait lasts.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Tick of the sweeper; the lateness bound of every deadline is two of these.
pub const TICK: Duration = Duration::from_millis(10);
const TICK_MS: u64 = 10;

/// Ticks without a new registration before the sweeper dozes: long enough that a loaded shard
/// (which registers waits all the time) never dozes and pays nothing for the doze.
const QUIET_TICKS: u32 = 10;

/// The wait ran past its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

struct Slot {
    /// Tick at which the wait ends; 0 = slot free.
    fire: u64,
    waker: Option<Waker>,
}

struct Sweep {
    /// A sweeper runs on this thread (otherwise waits fall back to monoio timers).
    running: bool,
    tick: u64,
    /// When `tick` began (at most `TICK` ago unless dozing): what `coarse_now` returns, and
    /// where counting resumes when a doze ends. None while no sweeper runs.
    tick_at: Option<Instant>,
    /// Waits registered so far (the sweeper dozes once this stops moving).
    registered: u64,
    /// The sweeper is dozing; a registration must catch the tick up and wake it.
    dozing: bool,
    sweeper: Option<Waker>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// No registered wait fires before this tick: the sweeper skips the scan until then.
    next_scan: u64,
}

thread_local! {
    static SWEEP: RefCell<Sweep> = const {
        RefCell::new(Sweep {
            running: false,
            tick: 1,
            tick_at: None,
            registered: 0,
            dozing: false,
            sweeper: None,
            slots: Vec::new(),
            free: Vec::new(),
            next_scan: u64::MAX,
        })
    };
}

/// The clock as of the sweeper's last tick (at most `TICK` old, never ahead): for ages measured
/// in seconds (pooled connection idle time, health windows) without a clock read per request.
/// Threads without a sweeper, or whose sweeper dozes, read the clock.
pub fn coarse_now() -> Instant {
    SWEEP
        .with(|s| {
            let s = s.borrow();
            s.tick_at.filter(|_| !s.dozing)
        })
        .unwrap_or_else(Instant::now)
}

impl Sweep {
    /// Counts the whole ticks that passed since `tick_at` (a doze skipped counting them); the
    /// part of a tick left over stays uncounted, so ticks remain at least `TICK` apart.
    fn catch_up(&mut self, now: Instant) {
        let Some(at) = self.tick_at else { return };
        let n = now.saturating_duration_since(at).as_millis() as u64 / TICK_MS;
        if n > 0 {
            self.tick = self.tick.saturating_add(n);
            self.tick_at = Some(at + Duration::from_millis(n.saturating_mul(TICK_MS)));
        }
    }
}

/// Sleeps until `ticks` from now (None: for good) or until a registration ends the doze.
async fn doze(ticks: Option<u64>) {
    SWEEP.with(|s| {
        let mut s = s.borrow_mut();
        s.dozing = true; // coarse_now reads the clock meanwhile
    });
    let woken = poll_fn(|cx| {
        SWEEP.with(|s| {
            let mut s = s.borrow_mut();
            if s.dozing {
                s.sweeper = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    });
    match ticks {
        Some(n) => {
            let limit = Duration::from_millis(n.saturating_mul(TICK_MS));
            monoio::select! {
                _ = monoio::time::sleep(limit) => {}
                _ = woken => {}
            }
        }
        None => woken.await,
    }
    SWEEP.with(|s| {
        let mut s = s.borrow_mut();
        s.dozing = false;
        s.sweeper = None;
        s.catch_up(Instant::now());
    });
}

/// Ticks this thread's deadlines for as long as the runtime runs it (spawned once per shard).
pub async fn sweeper() {
    /// Threads whose sweeper is gone fall back to monoio timers instead of waiting forever.
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = SWEEP.try_with(|s| {
                let mut s = s.borrow_mut();
                s.running = false;
                s.tick_at = None;
                s.dozing = false;
                s.sweeper = None;
            });
        }
    }
    if SWEEP.with(|s| std::mem::replace(&mut s.borrow_mut().running, true)) {
        return; // already one on this thread
    }
    let _stop = Stop;
    let mut due: Vec<Waker> = Vec::new();
    let (mut seen, mut quiet) = (0u64, 0u32);
    SWEEP.with(|s| {
        let mut s = s.borrow_mut();
        s.tick_at = Some(Instant::now());
    });
    loop {
        monoio::time::sleep(TICK).await;
        let doze_for = SWEEP.with(|s| {
            let s = &mut *s.borrow_mut();
            s.tick += 1;
            s.tick_at = Some(Instant::now());
            if s.registered == seen {
                quiet = quiet.saturating_add(1);
            } else {
                (seen, quiet) = (s.registered, 0);
            }
            if s.tick >= s.next_scan {
                let tick = s.tick;
                let mut next = u64::MAX;
                for slot in s.slots.iter_mut().filter(|slot| slot.fire != 0) {
                    if slot.fire <= tick {
                        due.extend(slot.waker.take());
                    } else {
                        next = next.min(slot.fire);
                    }
                }
                s.next_scan = next;
            }
            // Wake one tick early: the tick that follows the doze is the one that fires.
            let ahead = s.next_scan.saturating_sub(s.tick);
            match (quiet >= QUIET_TICKS, s.next_scan) {
                (false, _) => None,
                (true, u64::MAX) => Some(None),
                (true, _) if ahead > 2 => Some(Some(ahead - 1)),
                _ => None,
            }
        });
        // Woken outside the borrow: a waker may touch the slots again.
        for w in due.drain(..) {
            w.wake();
        }
        if let Some(ticks) = doze_for {
            doze(ticks).await;
            quiet = 0;
        }
    }
}

/// The deadline of one I/O step, polled beside it; registers lazily (a step that completes on its
/// first poll costs nothing) and deregisters on drop. 40 bytes, so it is cheap to keep in futures.
pub struct Wait {
    limit: Duration,
    key: u32,
    fire: u64,
    /// Threads without a sweeper (admin, tests): a monoio timer, boxed so that this rare case
    /// does not put a 640-byte `Sleep` into every caller's future.
    fallback: Option<Pin<Box<monoio::time::Sleep>>>,
}

const NONE: u32 = u32::MAX;

impl Wait {
    pub fn new(limit: Duration) -> Wait {
        Wait {
            limit,
            key: NONE,
            fire: 0,
            fallback: None,
        }
    }

    /// Polls `op` and then the deadline: `Some` with the op's output, `None` once the limit has
    /// passed. Polled beside the op (not wrapping it) so the caller moves the op's future once.
    pub fn poll_with<F: Future>(
        &mut self,
        op: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<F::Output>> {
        match op.poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => self.poll_elapsed(cx).map(|()| None),
        }
    }

    /// Ready once the limit has passed.
    fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(sleep) = &mut self.fallback {
            return sleep.as_mut().poll(cx);
        }
        let waker = cx.waker();
        let mut sweeper = None;
        let registered = SWEEP.with(|s| {
            let s = &mut *s.borrow_mut();
            if self.key != NONE {
                if s.tick >= self.fire {
                    return Some(Poll::Ready(()));
                }
                let slot = &mut s.slots[self.key as usize];
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    slot.waker = Some(waker.clone());
                }
                return Some(Poll::Pending);
            }
            if !s.running {
                return None;
            }
            if s.dozing {
                // The tick stopped counting when the doze began: bring it up to the clock so
                // that `fire` below is not early, and let the sweeper count ticks again.
                s.catch_up(Instant::now());
                s.dozing = false;
                sweeper = s.sweeper.take();
            }
            s.registered += 1;
            // +1: the current tick is already partly over.
            let ticks = (self.limit.as_millis() as u64).div_ceil(TICK_MS) + 1;
            self.fire = s.tick.saturating_add(ticks);
            let slot = Slot {
                fire: self.fire,
                waker: Some(waker.clone()),
            };
            self.key = match s.free.pop() {
                Some(k) => {
                    s.slots[k as usize] = slot;
                    k
                }
                None => {
                    s.slots.push(slot);
                    (s.slots.len() - 1) as u32
                }
            };
            s.next_scan = s.next_scan.min(self.fire);
            Some(Poll::Pending)
        });
        if let Some(w) = sweeper {
            w.wake();
        }
        match registered {
            Some(p) => p,
            None => {
                let sleep = self
                    .fallback
                    .insert(Box::pin(monoio::time::sleep(self.limit)));
                sleep.as_mut().poll(cx)
            }
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if self.key == NONE {
            return;
        }
        let _ = SWEEP.try_with(|s| {
            let s = &mut *s.borrow_mut();
            if let Some(slot) = s.slots.get_mut(self.key as usize) {
                slot.fire = 0;
                slot.waker = None;
                s.free.push(self.key);
            }
        });
    }
}

/// Gives back this thread's slot table's free tail: a burst of connections grows it to its peak,
/// and a quiet shard (runtime/quiet.rs) need not keep that. Slots in use stay where they are.
pub fn trim() {
    let _ = SWEEP.try_with(|s| {
        let s = &mut *s.borrow_mut();
        crate::util::slots::trim_tail(&mut s.slots, &mut s.free, |x| x.fire != 0);
    });
}

/// Runs `fut`, giving up once `limit` has passed (see the module notes for the precision).
pub async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = pin!(fut);
    let mut wait = Wait::new(limit);
    poll_fn(|cx| wait.poll_with(fut.as_mut(), cx))
        .await
        .ok_or(Elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (up to `limit`) for the sweeper to doze. The sweeper counts ticks, not wall time: on
    /// a loaded machine its `QUIET_TICKS` take longer than `QUIET_TICKS * TICK`, so a single look
    /// after a fixed sleep can come too soon. Sleeps with a monoio timer, registering no wait.
    async fn until_dozing(limit: Duration) -> bool {
        let t = Instant::now();
        loop {
            if SWEEP.with(|s| s.borrow().dozing) {
                return true;
            }
            if t.elapsed() >= limit {
                return false;
            }
            monoio::time::sleep(TICK).await;
        }
    }

    /// A timed wait, boxed so a test can hold many and drop some.
    type Timed = Pin<Box<dyn Future<Output = Result<(), Elapsed>>>>;

    #[test]
    fn trim_gives_back_the_free_tail_and_keeps_waits_in_use() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            monoio::spawn(sweeper());
            monoio::time::sleep(TICK).await;
            let slots = || SWEEP.with(|s| s.borrow().slots.len());
            // 100 waits registered at once (a burst), the sixth one short, the others long.
            let mut waits: Vec<Timed> = (0..100)
                .map(|i| {
                    let limit = Duration::from_millis(if i == 5 { 30 } else { 60_000 });
                    Box::pin(within(limit, std::future::pending::<()>())) as Timed
                })
                .collect();
            poll_fn(|cx| {
                for w in &mut waits {
                    assert!(w.as_mut().poll(cx).is_pending());
                }
                Poll::Ready(())
            })
            .await;
            assert_eq!(slots(), 100);
            let kept = waits.swap_remove(5);
            drop(waits);
            assert_eq!(slots(), 100);
            trim();
            SWEEP.with(|s| {
                let s = s.borrow();
                assert_eq!(s.slots.len(), 6);
                assert!(s.slots.capacity() < 100);
                assert_eq!(s.free.len(), 5);
                assert!(s.free.iter().all(|&k| k < 5));
            });
            // The kept wait still ends by its deadline; a new one takes a freed slot.
            assert_eq!(kept.await, Err(Elapsed));
            let limit = Duration::from_millis(20);
            assert_eq!(
                within(limit, std::future::pending::<()>()).await,
                Err(Elapsed)
            );
            assert_eq!(slots(), 6);
        });
    }

    #[test]
    fn waits_end_never_early_with_and_without_a_sweeper() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let limit = Duration::from_millis(30);
            // No sweeper on this thread yet: the monoio-timer fallback.
            let t = Instant::now();
            assert_eq!(
                within(limit, std::future::pending::<()>()).await,
                Err(Elapsed)
            );
            assert!(t.elapsed() >= limit);

            monoio::spawn(sweeper());
            monoio::time::sleep(TICK).await;
            // Spawned tasks run once this one yields: the sleep above is enough on any load.
            assert!(SWEEP.with(|s| s.borrow().running));
            for _ in 0..3 {
                let t = Instant::now();
                assert_eq!(
                    within(limit, std::future::pending::<()>()).await,
                    Err(Elapsed)
                );
                assert!(t.elapsed() >= limit, "ended early: {:?}", t.elapsed());
            }
            assert_eq!(within(limit, async { 7 }).await, Ok(7));
            // Quiet for QUIET_TICKS: the sweeper dozes (no wait is registered, so for good),
            // and coarse_now reads the clock instead of a tick that stopped moving.
            assert!(
                until_dozing(Duration::from_secs(5)).await,
                "sweeper still ticking 5 s after the last wait"
            );
            let before = Instant::now();
            assert!(coarse_now() >= before);
            // A wait registered during the doze wakes it and still ends on time, never early.
            let t = Instant::now();
            assert_eq!(
                within(limit, std::future::pending::<()>()).await,
                Err(Elapsed)
            );
            let took = t.elapsed();
            assert!(took >= limit, "ended early: {took:?}");
            assert!(
                took < Duration::from_secs(2),
                "doze swallowed the wait: {took:?}"
            );
            // Quiet again with one long wait pending: the doze ends when that wait is due. The
            // sweeper dozes after QUIET_TICKS of the wait's 100 ticks and until one tick before it
            // fires, so the doze is watched for during most of the wait, however slow the ticks.
            let long = Duration::from_millis(1000);
            let dozed = std::cell::Cell::new(false);
            let t = Instant::now();
            let res = within(long, async {
                dozed.set(until_dozing(long).await);
                std::future::pending::<()>().await
            })
            .await;
            assert_eq!(res, Err(Elapsed));
            assert!(
                dozed.get(),
                "sweeper kept ticking with only a far wait pending"
            );
            let took = t.elapsed();
            assert!(took >= long, "ended early: {took:?}");
            assert!(
                took < long + Duration::from_secs(2),
                "doze swallowed the wait: {took:?}"
            );
            // A step that completes before its deadline leaves no live slot behind.
            let done = within(limit, monoio::time::sleep(Duration::from_millis(1))).await;
            assert_eq!(done, Ok(()));
            SWEEP.with(|s| {
                let s = s.borrow();
                assert!(s
                    .slots
                    .iter()
                    .all(|slot| slot.fire == 0 && slot.waker.is_none()));
            });
        });
    }
}
