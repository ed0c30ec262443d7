//! The few system calls without a safe wrapper: TAP creation, batched UDP
//! I/O (recvmmsg/sendmmsg), DF probing, and AF_PACKET sockets for the fast
//! path's heartbeats. Every `unsafe` block states why it is sound.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Create (or attach to) the TAP device `name` in the calling thread's
/// network namespace, non-blocking, without packet-information headers.
/// With `offload`, every read and write carries a 10-byte virtio-net
/// header, and the kernel may hand over TSO super-frames (up to 64 KiB)
/// and frames with partial checksums.
pub fn open_tap(name: &str, offload: bool) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"));
    }
    let f = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open("/dev/net/tun")?;
    let flags = IFF_TAP | IFF_NO_PI | if offload { IFF_VNET_HDR } else { 0 };
    let mut req = IfReqFlags { name: [0; libc::IFNAMSIZ], flags, _pad: [0; 22] };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its
    // layout (name then a short flags field, padded to 40 bytes) and lives
    // for the call; the fd is open.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReqFlags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if offload {
        let features: libc::c_uint = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        // SAFETY: TUNSETOFFLOAD takes the feature bits by value.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETOFFLOAD as _, features as libc::c_ulong) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(f)
}

/// Set DF on everything sent and ignore the kernel's path-MTU cache (the
/// sleeve probes the path itself); oversize sends fail instead of fragmenting.
pub fn set_pmtu_probe(fd: RawFd) -> io::Result<()> {
    let v: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: a plain integer option on an open socket.
    let r = unsafe {
        libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, &v as *const _ as *const libc::c_void, size_of::<libc::c_int>() as libc::socklen_t)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Set the socket's receive and send buffers to `bytes`, above the
/// system limit when privileged (SO_*BUFFORCE), else as far as allowed.
pub fn set_buffers(fd: RawFd, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        // SAFETY: integer options on an open socket.
        let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, force, &v as *const _ as *const libc::c_void, size_of::<libc::c_int>() as libc::socklen_t) };
        if r < 0 {
            // SAFETY: as above.
            unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, plain, &v as *const _ as *const libc::c_void, size_of::<libc::c_int>() as libc::socklen_t) };
        }
    }
}

