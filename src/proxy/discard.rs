//! Reads and drops a request body the gateway answered without forwarding (a plugin's 401/429/...),
//! so the connection can stay open, as nginx's discard_body does. Bounded; never writes.

use bytes::Buf;

use super::conn::{ClientConn, ClientStream};
use super::shard::Shard;
use crate::http::chunked::ChunkedDecoder;
use crate::http::parse::BodyKind;
use crate::net::io::read_some;

/// Request bodies up to this size are read and dropped; a larger one closes the connection
/// (reading it would cost more than the client's reconnect).
pub(super) const DISCARD_MAX: u64 = 64 * 1024;

/// Read size while discarding: most discarded bodies fit in one read.
const READ: usize = 16 * 1024;

impl<S: ClientStream> ClientConn<S> {
    /// Whether the unread body of this request can be discarded to keep the connection.
    /// A client waiting for `100 Continue` that has sent nothing yet may never send the body,
    /// so it gets a close rather than a guess.
    pub(super) fn body_discardable(&self) -> bool {
        match self.req.body {
            BodyKind::Empty => true,
            _ if self.req.expect_continue && self.client.rbuf.is_empty() => false,
            BodyKind::Length(n) => n <= DISCARD_MAX,
            // Size unknown until read: tried, up to DISCARD_MAX.
            BodyKind::Chunked => true,
            BodyKind::UntilClose => false,
        }
    }

    /// Reads the request body and drops it, leaving any pipelined bytes after it in `rbuf`.
    /// False if the body is larger than `DISCARD_MAX`, malformed, or the client stalls or goes.
    pub(super) async fn discard_body(&mut self, shard: &Shard) -> bool {
        let server = &shard.built.cfg.server;
        let reserve = READ.min(server.read_buffer_bytes);
        match self.req.body {
            BodyKind::Empty => true,
            BodyKind::Length(n) if n <= DISCARD_MAX => {
                let mut left = n as usize;
                loop {
                    let take = left.min(self.client.rbuf.len());
                    self.client.rbuf.advance(take);
                    left -= take;
                    if left == 0 {
                        return true;
                    }
                    if !self.discard_read(reserve, server.client_body_timeout).await {
                        return false;
                    }
                }
            }
            BodyKind::Chunked => {
                let mut dec = ChunkedDecoder::new(server.max_header_bytes);
                // Bytes on the wire, framing included, so long extensions cannot run on.
                let mut seen = 0u64;
                loop {
                    let Ok(p) = dec.decode(&self.client.rbuf, |_, _| {}) else {
                        return false;
                    };
                    seen += p.consumed as u64;
                    self.client.rbuf.advance(p.consumed);
                    if p.done {
                        return true;
                    }
                    if seen > DISCARD_MAX {
                        return false;
                    }
                    if !self.discard_read(reserve, server.client_body_timeout).await {
                        return false;
                    }
                }
            }
            BodyKind::Length(_) | BodyKind::UntilClose => false,
        }
    }

    /// More of the body to drop; false if the client stalls past `timeout`, errs or goes.
    async fn discard_read(&mut self, reserve: usize, timeout: std::time::Duration) -> bool {
        read_some(
            &mut self.client.stream,
            &mut self.client.rbuf,
            reserve,
            timeout,
        )
        .await
        .is_ok()
    }
}
