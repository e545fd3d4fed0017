//! OCSP for stapling: the DER request for a certificate, the reading of a responder's DER answer
//! (outside bytes: every path is a clear error), and the node's store of fetched staples.
//! No sockets and no threads here; the fetching control thread is start-up's (`crate::ocsp`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// id-ad-ocsp (1.3.6.1.5.5.7.48.1), the AIA access method naming the responder.
const ID_AD_OCSP: &str = "1.3.6.1.5.5.7.48.1";
/// id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1), DER content bytes.
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// sha1 (1.3.14.3.2.26) AlgorithmIdentifier with NULL parameters: what RFC 6960 and every
/// public responder expect in a CertID.
const SHA1_ALG: &[u8] = &[
    0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00,
];
/// Largest answer read from a responder (public ones send 1-3 KiB).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// What one certificate needs for its OCSP fetches.
#[derive(Debug, Clone)]
pub struct Query {
    /// DER OCSPRequest for the leaf, to POST as application/ocsp-request.
    pub request: Vec<u8>,
    /// The leaf's serial (INTEGER content bytes), to find its answer in the response.
    pub serial: Vec<u8>,
    /// The responder: configured, else the leaf's Authority Information Access entry.
    pub url: String,
}

/// Builds the request for `leaf` issued by `issuer` (both DER). `responder` overrides the AIA
/// URL. Errors say what is missing.
pub fn query(leaf: &[u8], issuer: &[u8], responder: Option<&str>) -> Result<Query, String> {
    let (_, l) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let (_, i) = x509_parser::parse_x509_certificate(issuer)
        .map_err(|e| format!("cannot parse the issuer certificate: {e}"))?;
    let url = match responder {
        Some(u) => u.to_string(),
        None => aia_url(&l).ok_or(
            "the certificate names no OCSP responder (Authority Information Access); set ocsp_responder",
        )?,
    };
    let sha1 = |b: &[u8]| {
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b)
            .as_ref()
            .to_vec()
    };
    let name_hash = sha1(i.subject().as_raw());
    let key_hash = sha1(&i.public_key().subject_public_key.data);
    let serial = l.tbs_certificate.raw_serial().to_vec();
    let mut cert_id = SHA1_ALG.to_vec();
    cert_id.extend(tlv(0x04, &name_hash));
    cert_id.extend(tlv(0x04, &key_hash));
    cert_id.extend(tlv(0x02, &serial));
    // OCSPRequest { TBSRequest { requestList { Request { CertID } } } }
    let mut request = tlv(0x30, &cert_id);
    for _ in 0..4 {
        request = tlv(0x30, &request);
    }
    Ok(Query {
        request,
        serial,
        url,
    })
}

fn aia_url(c: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    c.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => {
                aia.accessdescs.iter().find_map(|d| {
                    match (
                        d.access_method.to_id_string() == ID_AD_OCSP,
                        &d.access_location,
                    ) {
                        (true, GeneralName::URI(u)) => Some(u.to_string()),
                        _ => None,
                    }
                })
            }
            _ => None,
        })
}

/// A DER TLV with a definite length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend(&bytes[skip..]);
    }
    out.extend(content);
    out
}

/// The certificate's status in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    Revoked,
    Unknown,
}

/// What a responder said about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: CertStatus,
    /// thisUpdate and nextUpdate, seconds since the epoch.
    pub this_update: u64,
    pub next_update: Option<u64>,
}

