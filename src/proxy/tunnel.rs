//! The byte tunnel a connection becomes after a `101 Switching Protocols` (websocket).
//! Copies both directions until both end or the tunnel sits idle; knows nothing of HTTP.

use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split, Splitable};

use crate::net::io::{read_some, write_all, IoFail};

const CHUNK: usize = 16 * 1024;

/// Runs the tunnel. `client_pending` / `upstream_pending` are bytes already read past the
/// HTTP heads, which belong to the other side.
pub async fn run<C, U>(
    client: C,
    client_pending: BytesMut,
    upstream: U,
    upstream_pending: BytesMut,
    idle: Duration,
) where
    C: AsyncReadRent + AsyncWriteRent + Split,
    U: AsyncReadRent + AsyncWriteRent + Split,
{
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let last = Cell::new(Instant::now());
    let up = copy_dir(&mut cr, client_pending, &mut uw, idle, &last);
    let down = copy_dir(&mut ur, upstream_pending, &mut cw, idle, &last);
    monoio::join!(up, down);
}

async fn copy_dir<R: AsyncReadRent, W: AsyncWriteRent>(
    r: &mut R,
    mut buf: BytesMut,
    w: &mut W,
    idle: Duration,
    last: &Cell<Instant>,
) {
    loop {
        if !buf.is_empty() {
            if write_all(w, &mut buf, idle).await.is_err() {
                break;
            }
            buf.clear();
            last.set(Instant::now());
        }
        match read_some(r, &mut buf, CHUNK, idle).await {
            Ok(_) => last.set(Instant::now()),
            // The other direction may have been busy; only a tunnel idle both ways ends.
            Err(IoFail::Timeout) if last.get().elapsed() < idle => {}
            Err(_) => break,
        }
    }
    // Half-close so the peer sees the end of this direction while the other drains.
    let _ = w.shutdown().await;
}
