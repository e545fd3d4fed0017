//! Passing open file descriptors between processes over a unix stream socket (SCM_RIGHTS), and
//! the peer's credentials (SO_PEERCRED). Knows nothing of what the descriptors are.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Descriptors per message; the kernel's limit is 253 (SCM_MAX_FD).
pub const BATCH: usize = 64;

/// Sends `fds` as one message carrying one data byte and the descriptors as SCM_RIGHTS. The
/// receiver gets duplicates; the caller keeps (and still owns) its own.
pub fn send_fds(sock: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > BATCH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} descriptors in one message (1..={BATCH})", fds.len()),
        ));
    }
    let byte = [b'F'];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut buf = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is a valid empty one; the fields set below point at `iov` and
    // `buf`, which outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg_control` points at `space` zeroed, aligned bytes, room for one header with
    // `payload` bytes of data (CMSG_SPACE above), so CMSG_FIRSTHDR is non-null and CMSG_DATA has
    // `payload` writable bytes; `fds` is `payload` bytes long.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), payload);
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    match sent {
        1 => Ok(()),
        -1 => Err(io::Error::last_os_error()),
        n => Err(io::Error::other(format!("sendmsg sent {n} bytes, not 1"))),
    }
}

/// Receives one message of `send_fds`: up to `BATCH` descriptors, owned by the caller (closed on
/// drop). A message cut short by the kernel (MSG_CTRUNC) is an error, its descriptors closed.
pub fn recv_fds(sock: &UnixStream) -> io::Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: size computation only.
    let space = unsafe { libc::CMSG_SPACE((BATCH * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut buf = vec![0u64; space.div_ceil(8)];
    // SAFETY: as in send_fds; the pointers stay valid across recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` describes live buffers of the stated sizes. MSG_CMSG_CLOEXEC: the received
    // descriptors are not inherited by anything this process execs.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    // SAFETY: the kernel filled `msg_controllen` bytes of `buf` with well-formed cmsg headers;
    // CMSG_FIRSTHDR/NXTHDR stay within them, and each SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / size_of::<RawFd>() descriptors this process now owns.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    out.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptor message truncated"));
    }
    if out.is_empty() {
        return Err(io::Error::other("message carried no descriptors"));
    }
    Ok(out)
}

/// The user id of the process at the other end of a unix socket.
pub fn peer_uid(sock: &UnixStream) -> io::Result<u32> {
    // SAFETY: an all-zero ucred is valid; getsockopt writes at most `len` bytes into it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live for the call and `len` is `cred`'s size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// This process's effective user id.
pub fn my_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn listening_sockets_cross_a_socketpair_and_still_accept() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let ls: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let fds: Vec<RawFd> = ls.iter().map(|l| l.as_raw_fd()).collect();
        send_fds(&a, &fds).expect("send");
        let got = recv_fds(&b).expect("recv");
        assert_eq!(got.len(), 3);
        for (l, fd) in ls.iter().zip(got) {
            let copy = TcpListener::from(fd);
            assert_eq!(copy.local_addr().unwrap(), l.local_addr().unwrap());
            let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            copy.accept().expect("the received copy accepts");
        }
        assert_eq!(peer_uid(&b).unwrap(), my_uid());
        assert!(send_fds(&a, &[]).is_err());
        drop(a);
        assert!(recv_fds(&b).is_err(), "EOF is an error, not an empty batch");
    }
}
