//! Reads a whole request body for the `request_body` plugin phase, when a plugin asked for it
//! (`Ctx::buffer_body`), up to that limit. The wire bytes stay in the client buffer, so the
//! forward that follows sends them unchanged; only a chunked body is decoded into a copy.

use super::conn::{ClientConn, ClientStream};
use super::shard::Shard;
use crate::error::{ClientError, ProxyError};
use crate::http::chunked::ChunkedDecoder;
use crate::http::parse::BodyKind;
use crate::net::io::{read_some, IoFail};

/// Where the read body is.
pub(super) enum Read {
    /// The first `n` bytes of the client buffer (a `Content-Length` body, or none).
    Buffered(usize),
    /// A chunked body's payload; its wire bytes are still in the client buffer.
    Decoded(Vec<u8>),
}

impl<S: ClientStream> ClientConn<S> {
    /// Reads the request's body into the client buffer (not consuming it).
    pub(super) async fn read_whole_body(
        &mut self,
        shard: &Shard,
        limit: u64,
    ) -> Result<Read, ProxyError> {
        let server = &shard.built.cfg.server;
        match self.req.body {
            BodyKind::Empty => Ok(Read::Buffered(0)),
            BodyKind::Length(n) => {
                if n > limit {
                    return Err(ClientError::BodyTooLarge.into());
                }
                if !self.continue_if_expected(server.send_timeout).await {
                    return Err(ClientError::BodyTimeout.into());
                }
                let n = n as usize;
                while self.client.rbuf.len() < n {
                    let want = (n - self.client.rbuf.len()).max(server.read_buffer_bytes);
                    self.more(want, server.client_body_timeout).await?;
                }
                Ok(Read::Buffered(n))
            }
            BodyKind::Chunked => {
                if !self.continue_if_expected(server.send_timeout).await {
                    return Err(ClientError::BodyTimeout.into());
                }
                let mut dec = ChunkedDecoder::new(server.max_header_bytes);
                let mut out = Vec::new();
                let mut seen = 0;
                loop {
                    let input = &self.client.rbuf[seen..];
                    let p = dec
                        .decode(input, |a, b| out.extend_from_slice(&input[a..b]))
                        .map_err(|e| ProxyError::from(ClientError::BadRequest(e.message())))?;
                    seen += p.consumed;
                    if out.len() as u64 > limit {
                        return Err(ClientError::BodyTooLarge.into());
                    }
                    if p.done {
                        return Ok(Read::Decoded(out));
                    }
                    self.more(server.read_buffer_bytes, server.client_body_timeout)
                        .await?;
                }
            }
            // Requests are never read to close (no length is an empty body).
            BodyKind::UntilClose => {
                Err(ClientError::BadRequest("request body without length").into())
            }
        }
    }

    async fn more(
        &mut self,
        reserve: usize,
        timeout: std::time::Duration,
    ) -> Result<(), ProxyError> {
        match read_some(
            &mut self.client.stream,
            &mut self.client.rbuf,
            reserve,
            timeout,
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(IoFail::Timeout) => Err(ClientError::BodyTimeout.into()),
            Err(_) => Err(ClientError::BadRequest("client closed during the request body").into()),
        }
    }
}
