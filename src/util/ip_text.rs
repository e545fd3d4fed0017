//! `IpText`: an IP address as text in a fixed inline buffer (X-Forwarded-For, X-Real-IP, hash
//! keys), made without the formatter or the allocator. Owns only its bytes; knows nothing of HTTP.
//!
//! Why: the text was a `String` from `to_string()`, once per client connection: about 1,300
//! instructions of `core::fmt` plus two allocations for "127.0.0.1", which a new connection per
//! request paid on every request (perf/RESULTS.md, issue 21n).

use std::fmt::Write as _;
use std::net::IpAddr;

/// Room for any address `Display` writes: an IPv6 address is at most 39 characters, an
/// IPv4-mapped one ("::ffff:255.255.255.255") 22, IPv4 15.
const CAP: usize = 48;

/// An IP address's `Display` text, inline.
#[derive(Clone, Copy)]
pub struct IpText {
    len: u8,
    buf: [u8; CAP],
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            len: 0,
            buf: [0; CAP],
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    t.push_u8(octet);
                }
            }
            // Rare on the request path, and its rules (the longest zero run, mapped forms) are
            // std's: written by `Display`, into the inline buffer. It cannot fill it (see CAP).
            IpAddr::V6(v6) => {
                let _ = write!(t, "{v6}");
            }
        }
        t
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex letters are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len as usize) {
            *slot = b;
            self.len += 1;
        }
    }

    fn push_u8(&mut self, n: u8) {
        if n >= 100 {
            self.push(b'0' + n / 100);
        }
        if n >= 10 {
            self.push(b'0' + n / 10 % 10);
        }
        self.push(b'0' + n % 10);
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let start = self.len as usize;
        let end = start + s.len();
        let Some(dst) = self.buf.get_mut(start..end) else {
            return Err(std::fmt::Error);
        };
        dst.copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn reads_as_display_does() {
        let v4 = [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(9, 10, 99, 100),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(10, 200, 7, 250),
        ];
        for ip in v4 {
            assert_eq!(IpText::new(ip.into()).as_str(), ip.to_string());
        }
        let v6 = [
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::UNSPECIFIED,
            Ipv4Addr::new(255, 255, 255, 255).to_ipv6_mapped(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1),
            Ipv6Addr::new(
                0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
            ),
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0x1234, 0x5678, 0x9abc, 0xdef0),
        ];
        for ip in v6 {
            assert_eq!(IpText::new(ip.into()).as_str(), ip.to_string());
        }
    }

    #[test]
    fn every_ipv4_octet_is_written_like_display() {
        for n in 0..=255u8 {
            let ip = Ipv4Addr::new(n, 0, n, 255 - n);
            assert_eq!(IpText::new(ip.into()).as_bytes(), ip.to_string().as_bytes());
        }
    }
}
