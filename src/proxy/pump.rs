//! Streams one message body from a source socket to a sink socket (or to no sink: `drain`), re-framing on the way:
//! chunked validated and passed through or decoded, read-until-close chunk-encoded for HTTP/1.1. Never holds a body whole.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::splice::{self, PlainSocket};
use crate::cache::Tee;
use crate::http::chunked::{put_chunk_header, ChunkError, ChunkedDecoder};
use crate::http::parse::BodyKind;
use crate::net::io::{read_some, write_all, write_range, IoFail};

/// Bodies up to this size ride in the same write as the head before them.
const COALESCE: usize = 32 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PumpFail {
    Src(IoFail),
    Dst(IoFail),
    Framing(ChunkError),
    TooLarge,
}

impl From<splice::SpliceFail> for PumpFail {
    fn from(f: splice::SpliceFail) -> PumpFail {
        match f {
            splice::SpliceFail::Src(e) => PumpFail::Src(e),
            splice::SpliceFail::Dst(e) => PumpFail::Dst(e),
        }
    }
}

pub struct PumpCfg {
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Read size.
    pub reserve: usize,
    /// Body byte limit, 0 = none.
    pub limit: u64,
    pub max_trailer: usize,
}

/// Pumps a body of `kind` from `src` (whose already-read bytes are in `src_buf`) to `dst`.
/// `out` may hold pending bytes (a head) that must go out first; it is flushed in every case.
/// `chunk_out`: the sink expects chunked framing. Returns the body's data byte count.
pub async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(
    src: &mut R,
    src_buf: &mut BytesMut,
    dst: &mut W,
    out: &mut BytesMut,
    kind: BodyKind,
    chunk_out: bool,
    cfg: &PumpCfg,
) -> Result<u64, PumpFail> {
    pump_tee(src, src_buf, dst, out, kind, chunk_out, cfg, None).await
}

/// `pump`, also handing each piece of decoded body data to `tee` (the proxy cache copying a
/// response it may store) and telling it when the body ended cleanly.
#[allow(clippy::too_many_arguments)]
pub async fn pump_tee<R: AsyncReadRent, W: AsyncWriteRent>(
    src: &mut R,
    src_buf: &mut BytesMut,
    dst: &mut W,
    out: &mut BytesMut,
    kind: BodyKind,
    chunk_out: bool,
    cfg: &PumpCfg,
    mut tee: Option<&mut Tee>,
) -> Result<u64, PumpFail> {
    let mut total = 0u64;
    match kind {
        BodyKind::Empty => {}
        BodyKind::Length(n) => {
            let mut rem = n;
            while rem > 0 {
                if src_buf.is_empty() {
                    read_some(src, src_buf, cfg.reserve, cfg.read_timeout)
                        .await
                        .map_err(PumpFail::Src)?;
                }
                let take = (src_buf.len() as u64).min(rem) as usize;
                if let Some(t) = tee.as_deref_mut() {
                    t.push(&src_buf[..take]);
                    if take as u64 == rem {
                        // Stored before the client has it all (see `Tee`).
                        t.finish();
                    }
                }
                emit(dst, out, src_buf, take, cfg).await?;
                src_buf.advance(take);
                rem -= take as u64;
                total += take as u64;
            }
        }
        BodyKind::Chunked => {
            let mut dec = ChunkedDecoder::new(cfg.max_trailer);
            loop {
                if src_buf.is_empty() {
                    read_some(src, src_buf, cfg.reserve, cfg.read_timeout)
                        .await
                        .map_err(PumpFail::Src)?;
                }
                let mut data = 0u64;
                let progress = if chunk_out {
                    let input: &[u8] = src_buf;
                    dec.decode(input, |a, b| {
                        data += (b - a) as u64;
                        if let Some(t) = tee.as_deref_mut() {
                            t.push(&input[a..b]);
                        }
                    })
                } else {
                    let input: &[u8] = src_buf;
                    dec.decode(input, |a, b| {
                        data += (b - a) as u64;
                        out.extend_from_slice(&input[a..b]);
                        if let Some(t) = tee.as_deref_mut() {
                            t.push(&input[a..b]);
                        }
                    })
                }
                .map_err(PumpFail::Framing)?;
                total += data;
                if cfg.limit > 0 && total > cfg.limit {
                    return Err(PumpFail::TooLarge);
                }
                if let (true, Some(t)) = (progress.done, tee.as_deref_mut()) {
                    t.finish();
                }
                if chunk_out {
                    emit(dst, out, src_buf, progress.consumed, cfg).await?;
                } else if !out.is_empty() {
                    flush(dst, out, cfg).await?;
                }
                src_buf.advance(progress.consumed);
                if progress.done {
                    break;
                }
            }
        }
        BodyKind::UntilClose => loop {
            if src_buf.is_empty() {
                match read_some(src, src_buf, cfg.reserve, cfg.read_timeout).await {
                    Ok(_) => {}
                    Err(IoFail::Closed) => {
                        if let Some(t) = tee.as_deref_mut() {
                            t.finish();
                        }
                        if chunk_out {
                            out.extend_from_slice(b"0\r\n\r\n");
                        }
                        break;
                    }
                    Err(e) => return Err(PumpFail::Src(e)),
                }
            }
            let take = src_buf.len();
            total += take as u64;
            if let Some(t) = tee.as_deref_mut() {
                t.push(&src_buf[..take]);
            }
            if chunk_out {
                put_chunk_header(out, take);
                out.extend_from_slice(src_buf);
                out.extend_from_slice(b"\r\n");
                flush(dst, out, cfg).await?;
            } else {
                emit(dst, out, src_buf, take, cfg).await?;
            }
            src_buf.advance(take);
        },
    }
    if !out.is_empty() {
        flush(dst, out, cfg).await?;
    }
    if let Some(t) = tee {
        t.finish();
    }
    Ok(total)
}

