//! `Guarded<S>`: makes a TLS stream safe to use after one of its I/O futures was dropped (timeouts, select!).
//! Owns only a poisoned flag; it never buffers or changes bytes.
//!
//! monoio-rustls (safe-io mode, upstream side) and our `TlsStream` (client side) move their buffer
//! into the pending read or write; a future dropped mid-operation leaves the buffer gone (and
//! monoio-rustls' next call panics, an abort with `panic = "abort"`; ours would lose bytes). The proxy drops futures routinely (read timeouts, `select!` with
//! drain), so every operation after such a drop fails with an error instead.

use std::cell::Cell;
use std::io;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::BufResult;

pub struct Guarded<S> {
    inner: S,
    poisoned: Cell<bool>,
}

/// Sets `poisoned` when dropped while still armed, i.e. when the operation never completed.
struct Armed<'a>(&'a Cell<bool>);

impl Armed<'_> {
    fn done(self) {
        std::mem::forget(self);
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

fn poisoned() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "TLS stream unusable after a cancelled operation",
    )
}

impl<S> Guarded<S> {
    pub fn new(inner: S) -> Self {
        Guarded {
            inner,
            poisoned: Cell::new(false),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether an operation was dropped before it ended (every later one fails).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.get()
    }

    /// Runs `op` on the stream like a read or a write: refused once poisoned, and poisons the
    /// stream if dropped before it ends.
    pub async fn run<'a, T, F>(&'a mut self, op: impl FnOnce(&'a mut S) -> F) -> io::Result<T>
    where
        F: std::future::Future<Output = io::Result<T>> + 'a,
    {
        if self.poisoned.get() {
            return Err(poisoned());
        }
        let armed = Armed(&self.poisoned);
        let r = op(&mut self.inner).await;
        armed.done();
        r
    }
}

impl<S: AsyncReadRent> AsyncReadRent for Guarded<S> {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.poisoned.get() {
            return (Err(poisoned()), buf);
        }
        let armed = Armed(&self.poisoned);
        let r = self.inner.read(buf).await;
        armed.done();
        r
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.poisoned.get() {
            return (Err(poisoned()), buf);
        }
        let armed = Armed(&self.poisoned);
        let r = self.inner.readv(buf).await;
        armed.done();
        r
    }
}

impl<S: AsyncWriteRent> AsyncWriteRent for Guarded<S> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.poisoned.get() {
            return (Err(poisoned()), buf);
        }
        let armed = Armed(&self.poisoned);
        let r = self.inner.write(buf).await;
        armed.done();
        r
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.poisoned.get() {
            return (Err(poisoned()), buf);
        }
        let armed = Armed(&self.poisoned);
        let r = self.inner.writev(buf).await;
        armed.done();
        r
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.poisoned.get() {
            return Err(poisoned());
        }
        let armed = Armed(&self.poisoned);
        let r = self.inner.flush().await;
        armed.done();
        r
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        if self.poisoned.get() {
            return Err(poisoned());
        }
        let armed = Armed(&self.poisoned);
        let r = self.inner.shutdown().await;
        armed.done();
        r
    }
}

// SAFETY: `Split` promises that a read half and a write half may be used at the same time on
// one thread (monoio shares the value through `Rc<UnsafeCell<_>>`). `Guarded` adds only a
// `Cell<bool>`, read and written synchronously between awaits on that one thread, so it adds no
// new aliasing; everything else is delegated to `S`, which is itself `Split`.
unsafe impl<S: Split> Split for Guarded<S> {}
