//! CPU (kernel + user, this thread) per check of an idle pooled upstream socket, three ways:
//! the `recv(MSG_PEEK | MSG_DONTWAIT)` syscall ringway does at take time; an io_uring POLL_ADD
//! armed while idle and cancelled (ASYNC_CANCEL) at take time; a POLL_ADD left armed until the
//! response fires it. Ring ops are batched B per io_uring_enter, as on a busy shard.
//! Usage: `cargo run --release -- B` (default 16), pinned: `taskset -c 1 target/release/ringcheck 16`.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring};

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn peek(fd: RawFd) -> isize {
    let mut x = 0u8;
    // SAFETY: `fd` is an open socket; recv writes at most 1 byte into `x`.
    unsafe {
        libc::recv(
            fd,
            (&mut x as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    }
}

/// The upstream's response arriving: one byte sent by the server side, read by the client side.
fn exchange(server: RawFd, client: RawFd) {
    let (x, mut y) = (1u8, 0u8);
    // SAFETY: both are open connected sockets; one byte from `x`, one byte into `y`.
    unsafe {
        assert_eq!(libc::send(server, (&x as *const u8).cast(), 1, 0), 1);
        assert_eq!(libc::recv(client, (&mut y as *mut u8).cast(), 1, 0), 1);
    }
}

fn arm(ring: &mut IoUring, fds: &[RawFd]) {
    let mut sq = ring.submission();
    for (k, fd) in fds.iter().enumerate() {
        let e = opcode::PollAdd::new(types::Fd(*fd), libc::POLLIN as u32)
            .build()
            .user_data(k as u64);
        // SAFETY: the entry refers to no memory; the fd stays open for the whole run.
        unsafe { sq.push(&e).expect("room in the SQ") };
    }
}

fn main() {
    let b: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let iters = 200_000 / b * b;
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let pairs: Vec<(TcpStream, TcpStream)> = (0..b)
        .map(|_| {
            let c = TcpStream::connect(addr).expect("connect");
            (c, l.accept().expect("accept").0)
        })
        .collect();
    let fds: Vec<RawFd> = pairs.iter().map(|p| p.0.as_raw_fd()).collect();
    let sfds: Vec<RawFd> = pairs.iter().map(|p| p.1.as_raw_fd()).collect();
    let mut ring: IoUring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .build(256)
        .expect("ring");
    let per = |t: u64| (cpu_ns() - t) as f64 / iters as f64;
    for round in 0..5 {
        let t = cpu_ns();
        for i in 0..iters {
            assert!(peek(fds[i % b]) < 0);
        }
        let peeked = per(t);

        let t = cpu_ns();
        for _ in 0..iters / b {
            arm(&mut ring, &fds);
            ring.submit().expect("submit");
            {
                let mut sq = ring.submission();
                for k in 0..b {
                    let e = opcode::AsyncCancel::new(k as u64)
                        .build()
                        .user_data(u64::MAX);
                    // SAFETY: the entry refers to no memory.
                    unsafe { sq.push(&e).expect("room in the SQ") };
                }
            }
            ring.submit_and_wait(2 * b).expect("submit");
            assert_eq!(ring.completion().count(), 2 * b);
        }
        let cancelled = per(t);

        let t = cpu_ns();
        for _ in 0..iters / b {
            (0..b).for_each(|k| exchange(sfds[k], fds[k]));
        }
        let bare = per(t);
        let t = cpu_ns();
        for _ in 0..iters / b {
            arm(&mut ring, &fds);
            ring.submit().expect("submit");
            (0..b).for_each(|k| exchange(sfds[k], fds[k]));
            ring.submit_and_wait(b).expect("submit");
            assert_eq!(ring.completion().count(), b);
        }
        let fired = per(t) - bare;
        println!(
            "round {round} batch {b}: peek {peeked:.0} ns; poll_add+cancel {cancelled:.0} ns; \
             poll_add fired by the response +{fired:.0} ns (over send+recv {bare:.0} ns)"
        );
    }
}
