//! The node's cross-core mesh: typed lanes with, per shard, one receiver and senders to every
//! shard, each send waking the receiver through the waker its owner supplied. Must not name any
//! subsystem's messages nor how a shard is woken (the runtime supplies the wakers).
//!
//! One `Mesh` per node, sized by the worker count; every lane made from it reaches the same
//! shards through the same wakers, so a shard is woken once however many lanes have mail for it
//! (a waker may coalesce wake-ups until the shard looks at its lanes). Shards send to each
//! other with their `Lane`; threads that are not shards (control threads) with an `Inlet`.
//! Sending never blocks and takes no lock (an unbounded crossbeam channel per shard and lane).

use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Sender};

/// How a sender wakes a shard that has mail. Called on the sender's thread after the message is
/// queued, so a shard woken by it finds the message; must not block.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// A waker that does nothing: the receiver polls (tests, a mesh of one).
pub struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// One shard's door on one lane: its queue and its waker.
struct Door<T> {
    tx: Sender<T>,
    wake: Arc<dyn Wake>,
}

impl<T> Door<T> {
    fn send(&self, msg: T) -> bool {
        if self.tx.send(msg).is_err() {
            return false; // the shard has exited
        }
        self.wake.wake();
        true
    }
}

impl<T> Clone for Door<T> {
    fn clone(&self) -> Self {
        Door {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

/// The node's mesh: one waker per shard, from which typed lanes are made.
#[derive(Clone)]
pub struct Mesh {
    wakers: Vec<Arc<dyn Wake>>,
}

impl Mesh {
    /// A mesh over `wakers.len()` shards; `wakers[i]` wakes shard `i`.
    pub fn new(wakers: Vec<Arc<dyn Wake>>) -> Mesh {
        Mesh { wakers }
    }

    pub fn shards(&self) -> usize {
        self.wakers.len()
    }

    /// A new lane for messages of type `T`: every shard's end (index = shard id) and an inlet
    /// for threads outside the shards.
    pub fn lane<T>(&self) -> (Vec<Lane<T>>, Inlet<T>) {
        let (doors, rxs): (Vec<Door<T>>, Vec<Receiver<T>>) = self
            .wakers
            .iter()
            .map(|w| {
                let (tx, rx) = unbounded();
                (
                    Door {
                        tx,
                        wake: w.clone(),
                    },
                    rx,
                )
            })
            .unzip();
        let doors: Arc<[Door<T>]> = doors.into();
        let ends = rxs
            .into_iter()
            .enumerate()
            .map(|(id, rx)| Lane {
                id,
                rx,
                doors: doors.clone(),
            })
            .collect();
        (ends, Inlet { doors })
    }
}

/// One shard's end of one lane: its receiver and the doors of every shard (its own included).
pub struct Lane<T> {
    id: usize,
    rx: Receiver<T>,
    doors: Arc<[Door<T>]>,
}

impl<T> Lane<T> {
    /// A lane of one shard with nobody to send to (tests, a single shard built alone).
    pub fn solo() -> Lane<T> {
        Mesh::new(vec![Arc::new(NoWake)])
            .lane()
            .0
            .pop()
            .expect("a mesh of one has one end")
    }

    /// This shard's id (its index in the mesh).
    pub fn id(&self) -> usize {
        self.id
    }

    /// How many shards the lane reaches.
    pub fn shards(&self) -> usize {
        self.doors.len()
    }

    /// This shard's own waker: for a thread outside the mesh that answers this shard on a
    /// channel of its own and must wake it after each send.
    pub fn waker(&self) -> Arc<dyn Wake> {
        self.doors
            .get(self.id)
            .map_or_else(|| Arc::new(NoWake) as Arc<dyn Wake>, |d| d.wake.clone())
    }

    /// Queues `msg` for shard `to` and wakes it; false if there is no such shard or it exited.
    pub fn send(&self, to: usize, msg: T) -> bool {
        self.doors.get(to).is_some_and(|d| d.send(msg))
    }

    /// Sends `msg` to every other shard (the last one gets the original, the others a copy);
    /// returns how many it reached.
    pub fn broadcast(&self, msg: T) -> usize
    where
        T: Clone,
    {
        let mut left = self.shards().saturating_sub(1);
        let mut msg = Some(msg);
        let mut sent = 0;
        for (i, d) in self.doors.iter().enumerate() {
            if i == self.id {
                continue;
            }
            left -= 1;
            let m = if left == 0 { msg.take() } else { msg.clone() };
            if let Some(m) = m {
                sent += usize::from(d.send(m));
            }
        }
        sent
    }

    /// The next message for this shard, if any (never waits).
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

/// Senders into a lane from a thread that is not a shard (a control thread): reaches every shard.
pub struct Inlet<T> {
    doors: Arc<[Door<T>]>,
}

impl<T> Clone for Inlet<T> {
    fn clone(&self) -> Self {
        Inlet {
            doors: self.doors.clone(),
        }
    }
}

impl<T> Inlet<T> {
    pub fn shards(&self) -> usize {
        self.doors.len()
    }

    /// Queues `msg` for shard `to` and wakes it; false if there is no such shard or it exited.
    pub fn send(&self, to: usize, msg: T) -> bool {
        self.doors.get(to).is_some_and(|d| d.send(msg))
    }

    /// One message per shard, built by `msg`; returns how many shards it reached.
    pub fn send_all(&self, msg: impl Fn() -> T) -> usize {
        self.doors.iter().filter(|d| d.send(msg())).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn lanes_reach_every_shard_and_wake_the_receiver() {
        let counts: Vec<Arc<Count>> = (0..3).map(|_| Arc::default()).collect();
        let mesh = Mesh::new(counts.iter().map(|c| c.clone() as Arc<dyn Wake>).collect());
        assert_eq!(mesh.shards(), 3);
        let (ends, inlet) = mesh.lane::<String>();
        // A second lane of another type shares the wakers.
        let (nums, _) = mesh.lane::<u32>();
        assert_eq!(ends[1].broadcast("hi".to_string()), 2);
        assert_eq!(ends[0].try_recv().as_deref(), Some("hi"));
        assert_eq!(ends[2].try_recv().as_deref(), Some("hi"));
        assert_eq!(ends[1].try_recv(), None, "a broadcast skips its sender");
        assert!(nums[0].send(2, 7));
        assert!(!nums[0].send(3, 7), "no shard 3");
        assert_eq!(nums[2].try_recv(), Some(7));
        let woke: Vec<usize> = counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect();
        assert_eq!(woke, [1, 0, 2]);
        // From outside the shards: every shard, its own thread included.
        let t = std::thread::spawn(move || inlet.send_all(|| "cluster".to_string()));
        assert_eq!(t.join().unwrap(), 3);
        for e in &ends {
            assert_eq!(e.try_recv().as_deref(), Some("cluster"));
            assert_eq!(
                e.id(),
                ends.iter().position(|x| std::ptr::eq(x, e)).unwrap()
            );
        }
        // A shard that exited (its end dropped) is skipped.
        let mut ends = ends;
        ends.truncate(2);
        assert_eq!(ends[0].broadcast("late".to_string()), 1);
        let solo = Lane::<u8>::solo();
        assert_eq!((solo.id(), solo.shards(), solo.broadcast(1)), (0, 1, 0));
    }
}
