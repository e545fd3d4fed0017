//! RESP2 (the Redis protocol) on the wire: the request encoder and a strict, bounded reply
//! parser. Bytes only: no sockets (net/redis.rs), no knowledge of what a command means.
//!
//! The parser takes whatever has arrived and answers a whole reply and its length, "need more
//! bytes", or an error naming what is wrong. It never panics and bounds everything a hostile or
//! broken server could make it do: line length, bulk size, array length, nesting depth and the
//! number of values in one reply (see the `MAX_*` constants). Fuzzed in tests/fuzz (`resp`).

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: the server refused the command (MOVED/ASK/NOSCRIPT included).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n` (None: the null bulk `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*n` (None: the null array `*-1`).
    Array(Option<Vec<Value>>),
}

/// Why a reply is not valid RESP2 (the connection is then useless: the caller closes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not RESP2: an unknown type byte, a bad number, a missing CRLF.
    Invalid(&'static str),
    /// Past one of the `MAX_*` bounds.
    TooLarge(&'static str),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Invalid(what) => write!(f, "invalid RESP reply: {what}"),
            ParseError::TooLarge(what) => write!(f, "RESP reply too large: {what}"),
        }
    }
}

/// Longest simple string, error or number line (without its CRLF).
pub const MAX_LINE: usize = 4096;
/// Largest bulk string.
pub const MAX_BULK: usize = 1 << 20;
/// Most elements in one array.
pub const MAX_ARRAY: usize = 1024;
/// Deepest nesting of arrays.
pub const MAX_DEPTH: usize = 8;
/// Most values in one reply, all levels together.
pub const MAX_VALUES: usize = 4096;

/// Parses one reply from the start of `buf`: `Ok(Some((reply, bytes used)))`, `Ok(None)` when
/// more bytes are needed, or the error that makes the stream unusable.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, ParseError> {
    let mut p = Parser {
        buf,
        at: 0,
        values: 0,
    };
    match p.value(0) {
        Ok(v) => Ok(Some((v, p.at))),
        Err(Stop::More) => Ok(None),
        Err(Stop::Bad(e)) => Err(e),
    }
}

/// Appends `args` as one command (an array of bulk strings) to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_num(out, args.len());
    for a in args {
        out.push(b'$');
        push_num(out, a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_num(out: &mut Vec<u8>, n: usize) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

enum Stop {
    More,
    Bad(ParseError),
}

struct Parser<'a> {
    buf: &'a [u8],
    at: usize,
    values: usize,
}

fn bad(what: &'static str) -> Stop {
    Stop::Bad(ParseError::Invalid(what))
}

fn large(what: &'static str) -> Stop {
    Stop::Bad(ParseError::TooLarge(what))
}

impl Parser<'_> {
    fn value(&mut self, depth: usize) -> Result<Value, Stop> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(large("more values than MAX_VALUES"));
        }
        let Some(&kind) = self.buf.get(self.at) else {
            return Err(Stop::More);
        };
        self.at += 1;
        let line = self.line()?;
        match kind {
            b'+' => Ok(Value::Simple(text(line)?)),
            b'-' => Ok(Value::Error(text(line)?)),
            b':' => Ok(Value::Int(int(line)?)),
            b'$' => match int(line)? {
                -1 => Ok(Value::Bulk(None)),
                n if n < 0 => Err(bad("negative bulk length")),
                n if n as u64 > MAX_BULK as u64 => Err(large("bulk longer than MAX_BULK")),
                n => {
                    let n = n as usize;
                    let end = self.at + n;
                    if self.buf.len() < end + 2 {
                        return Err(Stop::More);
                    }
                    if &self.buf[end..end + 2] != b"\r\n" {
                        return Err(bad("bulk string not followed by CRLF"));
                    }
                    let data = self.buf[self.at..end].to_vec();
                    self.at = end + 2;
                    Ok(Value::Bulk(Some(data)))
                }
            },
            b'*' => match int(line)? {
                -1 => Ok(Value::Array(None)),
                n if n < 0 => Err(bad("negative array length")),
                n if n as u64 > MAX_ARRAY as u64 => Err(large("array longer than MAX_ARRAY")),
                _ if depth + 1 >= MAX_DEPTH => Err(large("arrays nested deeper than MAX_DEPTH")),
                n => {
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.value(depth + 1)?);
                    }
                    Ok(Value::Array(Some(items)))
                }
            },
            _ => Err(bad("unknown type byte")),
        }
    }

    /// The rest of the current line, without its CRLF; the position moves past it.
    fn line(&mut self) -> Result<&[u8], Stop> {
        let rest = &self.buf[self.at..];
        let Some(cr) = rest.iter().take(MAX_LINE + 1).position(|&b| b == b'\r') else {
            return if rest.len() > MAX_LINE {
                Err(large("line longer than MAX_LINE"))
            } else if rest.contains(&b'\n') {
                Err(bad("bare LF in a line"))
            } else {
                Err(Stop::More)
            };
        };
        match rest.get(cr + 1) {
            None => Err(Stop::More),
            Some(b'\n') => {
                let line = &rest[..cr];
                if line.contains(&b'\n') {
                    return Err(bad("bare LF in a line"));
                }
                self.at += cr + 2;
                Ok(line)
            }
            Some(_) => Err(bad("CR not followed by LF")),
        }
    }
}

fn text(line: &[u8]) -> Result<String, Stop> {
    String::from_utf8(line.to_vec()).map_err(|_| bad("status line is not UTF-8"))
}

fn int(line: &[u8]) -> Result<i64, Stop> {
    let (neg, digits) = match line.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad("not a decimal integer"));
    }
    let mut n: i64 = 0;
    for d in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i64::from(d - b'0')))
            .ok_or(bad("integer out of range"))?;
    }
    Ok(if neg { -n } else { n })
}

/// The cluster slot of a key (CRC16/XMODEM of its hash tag, or of the whole key, mod 16384).
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A redirection in an error reply: `MOVED <slot> <host:port>` or `ASK <slot> <host:port>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    Moved { slot: u16, to: String },
    Ask { to: String },
}

