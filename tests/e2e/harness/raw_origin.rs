//! Owns the raw TCP upstream for fault injection: the test's handler gets each request head and the
//! socket. Must not frame or fix up what the handler writes; those bytes are what the gateway sees.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::wire::find_subslice;

/// A raw TCP upstream for fault injection: for every request head it reads (up to and
/// including the blank line; request bodies are not read), `handler(head_text, stream)` does
/// whatever it likes with the socket and returns whether to keep serving the connection.
pub struct RawOrigin {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl RawOrigin {
    pub fn start(handler: impl Fn(&str, &mut TcpStream) -> bool + Send + Sync + 'static) -> Self {
        Self::start_with_idle(Duration::from_secs(60), handler)
    }

    /// As `start`, but each connection is closed once it has been idle (no request head
    /// arriving) for `idle`, like an origin's keep-alive timeout.
    pub fn start_with_idle(
        idle: Duration,
        handler: impl Fn(&str, &mut TcpStream) -> bool + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw origin");
        let addr = listener.local_addr().expect("raw origin addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (st, acc, op) = (stop.clone(), accepted.clone(), open.clone());
        thread::Builder::new()
            .name("raw-origin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(SeqCst) {
                        break;
                    }
                    let Ok(mut s) = conn else { continue };
                    acc.fetch_add(1, SeqCst);
                    op.fetch_add(1, SeqCst);
                    let (h, st2, op2) = (handler.clone(), st.clone(), op.clone());
                    let _ =
                        thread::Builder::new()
                            .name("raw-origin-conn".into())
                            .spawn(move || {
                                let tick = idle.min(Duration::from_millis(100));
                                let _ = s.set_read_timeout(Some(tick));
                                let mut buf = Vec::new();
                                let mut tmp = [0u8; 16384];
                                let mut idle_until = Instant::now() + idle;
                                'conn: while !st2.load(SeqCst) && Instant::now() < idle_until {
                                    while let Some(end) = find_subslice(&buf, b"\r\n\r\n") {
                                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                                        let text = String::from_utf8_lossy(&head).into_owned();
                                        if !h(&text, &mut s) {
                                            break 'conn;
                                        }
                                        idle_until = Instant::now() + idle;
                                    }
                                    match s.read(&mut tmp) {
                                        Ok(0) => break,
                                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                                        Err(e)
                                            if e.kind() == io::ErrorKind::WouldBlock
                                                || e.kind() == io::ErrorKind::TimedOut => {}
                                        Err(_) => break,
                                    }
                                }
                                drop(s);
                                op2.fetch_sub(1, SeqCst);
                            });
                }
            })
            .expect("spawn raw origin");
        RawOrigin {
            addr,
            stop,
            accepted,
            open,
        }
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }
    /// Connections the origin has not seen closed yet.
    pub fn open_conns(&self) -> usize {
        self.open.load(SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Resets the connection (RST instead of FIN) by closing it with SO_LINGER 0.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// The request path in a request head's first line.
pub fn head_path(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}
