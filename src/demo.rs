//! The built-in demo upstream: a tiny HTTP/1.1 server that echoes what it received as JSON,
//! so the default config serves on a fresh machine. Runs on its own thread; never on the shards.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use monoio::net::{TcpListener, TcpStream};

use crate::http::parse::{BodyKind, HeadLimits, RequestHead, Status};
use crate::http::write::put_u64;
use crate::net::io::{read_some, write_all};
use crate::net::ring::RingOpts;

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 16 * 1024,
    max_request_line_bytes: 8 * 1024,
};

/// Binds now (so a taken port fails start-up), or serves on `inherited` (a binary upgrade's
/// predecessor's socket), on a background thread. Returns a copy of the socket for a later upgrade.
pub fn start(
    addr: SocketAddr,
    ring: RingOpts,
    inherited: Option<std::net::TcpListener>,
) -> std::io::Result<std::net::TcpListener> {
    let std_listener = match inherited {
        Some(l) => l,
        None => std::net::TcpListener::bind(addr)?,
    };
    std_listener.set_nonblocking(true)?;
    let copy = std_listener.try_clone()?;
    let real = std_listener.local_addr()?;
    log::info!("demo upstream on {real}");
    std::thread::Builder::new()
        .name("ringway-demo".into())
        .spawn(move || {
            crate::net::ring::block_on(ring, move |_| async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("demo upstream: {e}");
                        return;
                    }
                };
                while let Ok((s, _)) = listener.accept().await {
                    monoio::spawn(serve(s));
                }
            })
        })?;
    Ok(copy)
}

async fn serve(mut s: TcpStream) {
    let mut buf = BytesMut::with_capacity(8192);
    let mut out = BytesMut::with_capacity(1024);
    let mut req = RequestHead::default();
    let t = std::time::Duration::from_secs(60);
    loop {
        let n = match req.parse(&buf, &LIMITS) {
            Ok(Status::Complete(n)) => n,
            Ok(Status::Partial) => {
                if read_some(&mut s, &mut buf, 8192, t).await.is_err() {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        buf.advance(n);
        // Discard a Content-Length body; chunked bodies end the connection after the reply.
        let mut close = !req.keep_alive;
        match req.body {
            BodyKind::Length(mut left) => {
                while left > 0 {
                    if buf.is_empty() && read_some(&mut s, &mut buf, 8192, t).await.is_err() {
                        return;
                    }
                    let take = left.min(buf.len() as u64) as usize;
                    buf.advance(take);
                    left -= take as u64;
                }
            }
            BodyKind::Chunked | BodyKind::UntilClose => close = true,
            BodyKind::Empty => {}
        }
        let mut headers = serde_json::Map::new();
        for h in &req.headers {
            headers.insert(
                String::from_utf8_lossy(req.name(h)).to_ascii_lowercase(),
                String::from_utf8_lossy(req.value(h)).into_owned().into(),
            );
        }
        let body = serde_json::json!({
            "service": "ringway demo upstream",
            "method": String::from_utf8_lossy(req.method_bytes()),
            "path": String::from_utf8_lossy(req.path_and_query()),
            "headers": headers,
        })
        .to_string();
        out.clear();
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ",
        );
        put_u64(&mut out, body.len() as u64);
        out.extend_from_slice(if close {
            &b"\r\nConnection: close\r\n\r\n"[..]
        } else {
            b"\r\n\r\n"
        });
        out.extend_from_slice(body.as_bytes());
        if write_all(&mut s, &mut out, t).await.is_err() || close {
            return;
        }
    }
}
