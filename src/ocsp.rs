//! The OCSP stapling thread: for every certificate with `ocsp_fetch`, POSTs its OCSP request to
//! the responder, keeps a usable answer in `net::ocsp`'s store and has the shards' TLS configs
//! rebuilt. A control thread; shards never wait on it. Must not touch routes or config.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::built::Built;
use crate::metrics::ocsp as m;
use crate::net::ocsp::{self, CertStatus, Query};
use crate::net::tls::CertSpec;
use crate::runtime::plane::Plane;

/// Connect, write and read limits of one fetch; a fetch ends within about 3x this.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between retries while a responder fails (backoff from 1 s).
const MAX_RETRY: Duration = Duration::from_secs(60);

/// One certificate the thread keeps a staple for.
struct Job {
    spec: CertSpec,
    /// Built again from the files before each fetch, so a certificate renewed in place (and
    /// reloaded by SIGHUP) is asked about under its new serial.
    query: Query,
    due: Instant,
    retry: Duration,
    /// The last fetch's outcome (`None` before the first), to log on change only.
    ok: Option<bool>,
    /// nextUpdate of the answer held, seconds since the epoch.
    held_until: Option<Option<u64>>,
}

/// Starts the thread when some TLS certificate has `ocsp_fetch`; errors are the build step's
/// (it already built each query once), so a certificate that cannot be queried is skipped here.
pub fn start(plane: Arc<Plane>, built: Arc<Built>) -> Result<(), String> {
    let mut jobs = Vec::new();
    for spec in built.cfg.server.tls.iter().flatten() {
        for c in spec.certificates.iter().filter(|c| c.fetch.is_some()) {
            match requery(c) {
                Ok(query) => jobs.push(Job {
                    spec: c.clone(),
                    query,
                    due: Instant::now(),
                    retry: Duration::from_secs(1),
                    ok: None,
                    held_until: None,
                }),
                Err(e) => log::error!("OCSP: {e}; not stapling it"),
            }
        }
    }
    if jobs.is_empty() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("ringway-ocsp".into())
        .spawn(move || run(jobs, &plane, &built))
        .map(drop)
        .map_err(|e| format!("cannot start the OCSP thread: {e}"))
}

fn run(mut jobs: Vec<Job>, plane: &Plane, built: &Built) {
    loop {
        let now = Instant::now();
        let mut changed = false;
        for j in jobs.iter_mut().filter(|j| j.due <= now) {
            changed |= step(j);
        }
        // An answer held past its nextUpdate is no longer stapled (the store ignores it).
        for j in &mut jobs {
            if let Some(Some(n)) = j.held_until {
                if n < ocsp::now_secs() {
                    log::warn!(
                        "OCSP: {}: the stapled answer expired (nextUpdate passed) and {} has not answered; serving without a staple",
                        j.spec.cert.display(),
                        j.query.url
                    );
                    ocsp::forget(&j.spec.cert);
                    j.held_until = None;
                    changed = true;
                }
            }
        }
        if changed {
            let held = jobs.iter().filter(|j| j.held_until.is_some()).count();
            m::STAPLED.store(held as u64, Relaxed);
            if let Err(e) = crate::runtime::rebuild_tls(plane, built) {
                log::error!("OCSP: cannot rebuild the TLS configs for {e}; shards keep their current staples");
            }
        }
        let next = jobs.iter().map(|j| j.due).min().unwrap_or(now + MAX_RETRY);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// The query from the certificate files as they are now.
fn requery(spec: &CertSpec) -> Result<Query, String> {
    let f = spec.fetch.as_ref().ok_or("no ocsp_fetch")?;
    let provider = crate::net::tls::provider();
    let (key, _) = crate::net::tls::load_certified_key(&spec.cert, &spec.key, &provider)?;
    crate::net::tls::ocsp_query(&key, spec, f)
}

/// One fetch for `j`; true when the staple to serve changed.
fn step(j: &mut Job) -> bool {
    match requery(&j.spec) {
        Ok(q) => j.query = q,
        // The files are SIGHUP's to judge; keep asking about the certificate being served.
        Err(e) => log::debug!("OCSP: {e}; asking about the certificate loaded before"),
    }
    let got = fetch(&j.query).and_then(|der| {
        let a = ocsp::parse_response(&der, &j.query.serial)?;
        if a.status == CertStatus::Unknown {
            return Err("the responder does not know this certificate".into());
        }
        if a.next_update.is_some_and(|n| n < ocsp::now_secs()) {
            return Err("the answer is already past its nextUpdate".into());
        }
        Ok((der, a))
    });
    match got {
        Ok((der, a)) => {
            m::FETCHED.fetch_add(1, Relaxed);
            let refresh = j.spec.fetch.as_ref().map_or(MAX_RETRY, |f| f.refresh);
            let after = ocsp::refresh_after(&a, refresh);
            if j.ok != Some(true) {
                log::info!(
                    "OCSP: {}: {} answered {:?}; stapling it, next fetch in {after:?}",
                    j.spec.cert.display(),
                    j.query.url,
                    a.status
                );
            }
            j.ok = Some(true);
            j.retry = Duration::from_secs(1);
            j.due = Instant::now() + after;
            let same = ocsp::fetched(&j.spec.cert, &j.query.serial).is_some_and(|d| d == der);
            ocsp::store(&j.spec.cert, &j.query.serial, der, a.next_update);
            j.held_until = Some(a.next_update);
            !same
        }
        Err(e) => {
            m::FAILED.fetch_add(1, Relaxed);
            if j.ok != Some(false) {
                let keep = if j.held_until.is_some() {
                    "keeping the current staple until its nextUpdate"
                } else {
                    "serving without a staple"
                };
                log::warn!(
                    "OCSP: {}: {} failed: {e}; {keep}, retrying",
                    j.spec.cert.display(),
                    j.query.url
                );
            }
            j.ok = Some(false);
            let refresh = j.spec.fetch.as_ref().map_or(MAX_RETRY, |f| f.refresh);
            j.due = Instant::now() + j.retry.min(refresh);
            j.retry = (j.retry * 2).min(MAX_RETRY);
            false
        }
    }
}

/// POSTs the request (HTTP/1.0, one connection per fetch) and returns the answer's body.
fn fetch(q: &Query) -> Result<Vec<u8>, String> {
    let rest = q
        .url
        .strip_prefix("http://")
        .ok_or("only http:// responders are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let _ = s.set_write_timeout(Some(TIMEOUT));
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/ocsp-request\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        q.request.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(&q.request))
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = Vec::new();
    s.take(ocsp::MAX_RESPONSE as u64 + 8192)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the answer's head is incomplete".into()),
        Err(e) => return Err(format!("not an HTTP answer: {e}")),
    };
    if resp.code != Some(200) {
        return Err(format!("HTTP status {}", resp.code.unwrap_or(0)));
    }
    let body = &buf[body_at..];
    if body.len() > ocsp::MAX_RESPONSE {
        return Err(format!("answer larger than {} bytes", ocsp::MAX_RESPONSE));
    }
    Ok(body.to_vec())
}
