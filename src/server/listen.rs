//! Listening sockets.
//!
//! The multi-thread layout listens on one socket. The per-core layout listens on one
//! socket per core, all bound to the same address with `SO_REUSEPORT`, so the kernel
//! spreads new connections across the cores by their address hash and no accept is ever
//! contended. `SO_REUSEPORT` would also let a second oip-media started on the same port
//! join the group silently and take half the traffic; a plain bind of the address first
//! fails with "address in use" as it always did, and only then is the group bound.

use std::io;
use std::net::{SocketAddr, TcpListener};

/// Kernel backlog of each listening socket: past `--max-connections`, new clients wait
/// here, not in our memory.
const BACKLOG: i32 = 4096;

/// Binds `count` listening sockets on `addr` (one without `SO_REUSEPORT`, or a group of
/// `count` with it). With port 0 the first socket picks the port and the others join it.
pub(super) fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    if count <= 1 {
        return Ok(vec![bind_one(addr, false)?]);
    }
    if addr.port() != 0 {
        // Fails with EADDRINUSE when anything listens there, a reuseport group included:
        // two services never share a port by accident.
        drop(bind_one(addr, false)?);
    }
    let first = bind_one(addr, true)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_one(addr, true)?);
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        rustix::net::sockopt::set_socket_reuseport(&socket, true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