/// Reads a body of `kind` from `src` (whose already-read bytes are in `src_buf`) to its end with
/// no sink, handing each piece of decoded data to `tee`: a background refresh storing a response.
/// Returns the body's data byte count.
pub async fn drain<R: AsyncReadRent>(
    src: &mut R,
    src_buf: &mut BytesMut,
    kind: BodyKind,
    cfg: &PumpCfg,
    mut tee: Option<&mut Tee>,
) -> Result<u64, PumpFail> {
    let mut total = 0u64;
    match kind {
        BodyKind::Empty => {}
        BodyKind::Length(n) => {
            while total < n {
                if src_buf.is_empty() {
                    read_some(src, src_buf, cfg.reserve, cfg.read_timeout)
                        .await
                        .map_err(PumpFail::Src)?;
                }
                let take = (src_buf.len() as u64).min(n - total) as usize;
                if let Some(t) = tee.as_deref_mut() {
                    t.push(&src_buf[..take]);
                }
                src_buf.advance(take);
                total += take as u64;
            }
        }
        BodyKind::Chunked => {
            let mut dec = ChunkedDecoder::new(cfg.max_trailer);
            loop {
                if src_buf.is_empty() {
                    read_some(src, src_buf, cfg.reserve, cfg.read_timeout)
                        .await
                        .map_err(PumpFail::Src)?;
                }
                let input: &[u8] = src_buf;
                let progress = dec
                    .decode(input, |a, b| {
                        total += (b - a) as u64;
                        if let Some(t) = tee.as_deref_mut() {
                            t.push(&input[a..b]);
                        }
                    })
                    .map_err(PumpFail::Framing)?;
                src_buf.advance(progress.consumed);
                if progress.done {
                    break;
                }
            }
        }
        BodyKind::UntilClose => loop {
            if src_buf.is_empty() {
                match read_some(src, src_buf, cfg.reserve, cfg.read_timeout).await {
                    Ok(_) => {}
                    Err(IoFail::Closed) => break,
                    Err(e) => return Err(PumpFail::Src(e)),
                }
            }
            total += src_buf.len() as u64;
            if let Some(t) = tee.as_deref_mut() {
                t.push(src_buf);
            }
            src_buf.clear();
        },
    }
    if let Some(t) = tee {
        t.finish();
    }
    Ok(total)
}

/// `pump_tee`, but a long `Length` body that nothing needs to see (no tee) between two plain
/// TCP sockets is spliced instead (`pump_spliced`). Each side comes with its "already
/// non-blocking" flag.
#[allow(clippy::too_many_arguments)]
pub async fn pump_body<R, W>(
    (src, src_nonblocking): (&mut R, &mut bool),
    src_buf: &mut BytesMut,
    (dst, dst_nonblocking): (&mut W, &mut bool),
    out: &mut BytesMut,
    kind: BodyKind,
    chunk_out: bool,
    cfg: &PumpCfg,
    tee: Option<&mut Tee>,
) -> Result<u64, PumpFail>
where
    R: AsyncReadRent + PlainSocket,
    W: AsyncWriteRent + PlainSocket,
{
    if let (BodyKind::Length(n), None, false) = (kind, &tee, chunk_out) {
        let spliced = pump_spliced(
            (&mut *src, src_nonblocking),
            src_buf,
            (&mut *dst, dst_nonblocking),
            out,
            n,
            cfg,
        )
        .await;
        if let Some(r) = spliced {
            return r;
        }
    }
    pump_tee(src, src_buf, dst, out, kind, chunk_out, cfg, tee).await
}

