//! Formats one access log line (combined or JSON) into a byte buffer, with the timestamp text
//! cached per second. Pure: no I/O, time read from the system clock only.

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Format;
use crate::util::civil::civil;

/// What one finished request looks like to the log.
pub struct Record<'a> {
    pub remote_addr: IpAddr,
    pub method: &'a [u8],
    /// Request target as sent (path and query).
    pub uri: &'a [u8],
    pub path: &'a [u8],
    /// 0 = HTTP/1.0, 1 = HTTP/1.1.
    pub version: u8,
    pub status: u16,
    /// Response body length when the response declared one.
    pub body_bytes: Option<u64>,
    pub took: Duration,
    pub host: &'a [u8],
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    /// Route name ("" when no route matched).
    pub route: &'a str,
    pub upstream: &'a str,
    pub request_id: Option<&'a str>,
    pub shard: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    RemoteAddr,
    Time,
    Method,
    Uri,
    Path,
    Protocol,
    Status,
    BodyBytesSent,
    RequestTime,
    Host,
    Referer,
    UserAgent,
    Route,
    Upstream,
    RequestId,
    Shard,
}

impl Field {
    pub const NAMES: [&'static str; 16] = [
        "remote_addr",
        "time",
        "method",
        "uri",
        "path",
        "protocol",
        "status",
        "body_bytes_sent",
        "request_time",
        "host",
        "http_referer",
        "http_user_agent",
        "route",
        "upstream",
        "request_id",
        "shard",
    ];
    const ALL: [Field; 16] = [
        Field::RemoteAddr,
        Field::Time,
        Field::Method,
        Field::Uri,
        Field::Path,
        Field::Protocol,
        Field::Status,
        Field::BodyBytesSent,
        Field::RequestTime,
        Field::Host,
        Field::Referer,
        Field::UserAgent,
        Field::Route,
        Field::Upstream,
        Field::RequestId,
        Field::Shard,
    ];
    pub const DEFAULT: [Field; 12] = [
        Field::RemoteAddr,
        Field::Time,
        Field::Method,
        Field::Uri,
        Field::Protocol,
        Field::Status,
        Field::BodyBytesSent,
        Field::RequestTime,
        Field::Host,
        Field::UserAgent,
        Field::Route,
        Field::Upstream,
    ];

    pub fn parse(name: &str) -> Option<Field> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::ALL[i])
    }

    fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|f| *f == self).unwrap_or(0)]
    }
}

/// Timestamp texts for the current second, rebuilt at most once a second per shard.
#[derive(Default)]
pub struct Clock {
    secs: u64,
    /// `10/Oct/2000:13:55:36 +0000`
    clf: String,
    /// `2000-10-10T13:55:36Z`
    iso: String,
}

impl Clock {
    fn refresh(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now == self.secs && !self.clf.is_empty() {
            return;
        }
        self.secs = now;
        let (y, mo, d) = civil(now / 86_400);
        let (h, mi, s) = (now / 3600 % 24, now / 60 % 60, now % 60);
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        self.clf = format!(
            "{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} +0000",
            MONTHS[(mo as usize - 1) % 12]
        );
        self.iso = format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z");
    }
}

/// Combined-format escaping (as nginx): `"`, `\` and bytes outside printable ASCII as `\xHH`.
fn clf_bytes(out: &mut Vec<u8>, v: &[u8]) {
    if v.is_empty() {
        out.push(b'-');
        return;
    }
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

fn json_str(out: &mut Vec<u8>, v: &[u8]) {
    let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(v));
}

fn protocol(version: u8) -> &'static str {
    if version == 0 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    }
}

/// Appends one line (with its newline) to `out`.
pub fn line(out: &mut Vec<u8>, format: &Format, clock: &mut Clock, e: &Record<'_>) {
    clock.refresh();
    match format {
        Format::Combined => {
            // remote - - [time] "request" status bytes "referer" "user-agent"
            let _ = write!(out, "{} - - [{}] \"", e.remote_addr, clock.clf);
            clf_bytes(out, e.method);
            out.push(b' ');
            clf_bytes(out, e.uri);
            let _ = write!(out, " {}\" {} ", protocol(e.version), e.status);
            match e.body_bytes {
                Some(n) => {
                    let _ = write!(out, "{n}");
                }
                None => out.push(b'-'),
            }
            out.extend_from_slice(b" \"");
            clf_bytes(out, e.referer.unwrap_or_default());
            out.extend_from_slice(b"\" \"");
            clf_bytes(out, e.user_agent.unwrap_or_default());
            out.extend_from_slice(b"\"\n");
        }
        Format::Json(fields) => {
            out.push(b'{');
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = write!(out, "\"{}\":", f.name());
                match f {
                    Field::RemoteAddr => json_str(out, e.remote_addr.to_string().as_bytes()),
                    Field::Time => json_str(out, clock.iso.as_bytes()),
                    Field::Method => json_str(out, e.method),
                    Field::Uri => json_str(out, e.uri),
                    Field::Path => json_str(out, e.path),
                    Field::Protocol => json_str(out, protocol(e.version).as_bytes()),
                    Field::Status => {
                        let _ = write!(out, "{}", e.status);
                    }
                    Field::BodyBytesSent => match e.body_bytes {
                        Some(n) => {
                            let _ = write!(out, "{n}");
                        }
                        None => out.extend_from_slice(b"null"),
                    },
                    Field::RequestTime => {
                        let _ = write!(out, "{:.6}", e.took.as_secs_f64());
                    }
                    Field::Host => json_str(out, e.host),
                    Field::Referer => opt(out, e.referer),
                    Field::UserAgent => opt(out, e.user_agent),
                    Field::Route => json_str(out, e.route.as_bytes()),
                    Field::Upstream => json_str(out, e.upstream.as_bytes()),
                    Field::RequestId => opt(out, e.request_id.map(str::as_bytes)),
                    Field::Shard => {
                        let _ = write!(out, "{}", e.shard);
                    }
                }
            }
            out.extend_from_slice(b"}\n");
        }
    }
}

fn opt(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Record<'static> {
        Record {
            remote_addr: "127.0.0.1".parse().unwrap(),
            method: b"GET",
            uri: b"/a?b=\"c\"",
            path: b"/a",
            version: 1,
            status: 200,
            body_bytes: Some(5),
            took: Duration::from_millis(2),
            host: b"h",
            referer: None,
            user_agent: Some(b"ua/1"),
            route: "r",
            upstream: "u",
            request_id: None,
            shard: 0,
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(19_723), (2024, 1, 1));
    }

    #[test]
    fn combined_escapes() {
        let mut out = Vec::new();
        line(&mut out, &Format::Combined, &mut Clock::default(), &entry());
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("127.0.0.1 - - ["), "{s}");
        assert!(
            s.ends_with("\"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 5 \"-\" \"ua/1\"\n"),
            "{s}"
        );
    }

    #[test]
    fn json_is_valid() {
        let mut out = Vec::new();
        let f = Format::Json(Field::ALL.to_vec());
        line(&mut out, &f, &mut Clock::default(), &entry());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["uri"], "/a?b=\"c\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["http_referer"], serde_json::Value::Null);
    }
}
