//! Loopback connections from a chosen source address: the agent sees them
//! as another peer than the test's or the bench's other clients.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Duration;

/// A TCP connection to `port` on 127.0.0.1 from `source`, another loopback
/// address, with read and write timeouts.
pub fn connect_from(source: Ipv4Addr, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) has no preconditions; the descriptor it returns is
    // owned by the TcpStream at once, which closes it on every path.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        TcpStream::from_raw_fd(fd)
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let local = sockaddr(source, 0);
    let remote = sockaddr(Ipv4Addr::LOCALHOST, port);
    // SAFETY: `fd` is the open socket owned by `stream`; both addresses are
    // valid `sockaddr_in` values that live across the calls, and `len` is
    // their size.
    unsafe {
        if libc::bind(fd, (&raw const local).cast(), len) != 0
            || libc::connect(fd, (&raw const remote).cast(), len) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}
