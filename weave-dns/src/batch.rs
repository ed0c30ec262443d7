//! Batched UDP for the DNS server (Linux): the queries waiting on the
//! socket read with one `recvmmsg`, their replies written with one
//! `sendmmsg`, so a busy server makes two system calls per batch instead
//! of two per query.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Most datagrams per call.
pub(crate) const BATCH: usize = 32;
/// Largest query read (as before batching); longer ones are cut and
/// answered FORMERR by the responder, as a truncated message is.
const QUERY_BUF: usize = 4096;

/// Receive buffers for up to [`BATCH`] queries.
pub(crate) struct Queries {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    from: Vec<libc::sockaddr_storage>,
}

impl Queries {
    pub(crate) fn new() -> Self {
        // SAFETY: sockaddr_storage is plain data; all-zero is valid.
        let from = (0..BATCH).map(|_| unsafe { zeroed::<libc::sockaddr_storage>() }).collect();
        Self { bufs: vec![vec![0; QUERY_BUF]; BATCH], lens: vec![0; BATCH], from }
    }

    /// Read the queries waiting, without blocking; how many (`WouldBlock`
    /// when none).
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = self.bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        // SAFETY: mmsghdr is plain data; all-zero is an empty header.
        let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect();
        for ((h, iov), from) in hdrs.iter_mut().zip(iovs.iter_mut()).zip(self.from.iter_mut()) {
            h.msg_hdr.msg_name = (from as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: each header points at a live iovec over a live buffer of
        // its stated length and at live address storage, none of which is
        // touched until the call returns.
        let r = unsafe { libc::recvmmsg(fd, hdrs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = r as usize;
        for (len, h) in self.lens.iter_mut().zip(&hdrs).take(got) {
            *len = h.msg_len as usize;
        }
        Ok(got)
    }

    /// Query `i` of the last [`Self::recv`] and its sender.
    pub(crate) fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.bufs[i][..self.lens[i]], from_storage(&self.from[i]))
    }
}

/// Send `replies[i].0` to `replies[i].1` with `sendmmsg`; how many the
/// kernel took (the first of the rest failed, or would block).
pub(crate) fn send(fd: RawFd, replies: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
    let n = replies.len().min(BATCH);
    let mut to: Vec<(libc::sockaddr_storage, libc::socklen_t)> = replies[..n].iter().map(|(_, a)| to_storage(*a)).collect();
    let mut iovs: Vec<libc::iovec> = replies[..n].iter().map(|(b, _)| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
    // SAFETY: as in `recv`.
    let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect();
    for ((h, iov), (addr, len)) in hdrs.iter_mut().zip(iovs.iter_mut()).zip(to.iter_mut()) {
        h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_namelen = *len;
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at a live iovec over a live reply and at
    // a live, initialised address of the stated length; the kernel only
    // reads them (and writes msg_len).
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(a.sin6_addr.s6_addr), u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // address type.
            let sin = unsafe { &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_convert_both_ways() {
        for a in ["127.0.0.1:53", "[::1]:5353", "[fe80::1%2]:53"] {
            let a: SocketAddr = a.parse().unwrap();
            let (s, _) = to_storage(a);
            assert_eq!(from_storage(&s), Some(a));
        }
    }

    #[test]
    fn a_batch_goes_out_and_comes_back_in() {
        use std::os::fd::AsRawFd;
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        let replies: Vec<(Vec<u8>, SocketAddr)> = (0..5u8).map(|i| (vec![i; 10 + usize::from(i)], to)).collect();
        assert_eq!(send(client.as_raw_fd(), &replies).unwrap(), 5);
        let mut q = Queries::new();
        let mut got = Vec::new();
        for _ in 0..100 {
            match q.recv(server.as_raw_fd()) {
                Ok(n) => got.extend((0..n).map(|i| (q.get(i).0.to_vec(), q.get(i).1))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
            if got.len() == 5 {
                break;
            }
        }
        let from = client.local_addr().unwrap();
        assert_eq!(got, (0..5u8).map(|i| (vec![i; 10 + usize::from(i)], Some(from))).collect::<Vec<_>>());
        assert_eq!(q.recv(server.as_raw_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