/// `pump` for a `Length(n)` body between two plain TCP sockets, each given with its "already
/// non-blocking" flag: the bytes already in `src_buf` go out through `out` (after the head it
/// may hold), the rest is spliced socket to socket (splice.rs). `None`, with nothing written,
/// when less than `splice::MIN_BYTES` is left to read or either side is not plain TCP (or
/// cannot be made non-blocking): the caller pumps as usual.
async fn pump_spliced<R, W>(
    (src, src_nonblocking): (&mut R, &mut bool),
    src_buf: &mut BytesMut,
    (dst, dst_nonblocking): (&mut W, &mut bool),
    out: &mut BytesMut,
    n: u64,
    cfg: &PumpCfg,
) -> Option<Result<u64, PumpFail>>
where
    R: AsyncReadRent + PlainSocket,
    W: AsyncWriteRent + PlainSocket,
{
    let buffered = (src_buf.len() as u64).min(n);
    if n - buffered < splice::MIN_BYTES {
        return None;
    }
    {
        let (s, d) = (src.plain_tcp()?, dst.plain_tcp()?);
        if !*src_nonblocking {
            splice::set_nonblocking(s).ok()?;
            *src_nonblocking = true;
        }
        if !*dst_nonblocking {
            splice::set_nonblocking(d).ok()?;
            *dst_nonblocking = true;
        }
    }
    if let Err(e) = pump(
        src,
        src_buf,
        dst,
        out,
        BodyKind::Length(buffered),
        false,
        cfg,
    )
    .await
    {
        return Some(Err(e));
    }
    let (Some(s), Some(d)) = (src.plain_tcp(), dst.plain_tcp()) else {
        return Some(Err(PumpFail::Src(IoFail::Error)));
    };
    let rest = n - buffered;
    Some(
        splice::relay(s, d, rest, cfg.read_timeout, cfg.write_timeout)
            .await
            .map(|()| n)
            .map_err(PumpFail::from),
    )
}

async fn flush<W: AsyncWriteRent>(
    dst: &mut W,
    out: &mut BytesMut,
    cfg: &PumpCfg,
) -> Result<(), PumpFail> {
    write_all(dst, out, cfg.write_timeout)
        .await
        .map_err(PumpFail::Dst)?;
    out.clear();
    Ok(())
}

/// Writes pending `out` and then `src_buf[..take]`, in one write when the data is small.
async fn emit<W: AsyncWriteRent>(
    dst: &mut W,
    out: &mut BytesMut,
    src_buf: &mut BytesMut,
    take: usize,
    cfg: &PumpCfg,
) -> Result<(), PumpFail> {
    if !out.is_empty() {
        if take <= COALESCE {
            out.extend_from_slice(&src_buf[..take]);
            return flush(dst, out, cfg).await;
        }
        flush(dst, out, cfg).await?;
    }
    write_range(dst, src_buf, 0, take, cfg.write_timeout)
        .await
        .map_err(PumpFail::Dst)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const CFG: PumpCfg = PumpCfg {
        read_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        reserve: 16,
        limit: 0,
        max_trailer: 1024,
    };

    /// Drains `wire` (sent by a peer that then closes) as a body of `kind`, `buffered` already
    /// read: (data bytes, what the tee got, bytes left in the buffer after the body).
    fn drained(buffered: &[u8], wire: &'static [u8], kind: BodyKind) -> (u64, Tee, Vec<u8>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let peer = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            s.write_all(wire).expect("write");
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        let got = rt.block_on(async {
            let mut s = monoio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            let mut buf = BytesMut::from(buffered);
            let mut tee = Tee::new(1 << 20, None);
            let n = drain(&mut s, &mut buf, kind, &CFG, Some(&mut tee))
                .await
                .expect("a whole body");
            (n, tee, buf.to_vec())
        });
        peer.join().expect("peer");
        got
    }

    #[test]
    fn drain_length_stops_at_the_body_end() {
        let (n, tee, rest) = drained(b"hel", b"lo worldNEXT", BodyKind::Length(11));
        assert_eq!(n, 11);
        assert!(tee.done && tee.buf == b"hello world");
        // Bytes past the body stay, so the caller sees the connection is not clean.
        assert!(b"NEXT".starts_with(&rest));
    }

    #[test]
    fn drain_chunked_tees_decoded_data() {
        let (n, tee, rest) = drained(
            b"5\r\nhel",
            b"lo\r\n6\r\n world\r\n0\r\n\r\n",
            BodyKind::Chunked,
        );
        assert_eq!(n, 11);
        assert!(tee.done && tee.buf == b"hello world");
        assert!(rest.is_empty());
    }

    #[test]
    fn drain_until_close_reads_to_eof() {
        let (n, tee, _) = drained(b"ab", b"cdef", BodyKind::UntilClose);
        assert_eq!(n, 6);
        assert!(tee.done && tee.buf == b"abcdef");
    }
}
