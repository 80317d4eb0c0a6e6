//! How many bytes of a TCP connection the peer has acknowledged: the measure of
//! "progress" for the write-stall rule (see [`super::timed_io`]).
//!
//! Why acknowledged bytes, from `TCP_INFO`'s `tcpi_bytes_acked`, and not "the last write
//! succeeded": a socket reports writable only once a good part of its send buffer is
//! free, and the kernel autotunes that buffer up to `net.ipv4.tcp_wmem`'s maximum (4 MiB
//! by default). A client reading steadily but slowly therefore leaves a write pending
//! for as long as that part takes to drain — seconds — while it accepts bytes the whole
//! time. Acknowledged bytes grow with every segment the client's kernel accepts, which
//! it does as fast as the client reads (its receive window opens as it reads), whatever
//! the buffer sizes on either side. A client that reads nothing closes its window and
//! the count stops.
//!
//! Why not `SIOCOUTQ` (bytes not yet acknowledged): it gives the same information only
//! relative to the bytes written, which the caller would have to count on every write;
//! `tcpi_bytes_acked` is a counter on its own (Linux 4.1 and later; on an older kernel
//! the field is absent and [`bytes_acked`] answers `None`, and the caller falls back to
//! "the socket took bytes").
//!
//! The only `unsafe` of the server: one `getsockopt` into a byte buffer (neither rustix
//! nor socket2 wraps `TCP_INFO`).

use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd};

/// Bytes of this connection the peer has acknowledged so far (a counter that only
/// grows), or `None` when the kernel does not say (not a TCP socket, a kernel older than
/// 4.1). One `getsockopt(TCP_INFO)`: call it when a write has waited, not per write.
pub fn bytes_acked(socket: impl AsFd) -> Option<u64> {
    const SIZE: usize = size_of::<libc::tcp_info>();
    const AT: usize = offset_of!(libc::tcp_info, tcpi_bytes_acked);
    let mut info = [0u8; SIZE];
    let mut len = SIZE as libc::socklen_t;
    let fd = socket.as_fd().as_raw_fd();
    // SAFETY: `getsockopt` writes at most `len` bytes at the pointer and stores the
    // length it wrote in `len`; the pointer is to `info`, a live, writable buffer of
    // exactly `len` bytes, and `len` is a live `socklen_t`. `fd` is borrowed from an
    // `AsFd` for the duration of the call, so it is open. No alignment is needed: the
    // kernel copies bytes, and the field is read back with `from_ne_bytes`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let written = usize::try_from(len).ok()?;
    if rc != 0 || written < AT + 8 {
        return None;
    }
    let field: [u8; 8] = info[AT..AT + 8].try_into().ok()?;
    Some(u64::from_ne_bytes(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn counts_what_the_peer_received_and_nothing_for_other_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let before = bytes_acked(&server).expect("a TCP socket on Linux 4.1+");
        server.write_all(&[1u8; 50_000]).unwrap();
        let mut got = vec![0u8; 50_000];
        client.read_exact(&mut got).unwrap();
        // Loopback acknowledges at once, but give the ACK a moment to be processed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while bytes_acked(&server) != Some(before + 50_000) {
            assert!(
                std::time::Instant::now() < deadline,
                "acked bytes never reached the count written"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // A file is not a TCP socket: no answer, no error.
        let file = tempfile::tempfile().unwrap();
        assert_eq!(bytes_acked(&file), None);
    }
}