fn to_storage(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and suitably aligned
            // for sockaddr_in.
            let sin = unsafe { &mut *(out as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(out as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family says so).
            let sin = unsafe { &*(s as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()), u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let sin6 = unsafe { &*(s as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Room for one cmsg carrying an int (UDP_SEGMENT / UDP_GRO).
const CMSG_INT_SPACE: usize = 24;

/// Ask the kernel to coalesce datagrams of one flow into one receive
/// (UDP GRO); [`RecvBatch::segs`] then says where each datagram starts.
/// Returns whether the kernel agreed.
pub fn enable_udp_gro(fd: RawFd) -> bool {
    let v: libc::c_int = 1;
    // SAFETY: an integer option on an open socket.
    unsafe { libc::setsockopt(fd, SOL_UDP, UDP_GRO, &v as *const _ as *const libc::c_void, size_of::<libc::c_int>() as libc::socklen_t) == 0 }
}

/// Buffers for receiving up to `n` datagrams (or GRO trains of them) with
/// one `recvmmsg`.
pub struct RecvBatch {
    /// Datagram buffers (each `cap` bytes).
    pub bufs: Vec<Vec<u8>>,
    /// Received lengths.
    pub lens: Vec<usize>,
    /// Senders.
    pub addrs: Vec<Option<SocketAddr>>,
    /// Segment size when the kernel coalesced several datagrams (GRO): the
    /// buffer holds datagrams of this size, the last possibly shorter.
    pub segs: Vec<usize>,
    storage: Vec<libc::sockaddr_storage>,
    control: Vec<[u64; CMSG_INT_SPACE / 8]>,
}

impl RecvBatch {
    /// `n` buffers of `cap` bytes.
    pub fn new(n: usize, cap: usize) -> Self {
        // SAFETY: sockaddr_storage is plain data; all-zero is valid.
        let storage = (0..n).map(|_| unsafe { zeroed::<libc::sockaddr_storage>() }).collect();
        Self { bufs: vec![vec![0u8; cap]; n], lens: vec![0; n], addrs: vec![None; n], segs: vec![0; n], storage, control: vec![[0; CMSG_INT_SPACE / 8]; n] }
    }

    /// The datagrams in buffer `i`, as ranges.
    pub fn datagrams(&self, i: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let len = self.lens[i];
        let seg = if self.segs[i] == 0 { len.max(1) } else { self.segs[i] };
        (0..len).step_by(seg).map(move |s| s..(s + seg).min(len))
    }

    /// Receive up to `bufs.len()` datagrams without blocking; returns how
    /// many arrived (`WouldBlock` when none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        let mut iovs: Vec<libc::iovec> = self.bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
        let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect();
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut self.storage[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_INT_SPACE as _;
        }
        // SAFETY: every header points at a live iovec over a live buffer of
        // the stated length and at live address storage; the vectors are not
        // touched until the call returns. MSG_DONTWAIT: the caller polls.
        let r = unsafe { libc::recvmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = r as usize;
        for (i, hdr) in hdrs.iter().enumerate().take(got) {
            self.lens[i] = hdr.msg_len as usize;
            self.addrs[i] = from_storage(&self.storage[i]);
            self.segs[i] = 0;
            // SAFETY: the kernel filled msg_control/msg_controllen of this
            // header; CMSG_* walk only within them.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&hdr.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                        self.segs[i] = usize::try_from(v).unwrap_or(0);
                    }
                    c = libc::CMSG_NXTHDR(&hdr.msg_hdr, c);
                }
            }
        }
        Ok(got)
    }
}

static GSO_BROKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static GSO_FAILURES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Most datagrams in one GSO send (the kernel allows 64, and 64 KiB in all).
const GSO_MAX_SEGS: usize = 64;
const GSO_MAX_BYTES: usize = 65000;

/// Send datagrams. Runs of equal-sized datagrams of at least `gso_min`
/// bytes to one destination (the pieces of a TSO super-frame; the last may
/// be shorter) go down as one UDP GSO send; the rest with `sendmmsg`, in
/// chunks of up to 64. Errors on individual datagrams (unreachable, too
/// big) are skipped. Returns how many datagrams were sent.
pub fn send_batch<'a>(fd: RawFd, items: impl Iterator<Item = (SocketAddr, &'a [u8])>, gso_min: usize) -> usize {
    let items: Vec<(SocketAddr, &[u8])> = items.filter(|(_, d)| !d.is_empty()).collect();
    if GSO_BROKEN.load(std::sync::atomic::Ordering::Relaxed) {
        return send_plain(fd, &items);
    }
    let mut sent = 0;
    let mut i = 0;
    let mut singles: Vec<(SocketAddr, &[u8])> = Vec::new();
    while i < items.len() {
        let (dst, first) = items[i];
        let seg = first.len();
        if seg < gso_min {
            singles.push(items[i]);
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut total = seg;
        while j < items.len() && j - i < GSO_MAX_SEGS && items[j].0 == dst && items[j].1.len() <= seg && total + items[j].1.len() <= GSO_MAX_BYTES {
            total += items[j].1.len();
            j += 1;
            if items[j - 1].1.len() < seg {
                break;
            }
        }
        if j - i >= 2 {
            sent += send_plain(fd, &singles);
            singles.clear();
            match send_gso(fd, dst, seg, &items[i..j]) {
                Ok(()) => {
                    GSO_FAILURES.store(0, std::sync::atomic::Ordering::Relaxed);
                    sent += j - i;
                }
                // EINVAL also means "segment larger than the device MTU":
                // send this run one by one, and give up on GSO only if it
                // keeps failing.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)) => {
                    if GSO_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= 8 {
                        tracing::info!(error = %e, "UDP GSO unavailable; sending datagrams one by one");
                        GSO_BROKEN.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    sent += send_plain(fd, &items[i..j]);
                }
                Err(_) => {}
            }
        } else {
            singles.push(items[i]);
        }
        i = j;
    }
    sent + send_plain(fd, &singles)
}

fn send_gso(fd: RawFd, dst: SocketAddr, seg: usize, run: &[(SocketAddr, &[u8])]) -> io::Result<()> {
    // SAFETY: plain data, zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let namelen = to_storage(&dst, &mut storage);
    let mut iovs: Vec<libc::iovec> = run.iter().map(|(_, d)| libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() }).collect();
    let mut control = [0u64; CMSG_INT_SPACE / 8];
    // SAFETY: plain data, zero is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = namelen;
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = iovs.len() as _;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_INT_SPACE as _;
    // SAFETY: msg_control points at CMSG_INT_SPACE bytes, enough for one
    // cmsghdr carrying a u16; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg as u16);
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
    }
    loop {
        // SAFETY: every pointer in `msg` refers to live locals or to the
        // caller's buffers, which outlive the call; the kernel only reads.
        let r = unsafe { libc::sendmsg(fd, &msg, 0) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let _ = wait_writable(fd, 100);
            }
            _ => return Err(e),
        }
    }
}