pub fn redirect(error: &str) -> Option<Redirect> {
    let mut w = error.split(' ');
    let (kind, slot, to) = (w.next()?, w.next()?, w.next()?);
    let slot: u16 = slot.parse().ok().filter(|s| *s < 16384)?;
    if w.next().is_some() || to.rsplit_once(':').is_none() {
        return None;
    }
    let to = to.to_string();
    match kind {
        "MOVED" => Some(Redirect::Moved { slot, to }),
        "ASK" => Some(Redirect::Ask { to }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(b: &[u8]) -> Value {
        let (v, used) = parse(b).unwrap().unwrap();
        assert_eq!(used, b.len());
        v
    }

    #[test]
    fn parses_every_type() {
        assert_eq!(whole(b"+OK\r\n"), Value::Simple("OK".into()));
        assert_eq!(
            whole(b"-NOSCRIPT No matching script\r\n"),
            Value::Error("NOSCRIPT No matching script".into())
        );
        assert_eq!(whole(b":-12\r\n"), Value::Int(-12));
        assert_eq!(
            whole(b"$3\r\na\r\n\r\n"),
            Value::Bulk(Some(b"a\r\n".to_vec()))
        );
        assert_eq!(whole(b"$-1\r\n"), Value::Bulk(None));
        assert_eq!(whole(b"*-1\r\n"), Value::Array(None));
        assert_eq!(
            whole(b"*2\r\n:1\r\n*1\r\n$0\r\n\r\n"),
            Value::Array(Some(vec![
                Value::Int(1),
                Value::Array(Some(vec![Value::Bulk(Some(vec![]))]))
            ]))
        );
        // Two replies back to back: the first, and how much of the buffer it used.
        assert_eq!(parse(b":1\r\n:2\r\n").unwrap(), Some((Value::Int(1), 4)));
    }

    #[test]
    fn every_prefix_of_a_reply_asks_for_more() {
        let r = b"*3\r\n$5\r\nhello\r\n:7\r\n-ERR x\r\n";
        for n in 0..r.len() {
            assert_eq!(parse(&r[..n]), Ok(None), "prefix {n}");
        }
        assert!(parse(r).unwrap().is_some());
    }

    #[test]
    fn refuses_bad_and_oversized_replies() {
        let invalid = |b: &[u8]| matches!(parse(b), Err(ParseError::Invalid(_)));
        let too_large = |b: &[u8]| matches!(parse(b), Err(ParseError::TooLarge(_)));
        assert!(invalid(b"?x\r\n"));
        assert!(invalid(b":12a\r\n"));
        assert!(invalid(b":\r\n"));
        assert!(invalid(b":99999999999999999999\r\n"));
        assert!(invalid(b"$-2\r\n"));
        assert!(invalid(b"$1\r\nab\r\n"));
        assert!(invalid(b"+a\rb\r\n"));
        assert!(invalid(b"+a\nb\r\n"));
        assert!(invalid(b"+\xff\r\n"));
        assert!(too_large(format!("${}\r\n", MAX_BULK + 1).as_bytes()));
        assert!(too_large(format!("*{}\r\n", MAX_ARRAY + 1).as_bytes()));
        assert!(too_large(&[b'+'; MAX_LINE + 2]));
        assert!(too_large(&b"*1\r\n".repeat(MAX_DEPTH)));
        // Many small values: bounded by MAX_VALUES, not by the array length alone.
        let mut many = b"*1000\r\n".to_vec();
        for _ in 0..1000 {
            many.extend_from_slice(b"*4\r\n:1\r\n:1\r\n:1\r\n:1\r\n");
        }
        assert!(too_large(&many));
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        // What the encoder writes, the parser reads back.
        assert_eq!(
            whole(&out),
            Value::Array(Some(vec![
                Value::Bulk(Some(b"GET".to_vec())),
                Value::Bulk(Some(b"k".to_vec()))
            ]))
        );
    }

    #[test]
    fn slots_follow_hash_tags_and_redirects_parse() {
        // Redis's own examples (CLUSTER KEYSLOT).
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(
            redirect("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved {
                slot: 3999,
                to: "127.0.0.1:6381".into()
            })
        );
        assert_eq!(
            redirect("ASK 3999 10.0.0.2:7000"),
            Some(Redirect::Ask {
                to: "10.0.0.2:7000".into()
            })
        );
        assert_eq!(redirect("MOVED 16384 a:1"), None);
        assert_eq!(redirect("ERR unknown"), None);
    }
}
