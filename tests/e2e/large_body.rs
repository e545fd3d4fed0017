//! 64 MiB bodies stream through the gateway with bounded memory (backpressure).
use crate::harness::*;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

const SIZE: u64 = 64 * 1024 * 1024;
const MAX_GROWTH_KB: u64 = 24 * 1024;

/// Samples the gateway's VmRSS every 20 ms until dropped; reports the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(SeqCst) {
                if let Some(v) = proc_status_field(&format!("/proc/{pid}/status"), "VmRSS") {
                    if let Some(kb) = v
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        p.fetch_max(kb, SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            stop,
            peak,
            handle: Some(handle),
        }
    }
    fn finish(mut self) -> u64 {
        self.stop.store(true, SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(SeqCst)
    }
}

fn warm_up(gw: &Gateway) -> u64 {
    // a few requests so lazily-allocated buffers/pools exist before the baseline
    let mut c = gw.client();
    for _ in 0..5 {
        c.request("POST /warm HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
    }
    gw.rss_kb()
}

#[test]
fn upload_64mib_streams_with_bounded_memory() {
    let _cpu = cpu_lock(); // 64 MiB through the gateway, hashed on both ends
    let opts = OriginOpts {
        keep_body: false,
        // stall reading for 1.5 s after 1 MiB: a gateway without backpressure
        // would buffer the rest of the 64 MiB upload meanwhile.
        read_pause: Some((1024 * 1024, Duration::from_millis(1500))),
        ..OriginOpts::default()
    };
    let origin = Origin::start_with("127.0.0.1:0", "sink", opts, |r| {
        Resp::text(200, format!("{} {:x}", r.body_len, r.body_hash)).into()
    })
    .expect("start sink origin");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let base = warm_up(&gw);
    let sampler = RssSampler::start(gw.pid);

    let mut c = gw.client();
    c.stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    c.send(format!(
        "POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: {SIZE}\r\n\r\n"
    ));
    let writer = upload_pattern(&c.stream, SIZE, b"");
    c.set_read_timeout(Duration::from_secs(60));
    let r = c.read_final_response();
    let sent_hash = writer.join().expect("writer thread").expect("upload");
    let peak = sampler.finish();
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.body_str());
    assert_eq!(
        r.body_str(),
        format!("{SIZE} {sent_hash:x}"),
        "origin got a different body (len hash)"
    );
    let growth = peak.saturating_sub(base);
    eprintln!("upload: VmRSS base {base} KiB, peak {peak} KiB, growth {growth} KiB");
    assert!(
        growth < MAX_GROWTH_KB,
        "gateway VmRSS grew by {growth} KiB (base {base} KiB, peak {peak} KiB) relaying a 64 MiB upload; limit {MAX_GROWTH_KB} KiB"
    );
}

#[test]
fn download_64mib_streams_with_bounded_memory() {
    let _cpu = cpu_lock(); // 64 MiB through the gateway, hashed on both ends
    let origin = Origin::start("big", |_| Resp::new(200).pattern(SIZE).into());
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let base = warm_up(&gw);
    let sampler = RssSampler::start(gw.pid);
    let mut c = gw.client();
    c.set_read_timeout(Duration::from_secs(30));
    c.send(get_req("/big", "example.com"));
    let mut off = 0u64;
    let mut bad: Option<u64> = None;
    let mut paused = false;
    let resp = c
        .read_response_streaming(false, &mut |d: &[u8]| {
            for (k, &b) in d.iter().enumerate() {
                if bad.is_none() && b != pattern_byte(off + k as u64) {
                    bad = Some(off + k as u64);
                }
            }
            off += d.len() as u64;
            if !paused && off >= 1024 * 1024 {
                // slow client: stop reading for 1.5 s; without backpressure the
                // gateway would pull the whole 64 MiB from the fast origin.
                paused = true;
                std::thread::sleep(Duration::from_millis(1500));
            }
        })
        .unwrap_or_else(|e| panic!("64 MiB download failed after {off} bytes: {e}"));
    let peak = sampler.finish();
    assert_eq!(resp.status, 200);
    assert_eq!(off, SIZE, "download length");
    assert_eq!(bad, None, "download corrupted at offset {bad:?}");
    let growth = peak.saturating_sub(base);
    eprintln!("download: VmRSS base {base} KiB, peak {peak} KiB, growth {growth} KiB");
    assert!(
        growth < MAX_GROWTH_KB,
        "gateway VmRSS grew by {growth} KiB (base {base} KiB, peak {peak} KiB) relaying a 64 MiB download; limit {MAX_GROWTH_KB} KiB"
    );
    // keep-alive still fine after a large body
    let r2 = c.get("/big");
    assert_eq!(r2.body.len() as u64, SIZE);
}

#[test]
fn chunked_upload_8mib_intact() {
    let opts = OriginOpts {
        keep_body: false,
        ..OriginOpts::default()
    };
    let origin = Origin::start_with("127.0.0.1:0", "sink", opts, |r| {
        Resp::text(200, format!("{} {:x}", r.body_len, r.body_hash)).into()
    })
    .expect("start sink origin");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let size: u64 = 8 * 1024 * 1024;
    let mut c = gw.client();
    c.send("POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut w = c.stream.try_clone().expect("clone");
    let writer = std::thread::spawn(move || -> Result<u64, String> {
        let mut hash = Fnv::default();
        let mut off = 0u64;
        let mut buf = vec![0u8; 100_003];
        while off < size {
            let n = ((size - off) as usize).min(buf.len());
            pattern_fill(off, &mut buf[..n]);
            hash.update(&buf[..n]);
            let mut out = format!("{n:x}\r\n").into_bytes();
            out.extend_from_slice(&buf[..n]);
            out.extend_from_slice(b"\r\n");
            w.write_all(&out).map_err(|e| e.to_string())?;
            off += n as u64;
        }
        w.write_all(b"0\r\n\r\n").map_err(|e| e.to_string())?;
        Ok(hash.0)
    });
    c.set_read_timeout(Duration::from_secs(30));
    let r = c.read_final_response();
    let h = writer
        .join()
        .expect("writer")
        .expect("write chunked upload");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), format!("{size} {h:x}"));
}