fn send_plain(fd: RawFd, items: &[(SocketAddr, &[u8])]) -> usize {
    const CHUNK: usize = 64;
    let mut sent = 0;
    for chunk in items.chunks(CHUNK) {
        // SAFETY: plain data, zero is valid.
        let mut storage: Vec<libc::sockaddr_storage> = chunk.iter().map(|_| unsafe { zeroed() }).collect();
        let mut iovs: Vec<libc::iovec> = chunk.iter().map(|(_, d)| libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() }).collect();
        // SAFETY: as above.
        let mut hdrs: Vec<libc::mmsghdr> = chunk.iter().map(|_| unsafe { zeroed() }).collect();
        for (i, (addr, _)) in chunk.iter().enumerate() {
            let len = to_storage(addr, &mut storage[i]);
            hdrs[i].msg_hdr.msg_name = (&mut storage[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = len;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut start = 0;
        while start < hdrs.len() {
            // SAFETY: headers point at live addresses, iovecs and the
            // caller's buffers, all outliving the call; the kernel only
            // reads the data.
            let r = unsafe { libc::sendmmsg(fd, hdrs[start..].as_mut_ptr(), (hdrs.len() - start) as libc::c_uint, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() == io::ErrorKind::WouldBlock {
                    // Socket buffer full: wait for room rather than drop.
                    let _ = wait_writable(fd, 100);
                    continue;
                }
                // This datagram failed (e.g. EMSGSIZE on a probe): skip it.
                start += 1;
                continue;
            }
            sent += r as usize;
            start += r as usize;
        }
    }
    sent
}

fn wait_writable(fd: RawFd, ms: i32) -> io::Result<()> {
    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wait until any of the descriptors is readable or `ms` pass (`-1`:
/// no limit).
/// Returns which of them are ready (readable, or in error: a read then
/// says why); none on a timeout or an interrupted wait.
pub fn wait_any(fds: [RawFd; 3], ms: i32) -> io::Result<[bool; 3]> {
    let mut p = fds.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    // SAFETY: three live pollfds.
    let r = unsafe { libc::poll(p.as_mut_ptr(), 3, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        return Ok([false; 3]);
    }
    Ok(p.map(|p| p.revents != 0))
}

/// Wait until `fd` is readable or `ms` pass (`Ok(false)` on timeout).
pub fn wait_readable(fd: RawFd, ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0)
}

/// An AF_PACKET datagram socket bound to one interface and EtherType:
/// the fast path's heartbeats leave through the VXLAN device and arrive
/// on the bridge as frames of our own EtherType.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    proto: u16,
}

impl PacketSocket {
    /// Open and bind to `ifindex` for EtherType `proto`.
    pub fn open(ifindex: u32, proto: u16) -> io::Result<Self> {
        // SAFETY: plain socket creation; the fd is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, i32::from(proto.to_be())) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex"))?;
        let s = Self { fd, ifindex, proto };
        let sll = s.sockaddr(None);
        // SAFETY: binding a valid sockaddr_ll of the stated size.
        let r = unsafe {
            libc::bind(s.fd.as_raw_fd(), &sll as *const libc::sockaddr_ll as *const libc::sockaddr, size_of::<libc::sockaddr_ll>() as libc::socklen_t)
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    fn sockaddr(&self, dst: Option<[u8; 6]>) -> libc::sockaddr_ll {
        // SAFETY: plain data; zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = self.proto.to_be();
        sll.sll_ifindex = self.ifindex;
        if let Some(mac) = dst {
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&mac);
        }
        sll
    }

    /// The raw descriptor (for polling).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Send `payload` to `dst` (the kernel adds the Ethernet header).
    pub fn send_to(&self, dst: [u8; 6], payload: &[u8]) -> io::Result<()> {
        let sll = self.sockaddr(Some(dst));
        // SAFETY: valid buffer and sockaddr_ll for the duration of the call.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receive one payload; returns its length and the source MAC.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, [u8; 6])> {
        // SAFETY: plain data.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: valid buffer, address storage and length pointer.
        let r = unsafe {
            libc::recvfrom(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0, &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr, &mut len)
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&sll.sll_addr[..6]);
        Ok((r as usize, mac))
    }
}

/// Register an owned descriptor with tokio's reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes the descriptor by value and owns it, so it
    // stays open for as long as it is registered and is closed only after
    // the AsyncFd deregisters it on drop.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Wakes a thread blocked in [`wait_any`] on [`Waker::fd`] (an eventfd).
#[derive(Debug)]
pub struct Waker(OwnedFd);

impl Waker {
    /// A new eventfd, non-blocking.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Make the descriptor readable.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64; a full counter (never
        // reached) only means a wake-up is pending already.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Take pending wake-ups.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN when none pending.
        unsafe { libc::read(self.0.as_raw_fd(), (&raw mut v).cast(), 8) };
    }

    /// The descriptor to wait on.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