/// Reads a DER OCSPResponse and finds the answer for `serial`. The signature is not checked
/// here: the client that receives the staple verifies it against the issuer, as it would an
/// answer it fetched itself.
pub fn parse_response(der: &[u8], serial: &[u8]) -> Result<Answer, String> {
    let (resp, _) = expect(der, 0x30, "OCSPResponse")?;
    let (status, rest) = expect(resp, 0x0a, "responseStatus")?;
    match status {
        [0] => {}
        [n] => {
            let why = match n {
                1 => "malformedRequest",
                2 => "internalError",
                3 => "tryLater",
                5 => "sigRequired",
                6 => "unauthorized",
                _ => "an unknown status",
            };
            return Err(format!("responder answered {why} ({n})"));
        }
        _ => return Err("bad responseStatus".into()),
    }
    let (bytes, _) = expect(rest, 0xa0, "responseBytes")?;
    let (bytes, _) = expect(bytes, 0x30, "ResponseBytes")?;
    let (oid, rest) = expect(bytes, 0x06, "responseType")?;
    if oid != OCSP_BASIC {
        return Err("not a basic OCSP response".into());
    }
    let (basic, _) = expect(rest, 0x04, "response")?;
    let (basic, _) = expect(basic, 0x30, "BasicOCSPResponse")?;
    let (tbs, _) = expect(basic, 0x30, "ResponseData")?;
    let mut rest = tbs;
    let (tag, _, r) = read(rest)?;
    if tag == 0xa0 {
        rest = r; // version
    }
    let (tag, _, r) = read(rest)?;
    if tag != 0xa1 && tag != 0xa2 {
        return Err("bad responderID".into());
    }
    let (_, r) = expect(r, 0x18, "producedAt")?;
    let (mut list, _) = expect(r, 0x30, "responses")?;
    while !list.is_empty() {
        let (single, more) = expect(list, 0x30, "SingleResponse")?;
        list = more;
        let (cert_id, r) = expect(single, 0x30, "CertID")?;
        let (_, c) = expect(cert_id, 0x30, "hashAlgorithm")?;
        let (_, c) = expect(c, 0x04, "issuerNameHash")?;
        let (_, c) = expect(c, 0x04, "issuerKeyHash")?;
        let (sn, _) = expect(c, 0x02, "serialNumber")?;
        if sn != serial {
            continue;
        }
        let (tag, _, r) = read(r)?;
        let status = match tag {
            0x80 => CertStatus::Good,
            0xa1 => CertStatus::Revoked,
            0x82 => CertStatus::Unknown,
            _ => return Err("bad certStatus".into()),
        };
        let (this, r) = expect(r, 0x18, "thisUpdate")?;
        let this_update = generalized_time(this)?;
        let next_update = match read(r) {
            Ok((0xa0, next, _)) => {
                let (t, _) = expect(next, 0x18, "nextUpdate")?;
                Some(generalized_time(t)?)
            }
            _ => None,
        };
        if next_update.is_some_and(|n| n < this_update) {
            return Err("nextUpdate before thisUpdate".into());
        }
        return Ok(Answer {
            status,
            this_update,
            next_update,
        });
    }
    Err("the answer does not name this certificate".into())
}

