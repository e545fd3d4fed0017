//! The upstream byte stream: plain TCP or TLS, one type so pools, retries and tunnels treat both alike.
//! Owns no buffers or protocol logic; every call is delegated to the variant.

use std::io;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::net::tls_client::ClientStream;

/// The TLS arms box their futures: rustls' are ~700 bytes, and inline they would size (and be
/// copied with) every plain-TCP read and write of the exchange too.
pub enum UpstreamStream {
    Plain(TcpStream),
    /// Boxed: the rustls session and its buffers are large and TLS is the rarer case.
    Tls(Box<ClientStream>),
}

impl AsyncReadRent for UpstreamStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls(s) => Box::pin(s.read(buf)).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.readv(buf).await,
            UpstreamStream::Tls(s) => Box::pin(s.readv(buf)).await,
        }
    }
}

impl AsyncWriteRent for UpstreamStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.write(buf).await,
            UpstreamStream::Tls(s) => Box::pin(s.write(buf)).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.writev(buf).await,
            UpstreamStream::Tls(s) => Box::pin(s.writev(buf)).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.flush().await,
            UpstreamStream::Tls(s) => Box::pin(s.flush()).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.shutdown().await,
            UpstreamStream::Tls(s) => Box::pin(s.shutdown()).await,
        }
    }
}

// SAFETY: `Split` lets monoio hand out a read half and a write half that share this value
// through `Rc<UnsafeCell<_>>` on one thread. Both variants are themselves `Split` (TcpStream by
// monoio, the TLS stream by monoio-rustls plus `Guarded`), the variant never changes after
// construction, and a half only ever calls the read or the write methods, which delegate to the
// variant's own (split-safe) methods. So this enum adds no aliasing beyond what they allow.
unsafe impl Split for UpstreamStream {}
