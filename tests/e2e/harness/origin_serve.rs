//! Owns one origin connection: reading request heads and bodies (length or chunked), then writing
//! the scripted reply. Must not be used by tests; only `Origin`'s accept loop calls `serve_conn`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering::SeqCst;
use std::thread;
use std::time::{Duration, Instant};

use super::origin::{Body, Framing, OriginShared, Reply, Req, Resp};
use super::wire::{
    find_header, find_subslice, parse_header_lines, pattern_fill, te_is_chunked, Fnv,
};

const ORIGIN_IDLE_LIMIT: Duration = Duration::from_secs(60);

/// Read more bytes, polling the stop flag. Ok(0) = EOF.
fn origin_read(stream: &mut TcpStream, buf: &mut Vec<u8>, sh: &OriginShared) -> io::Result<usize> {
    let start = Instant::now();
    let mut tmp = [0u8; 65536];
    loop {
        if sh.stop.load(SeqCst) {
            return Err(io::Error::other("origin stopped"));
        }
        match stream.read(&mut tmp) {
            Ok(n) => {
                sh.bytes_in.fetch_add(n as u64, SeqCst);
                buf.extend_from_slice(&tmp[..n]);
                return Ok(n);
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                if start.elapsed() > ORIGIN_IDLE_LIMIT {
                    return Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn origin_sleep(sh: &OriginShared, d: Duration) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline && !sh.stop.load(SeqCst) {
        thread::sleep((deadline - Instant::now()).min(Duration::from_millis(20)));
    }
}

struct BodySink<'a> {
    sh: &'a OriginShared,
    keep: bool,
    body: Vec<u8>,
    len: u64,
    hash: Fnv,
    paused: bool,
}

impl BodySink<'_> {
    fn push(&mut self, data: &[u8]) {
        if self.keep {
            self.body.extend_from_slice(data);
        }
        self.hash.update(data);
        self.len += data.len() as u64;
        if let Some((after, dur)) = self.sh.opts.read_pause {
            if !self.paused && self.len >= after {
                self.paused = true;
                origin_sleep(self.sh, dur);
            }
        }
    }
}

/// Take up to `want` bytes from `buf` (reading more as needed) into the sink.
fn origin_read_exact_into(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    sh: &OriginShared,
    mut want: u64,
    sink: &mut BodySink,
) -> io::Result<()> {
    while want > 0 {
        if buf.is_empty() && origin_read(stream, buf, sh)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
        }
        let take = (buf.len() as u64).min(want) as usize;
        sink.push(&buf[..take]);
        buf.drain(..take);
        want -= take as u64;
    }
    Ok(())
}

fn origin_read_line(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    sh: &OriginShared,
) -> io::Result<Vec<u8>> {
    loop {
        if let Some(pos) = find_subslice(buf, b"\r\n") {
            let line: Vec<u8> = buf.drain(..pos + 2).take(pos).collect();
            return Ok(line);
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        if origin_read(stream, buf, sh)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in line"));
        }
    }
}

pub(super) fn serve_conn(mut stream: TcpStream, sh: &OriginShared) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // ---- head
        let head_end = loop {
            if let Some(pos) = find_subslice(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > 1024 * 1024 {
                return;
            }
            match origin_read(&mut stream, &mut buf, sh) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let raw_head: Vec<u8> = buf.drain(..head_end).collect();
        if !serve_one(&mut stream, &mut buf, sh, raw_head) {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Serve one request whose head (`raw_head`, through the blank line) was already read. Returns
/// whether to keep the connection.
fn serve_one(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    sh: &OriginShared,
    raw_head: Vec<u8>,
) -> bool {
    let head_text = String::from_utf8_lossy(&raw_head).into_owned();
    let lines: Vec<&str> = head_text[..head_text.len() - 4].split("\r\n").collect();
    let mut parts = lines[0].split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("").to_string();
    let headers = parse_header_lines(&lines[1..]);
    let expect_continue = find_header(&headers, "expect")
        .map(|v| v.eq_ignore_ascii_case("100-continue"))
        .unwrap_or(false);
    if expect_continue
        && sh.opts.send_continue
        && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
    {
        return false;
    }
    let chunked = te_is_chunked(&headers);
    let mut sink = BodySink {
        sh,
        keep: sh.opts.keep_body,
        body: Vec::new(),
        len: 0,
        hash: Fnv::default(),
        paused: false,
    };
    if chunked {
        loop {
            let line = match origin_read_line(stream, buf, sh) {
                Ok(l) => l,
                Err(_) => return false,
            };
            let line = String::from_utf8_lossy(&line).into_owned();
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = match u64::from_str_radix(size_str, 16) {
                Ok(s) => s,
                Err(_) => return false,
            };
            if size == 0 {
                // trailers
                loop {
                    match origin_read_line(stream, buf, sh) {
                        Ok(l) if l.is_empty() => break,
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                }
                break;
            }
            if origin_read_exact_into(stream, buf, sh, size, &mut sink).is_err() {
                return false;
            }
            match origin_read_line(stream, buf, sh) {
                Ok(l) if l.is_empty() => {}
                _ => return false,
            }
        }
    } else if let Some(cl) = find_header(&headers, "content-length") {
        let n: u64 = match cl.trim().parse() {
            Ok(n) => n,
            Err(_) => return false,
        };
        if origin_read_exact_into(stream, buf, sh, n, &mut sink).is_err() {
            return false;
        }
    }
    let req = Req {
        method,
        target,
        version,
        headers,
        raw_head,
        body: sink.body,
        body_len: sink.len,
        body_hash: sink.hash.0,
    };
    sh.requests
        .lock()
        .expect("origin requests lock")
        .push(req.clone());
    sh.request_count.fetch_add(1, SeqCst);

    let reply = (sh.handler)(&req);
    match reply {
        Reply::Close => false,
        Reply::Hang => {
            origin_sleep(sh, Duration::from_secs(120));
            false
        }
        Reply::Pieces { pieces, gap, close } => {
            let _ = stream.set_nodelay(true);
            for (i, p) in pieces.iter().enumerate() {
                if i > 0 {
                    origin_sleep(sh, gap);
                }
                if stream.write_all(p).is_err() {
                    return false;
                }
            }
            !close
        }
        Reply::Raw { bytes, close } => {
            if stream.write_all(&bytes).is_err() {
                return false;
            }
            !close
        }
        Reply::Upgrade {
            close_after_first_echo,
        } => {
            let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
            if stream.write_all(head).is_err() {
                return false;
            }
            // echo leftovers, then everything that arrives, until EOF.
            loop {
                if !buf.is_empty() {
                    let data: Vec<u8> = std::mem::take(buf);
                    if stream.write_all(&data).is_err() {
                        break;
                    }
                    if close_after_first_echo {
                        break;
                    }
                }
                match origin_read(stream, buf, sh) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            sh.tunnels_closed.fetch_add(1, SeqCst);
            false
        }
        Reply::Http(resp) => {
            let is_head = req.method.eq_ignore_ascii_case("HEAD");
            let conn_tokens: Vec<String> = req
                .header_all("connection")
                .iter()
                .flat_map(|v| v.split(','))
                .map(|t| t.trim().to_ascii_lowercase())
                .collect();
            let client_wants_close = conn_tokens.iter().any(|t| t == "close")
                || (req.version == "HTTP/1.0" && !conn_tokens.iter().any(|t| t == "keep-alive"));
            let mut resp = resp;
            if client_wants_close {
                resp.close = true;
            }
            write_resp(stream, sh, &resp, is_head).is_ok()
                && !resp.close
                && !matches!(resp.framing, Framing::UntilClose)
        }
    }
}

fn write_resp(
    stream: &mut TcpStream,
    sh: &OriginShared,
    resp: &Resp,
    is_head: bool,
) -> io::Result<()> {
    if !resp.delay.is_zero() {
        origin_sleep(sh, resp.delay);
    }
    let body_len = match &resp.body {
        Body::Bytes(b) => b.len() as u64,
        Body::Pattern(n) => *n,
    };
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let status_no_body = resp.status == 204 || resp.status == 304 || resp.status < 200;
    match resp.framing {
        Framing::Length if !status_no_body => {
            head.push_str(&format!("Content-Length: {body_len}\r\n"))
        }
        Framing::Chunked(_) if !status_no_body => head.push_str("Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    if resp.close || matches!(resp.framing, Framing::UntilClose) {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if is_head || status_no_body {
        return stream.flush();
    }
    let chunk_size = match resp.framing {
        Framing::Chunked(n) => Some(n),
        _ => None,
    };
    let emit = |data: &[u8], stream: &mut TcpStream| -> io::Result<()> {
        match chunk_size {
            Some(cs) => {
                for c in data.chunks(cs) {
                    let mut out = format!("{:x}\r\n", c.len()).into_bytes();
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                    stream.write_all(&out)?;
                }
                Ok(())
            }
            None => stream.write_all(data),
        }
    };
    match &resp.body {
        Body::Bytes(b) => emit(b, stream)?,
        Body::Pattern(n) => {
            let mut off = 0u64;
            let mut chunk = vec![0u8; 64 * 1024];
            while off < *n {
                let len = ((*n - off) as usize).min(chunk.len());
                pattern_fill(off, &mut chunk[..len]);
                emit(&chunk[..len], stream)?;
                off += len as u64;
            }
        }
    }
    if chunk_size.is_some() {
        stream.write_all(b"0\r\n\r\n")?;
    }
    stream.flush()
}
