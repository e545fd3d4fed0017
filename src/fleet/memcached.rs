//! A small memcached client for the tier thread (text protocol: get, set, delete) on tokio, and
//! its reply parser (fuzzed: tests/fuzz `memcached_reply`). Must not touch shards; every call is
//! bounded by the caller's timeout, and a connection that timed out is dropped, never reused.

use std::cell::RefCell;
use std::ops::Range;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A status line longer than this is not memcached talking.
const MAX_LINE: usize = 1024;

/// One reply, parsed from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// More bytes are needed.
    Incomplete,
    /// `END`: the key is not stored. `used`: bytes of the reply.
    Miss { used: usize },
    /// `VALUE key flags bytes` + data + `END`: the data is `buf[data]`.
    Hit { data: Range<usize>, used: usize },
    /// A one-line answer: STORED / DELETED / NOT_FOUND (ok) or NOT_STORED / an error.
    Status { ok: bool, used: usize },
    /// Not a reply this client can read: drop the connection.
    Bad,
}

/// Parses the reply at the front of `buf`; values over `max` bytes are `Bad`. Never panics.
pub fn parse(buf: &[u8], max: usize) -> Reply {
    let Some(i) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > MAX_LINE {
            Reply::Bad
        } else {
            Reply::Incomplete
        };
    };
    if i > MAX_LINE {
        return Reply::Bad;
    }
    let line = &buf[..i];
    let used = i + 2;
    match line {
        b"END" => return Reply::Miss { used },
        b"STORED" | b"DELETED" | b"NOT_FOUND" => return Reply::Status { ok: true, used },
        b"NOT_STORED" | b"EXISTS" | b"ERROR" => return Reply::Status { ok: false, used },
        _ => {}
    }
    if line.starts_with(b"SERVER_ERROR") || line.starts_with(b"CLIENT_ERROR") {
        return Reply::Status { ok: false, used };
    }
    let Some(rest) = line.strip_prefix(b"VALUE ") else {
        return Reply::Bad;
    };
    // key flags bytes [cas]
    let parts: Vec<&[u8]> = rest.split(|&b| b == b' ').collect();
    if !(3..=4).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        return Reply::Bad;
    }
    let n = match std::str::from_utf8(parts[2])
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    {
        Some(n) if n <= max => n,
        _ => return Reply::Bad,
    };
    let end = used + n;
    let total = end + 2 + 5;
    if buf.len() < total {
        return Reply::Incomplete;
    }
    if &buf[end..end + 2] != b"\r\n" || &buf[end + 2..total] != b"END\r\n" {
        return Reply::Bad;
    }
    Reply::Hit {
        data: used..end,
        used: total,
    }
}

/// The key under which `ns` stores `key` (memcached keys are at most 250 printable bytes).
pub fn key(ns: u64, key: &[u8]) -> String {
    format!("rw:{ns:016x}:{:032x}", xxhash_rust::xxh3::xxh3_128(key))
}

/// Idle connections to one server, reused one request at a time.
pub struct Pool {
    addr: String,
    idle: RefCell<Vec<TcpStream>>,
}

/// Connections kept idle per server beyond which finished ones are closed.
const KEEP: usize = 8;

impl Pool {
    pub fn new(addr: &str) -> Pool {
        Pool {
            addr: addr.to_string(),
            idle: RefCell::new(Vec::new()),
        }
    }

    /// Opens one connection (a probe of the server).
    pub async fn connect(&self, within: Duration) -> Result<(), String> {
        let s = tokio::time::timeout(within, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        self.idle.borrow_mut().push(s);
        Ok(())
    }

    /// Sends `req` and reads one reply (a value's bytes, or `None` for a miss or a status).
    async fn call(&self, req: &[u8], max: usize, within: Duration) -> Result<Reply2, String> {
        let taken = self.idle.borrow_mut().pop();
        let mut s = match taken {
            Some(s) => s,
            None => tokio::time::timeout(within, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?,
        };
        let r = tokio::time::timeout(within, exchange(&mut s, req, max))
            .await
            .map_err(|_| "timed out".to_string())??;
        let mut idle = self.idle.borrow_mut();
        if idle.len() < KEEP {
            idle.push(s);
        }
        Ok(r)
    }

    pub async fn get(
        &self,
        key: &str,
        max: usize,
        within: Duration,
    ) -> Result<Option<Vec<u8>>, String> {
        match self
            .call(format!("get {key}\r\n").as_bytes(), max, within)
            .await?
        {
            Reply2::Value(v) => Ok(Some(v)),
            Reply2::Miss => Ok(None),
            Reply2::Status(_) => Err("unexpected status to get".into()),
        }
    }

    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl_s: u64,
        within: Duration,
    ) -> Result<(), String> {
        let mut req = format!("set {key} 0 {ttl_s} {}\r\n", value.len()).into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
        match self.call(&req, 0, within).await? {
            Reply2::Status(true) => Ok(()),
            _ => Err("not stored".into()),
        }
    }

    pub async fn delete(&self, key: &str, within: Duration) -> Result<(), String> {
        match self
            .call(format!("delete {key}\r\n").as_bytes(), 0, within)
            .await?
        {
            Reply2::Status(true) => Ok(()),
            _ => Err("delete refused".into()),
        }
    }
}

enum Reply2 {
    Value(Vec<u8>),
    Miss,
    Status(bool),
}

async fn exchange(s: &mut TcpStream, req: &[u8], max: usize) -> Result<Reply2, String> {
    s.write_all(req).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        match parse(&buf, max) {
            Reply::Incomplete => {}
            Reply::Miss { used } if used == buf.len() => return Ok(Reply2::Miss),
            Reply::Status { ok, used } if used == buf.len() => return Ok(Reply2::Status(ok)),
            Reply::Hit { data, used } if used == buf.len() => {
                buf.truncate(data.end);
                buf.drain(..data.start);
                return Ok(Reply2::Value(buf));
            }
            _ => return Err("unexpected reply".into()),
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(4096);
        }
        let n = s.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Reply};

    #[test]
    fn replies() {
        assert_eq!(parse(b"END\r\n", 10), Reply::Miss { used: 5 });
        assert_eq!(parse(b"EN", 10), Reply::Incomplete);
        let hit = b"VALUE k 0 3\r\nabc\r\nEND\r\n";
        assert_eq!(
            parse(hit, 10),
            Reply::Hit {
                data: 13..16,
                used: hit.len()
            }
        );
        for cut in 0..hit.len() {
            assert_eq!(parse(&hit[..cut], 10), Reply::Incomplete, "cut {cut}");
        }
        assert_eq!(parse(hit, 2), Reply::Bad, "over the limit");
        assert_eq!(parse(b"VALUE k 0 3\r\nabcdxEND\r\n", 10), Reply::Bad);
        assert_eq!(parse(b"STORED\r\n", 0), Reply::Status { ok: true, used: 8 });
        assert_eq!(
            parse(b"SERVER_ERROR out of memory\r\n", 0),
            Reply::Status {
                ok: false,
                used: 28
            }
        );
        assert_eq!(parse(b"HELLO\r\n", 0), Reply::Bad);
        assert_eq!(parse(b"VALUE k 0 -1\r\n", 10), Reply::Bad);
    }
}
