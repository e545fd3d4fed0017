//! Strict incremental chunked-transfer decoder (RFC 9112 7.1) and the chunk-header encoder.
//! Pure byte logic: it reports data ranges and where the message ends; it never reads or writes sockets.

use bytes::{BufMut, BytesMut};

/// Longest chunk-size line (size plus extensions) we accept.
const MAX_LINE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    BadSize,
    SizeOverflow,
    BadExtension,
    MissingCrlf,
    BadTrailer,
    TrailerTooLarge,
}

impl ChunkError {
    pub fn message(self) -> &'static str {
        match self {
            ChunkError::BadSize => "malformed chunk size",
            ChunkError::SizeOverflow => "chunk size overflow",
            ChunkError::BadExtension => "malformed chunk extension",
            ChunkError::MissingCrlf => "missing CRLF after chunk",
            ChunkError::BadTrailer => "malformed trailer",
            ChunkError::TrailerTooLarge => "trailer section too large",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Size,
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// How far one `decode` call got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to this message (all of them unless `done`).
    pub consumed: usize,
    pub done: bool,
}

#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    st: St,
    size: u64,
    digits: u8,
    line: usize,
    trailer_bytes: usize,
    max_trailer: usize,
    saw_colon: bool,
}

impl ChunkedDecoder {
    pub fn new(max_trailer: usize) -> Self {
        ChunkedDecoder {
            st: St::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailer_bytes: 0,
            max_trailer,
            saw_colon: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.st == St::Done
    }

    /// Feeds bytes; calls `on_data(start, end)` for each run of body data inside `input`.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(usize, usize),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.st {
                St::Data => {
                    let take = (input.len() - i).min(self.size.min(usize::MAX as u64) as usize);
                    on_data(i, i + take);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.st = St::DataCr;
                    }
                    continue;
                }
                St::Size => {
                    if let Some(d) = hex(b) {
                        if self.digits >= 16 || self.size > (u64::MAX >> 4) {
                            return Err(ChunkError::SizeOverflow);
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits += 1;
                    } else if self.digits == 0 {
                        return Err(ChunkError::BadSize);
                    } else {
                        self.st = match b {
                            b';' => St::Ext,
                            b'\r' => St::SizeLf,
                            b' ' | b'\t' => St::SizeWs,
                            _ => return Err(ChunkError::BadSize),
                        };
                    }
                    self.bump_line()?;
                }
                St::SizeWs => {
                    self.st = match b {
                        b' ' | b'\t' => St::SizeWs,
                        b';' => St::Ext,
                        b'\r' => St::SizeLf,
                        _ => return Err(ChunkError::BadSize),
                    };
                    self.bump_line()?;
                }
                St::Ext => {
                    match b {
                        b'\r' => self.st = St::SizeLf,
                        b'\t' => {}
                        0..=0x1f | 0x7f => return Err(ChunkError::BadExtension),
                        _ => {}
                    }
                    self.bump_line()?;
                }
                St::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.line = 0;
                    self.digits = 0;
                    self.st = if self.size == 0 {
                        St::TrailerStart
                    } else {
                        St::Data
                    };
                }
                St::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.st = St::DataLf;
                }
                St::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.st = St::Size;
                }
                St::TrailerStart => {
                    if b == b'\r' {
                        self.st = St::EndLf;
                    } else if is_token(b) {
                        self.saw_colon = false;
                        self.st = St::TrailerLine;
                        self.bump_trailer()?;
                    } else {
                        return Err(ChunkError::BadTrailer);
                    }
                }
                St::TrailerLine => {
                    match b {
                        b'\r' if self.saw_colon => self.st = St::TrailerLf,
                        b':' => self.saw_colon = true,
                        // Whitespace is allowed in the value only: "Name\t:" is refused like
                        // "Name :" in a head (RFC 9112 5.1).
                        b'\t' if self.saw_colon => {}
                        0..=0x1f | 0x7f => return Err(ChunkError::BadTrailer),
                        _ if !self.saw_colon && !is_token(b) => return Err(ChunkError::BadTrailer),
                        _ => {}
                    }
                    self.bump_trailer()?;
                }
                St::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadTrailer);
                    }
                    self.st = St::TrailerStart;
                }
                St::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.st = St::Done;
                    return Ok(Progress {
                        consumed: i + 1,
                        done: true,
                    });
                }
                St::Done => {
                    return Ok(Progress {
                        consumed: i,
                        done: true,
                    })
                }
            }
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            done: self.st == St::Done,
        })
    }

    #[inline]
    fn bump_line(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(ChunkError::BadExtension);
        }
        Ok(())
    }

    #[inline]
    fn bump_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.max_trailer {
            return Err(ChunkError::TrailerTooLarge);
        }
        Ok(())
    }
}

#[inline]
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[inline]
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Appends `{len:x}\r\n`.
pub fn put_chunk_header(out: &mut BytesMut, len: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut n = len;
    let mut at = tmp.len();
    loop {
        at -= 1;
        tmp[at] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&tmp[at..]);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new(1024);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let part = &input[pos..end];
            let p = d.decode(part, |a, b| out.extend_from_slice(&part[a..b]))?;
            pos += p.consumed;
            if p.done {
                return Ok((out, pos));
            }
        }
        Err(ChunkError::MissingCrlf)
    }

    #[test]
    fn decodes_in_any_split() {
        let msg = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..msg.len() {
            let (out, used) = decode_all(msg, step).unwrap();
            assert_eq!(out, b"hello world");
            assert_eq!(&msg[used..], b"NEXT");
        }
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            &b"zz\r\n"[..],
            b"ffffffffffffffffff\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\n",
            b"5;a\x00\r\n",
            b"0\r\n bad: fold\r\n\r\n",
            b"0\r\nnocolon\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 3).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunk_header() {
        let mut b = BytesMut::new();
        put_chunk_header(&mut b, 0x1a2b);
        put_chunk_header(&mut b, 0);
        assert_eq!(&b[..], b"1a2b\r\n0\r\n");
    }
}