/// One DER TLV: (tag, content, what follows). Low tag numbers and definite lengths only, as DER.
fn read(der: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = der.split_first().ok_or("truncated DER")?;
    if tag & 0x1f == 0x1f {
        return Err("unexpected high tag number".into());
    }
    let (&first, rest) = rest.split_first().ok_or("truncated DER length")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad DER length".into());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err("DER value runs past its end".into());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// `read` that wants `tag`; the error names the field.
fn expect<'a>(der: &'a [u8], tag: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    match read(der) {
        Ok((t, c, r)) if t == tag => Ok((c, r)),
        Ok(_) => Err(format!("{what}: unexpected DER tag")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// `YYYYMMDDHHMMSS[.f]Z` -> seconds since the epoch.
fn generalized_time(b: &[u8]) -> Result<u64, String> {
    let bad = || "bad GeneralizedTime".to_string();
    if b.len() < 15 || b.last() != Some(&b'Z') || !b[..14].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let num =
        |r: std::ops::Range<usize>| b[r].iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'));
    let (y, m, d) = (num(0..4), num(4..6), num(6..8));
    let (hh, mm, ss) = (num(8..10), num(10..12), num(12..14));
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    if hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant's algorithm), for years from 1970.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468).ok_or_else(bad)?;
    Ok(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fetched staple: the responder's DER answer and when it stops being valid.
#[derive(Debug, Clone)]
struct Staple {
    der: Vec<u8>,
    next_update: Option<u64>,
    /// The serial it answers for: a renewed certificate in the same file is not given it.
    serial: Vec<u8>,
}

/// Fetched staples by certificate file. Written by the OCSP thread, read by whoever builds the
/// listeners' rustls configs (start-up, SIGHUP, the OCSP thread): never by a shard.
static FETCHED: Mutex<Option<HashMap<PathBuf, Staple>>> = Mutex::new(None);

/// Keeps `der`, the answer for `serial`, as the staple for `cert` until `next_update`.
pub fn store(cert: &Path, serial: &[u8], der: Vec<u8>, next_update: Option<u64>) {
    let mut g = FETCHED.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(HashMap::new).insert(
        cert.to_path_buf(),
        Staple {
            der,
            next_update,
            serial: serial.to_vec(),
        },
    );
}

/// Forgets `cert`'s fetched staple (expired while the responder was down).
pub fn forget(cert: &Path) {
    let mut g = FETCHED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = g.as_mut() {
        m.remove(cert);
    }
}

/// The fetched staple for `cert` whose leaf has `serial`, if one is held and not past its
/// nextUpdate.
pub fn fetched(cert: &Path, serial: &[u8]) -> Option<Vec<u8>> {
    let g = FETCHED.lock().unwrap_or_else(|p| p.into_inner());
    let s = g.as_ref()?.get(cert).filter(|s| s.serial == serial)?;
    match s.next_update {
        Some(n) if n < now_secs() => None,
        _ => Some(s.der.clone()),
    }
}

/// When to ask again after a good answer: half way to nextUpdate (as nginx and Caddy do), at
/// most `refresh`, at least a second.
pub fn refresh_after(a: &Answer, refresh: Duration) -> Duration {
    let by_next = a.next_update.map(|n| {
        let half = n.saturating_sub(a.this_update.max(now_secs().min(n))) / 2;
        Duration::from_secs(half)
    });
    by_next
        .map_or(refresh, |h| h.min(refresh))
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/ocsp")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn der(name: &str) -> Vec<u8> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::from_pem_slice(&data(name))
            .expect("pem")
            .as_ref()
            .to_vec()
    }

    #[test]
    fn the_request_is_the_one_openssl_sends_and_its_answers_read() {
        let q = query(&der("a.pem"), &der("ca.pem"), Some("http://127.0.0.1:1/")).expect("query");
        assert_eq!(q.request, data("req.der"));
        assert_eq!(q.url, "http://127.0.0.1:1/");
        let good = parse_response(&data("good.der"), &q.serial).expect("good");
        assert_eq!(good.status, CertStatus::Good);
        assert_eq!(good.next_update, Some(good.this_update + 3600));
        let revoked = parse_response(&data("revoked.der"), &q.serial).expect("revoked");
        assert_eq!(revoked.status, CertStatus::Revoked);
        assert_eq!(revoked.next_update, None);
        let e = parse_response(&data("good.der"), &[1, 2, 3]).unwrap_err();
        assert!(e.contains("does not name this certificate"), "{e}");
        // No AIA in this certificate and none configured.
        let e = query(&der("a.pem"), &der("ca.pem"), None).unwrap_err();
        assert!(e.contains("ocsp_responder"), "{e}");
        // The responder named in the certificate's Authority Information Access.
        let q = query(&der("aia.pem"), &der("ca.pem"), None).expect("aia query");
        assert_eq!(q.url, "http://ocsp.a.test:8080/ocsp");
        let q = query(&der("aia.pem"), &der("ca.pem"), Some("http://other/")).expect("query");
        assert_eq!(q.url, "http://other/");
    }

    #[test]
    fn a_fetched_staple_goes_only_to_its_serial_and_not_past_next_update() {
        let cert = Path::new("/nonexistent/ringway-ocsp-store-test.pem");
        store(cert, &[1, 2], b"answer".to_vec(), None);
        assert_eq!(fetched(cert, &[1, 2]).as_deref(), Some(&b"answer"[..]));
        // The file now holds a renewed certificate: the old answer is not for it.
        assert_eq!(fetched(cert, &[3, 4]), None);
        store(cert, &[1, 2], b"answer".to_vec(), Some(now_secs() - 10));
        assert_eq!(fetched(cert, &[1, 2]), None);
        store(cert, &[1, 2], b"answer".to_vec(), Some(now_secs() + 600));
        assert!(fetched(cert, &[1, 2]).is_some());
        forget(cert);
        assert_eq!(fetched(cert, &[1, 2]), None);
    }

    #[test]
    fn generalized_times() {
        assert_eq!(generalized_time(b"19700101000000Z"), Ok(0));
        assert_eq!(generalized_time(b"20240229120000Z"), Ok(1_709_208_000));
        assert_eq!(generalized_time(b"20240229120000.5Z"), Ok(1_709_208_000));
        assert!(generalized_time(b"20241329120000Z").is_err());
        assert!(generalized_time(b"2024022912000Z").is_err());
        assert!(generalized_time(b"19690101000000Z").is_err());
    }

    #[test]
    fn lengths_round_trip_and_bad_input_is_an_error() {
        for n in [0usize, 5, 127, 128, 255, 256, 70_000] {
            let v = tlv(0x04, &vec![7; n]);
            let (t, c, r) = read(&v).expect("read");
            assert_eq!((t, c.len(), r.len()), (0x04, n, 0));
        }
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x00],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x80],
            &[0x1f, 0x01, 0x00],
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
            assert!(parse_response(bad, &[1]).is_err());
        }
        // successful status without responseBytes, and a refusal.
        assert!(parse_response(&[0x30, 0x03, 0x0a, 0x01, 0x00], &[1]).is_err());
        let e = parse_response(&[0x30, 0x03, 0x0a, 0x01, 0x03], &[1]).unwrap_err();
        assert!(e.contains("tryLater"), "{e}");
    }

    #[test]
    fn refresh_is_half_way_to_next_update_capped() {
        let now = now_secs();
        let a = Answer {
            status: CertStatus::Good,
            this_update: now,
            next_update: Some(now + 7200),
        };
        assert_eq!(
            refresh_after(&a, Duration::from_secs(86_400)),
            Duration::from_secs(3600)
        );
        assert_eq!(
            refresh_after(&a, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        let none = Answer {
            next_update: None,
            ..a
        };
        assert_eq!(
            refresh_after(&none, Duration::from_secs(600)),
            Duration::from_secs(600)
        );
    }
}
