//! What the sleeve needs to know about the frames it carries: Ethernet
//! addresses, and for IPv4 frames too big for the path, either an ICMP
//! "fragmentation needed" back to the sender (DF set) or fragments.

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;

/// A MAC address.
pub type Mac = [u8; 6];

/// Destination MAC of a frame (None if shorter than a header).
pub fn dst_mac(frame: &[u8]) -> Option<Mac> {
    frame.get(0..6).map(|s| s.try_into().expect("6 bytes"))
}

/// Source MAC of a frame.
pub fn src_mac(frame: &[u8]) -> Option<Mac> {
    frame.get(6..12).map(|s| s.try_into().expect("6 bytes"))
}

/// Broadcast or multicast (group bit set).
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

fn ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(12..14).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Complete a partial (offloaded) checksum: the one's-complement sum of
/// everything from `start` goes at `start + offset`. Out-of-range values
/// leave the frame alone.
pub fn finish_checksum(frame: &mut [u8], start: usize, offset: usize) {
    if start >= frame.len() || start + offset + 2 > frame.len() {
        return;
    }
    // The field holds the pseudo-header sum already; fold it in.
    let c = checksum(&frame[start..]);
    frame[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
}

/// Whether a virtio-net header that came from a peer may go to our TAP
/// with `frame`: only the flags and segmentation types the kernel gives
/// us (checksum needed or valid; TCP segmentation over IPv4 or IPv6, with
/// ECN — the offloads our TAP devices turn on), a
/// partial checksum that lies inside the frame at a TCP or UDP checksum
/// field, and segmentation only of a TCP frame, with a
/// segment size and header length the frame can hold. A peer choosing
/// anything else could make the host's kernel mis-handle the frame.
pub fn vnet_valid(v: &[u8; 10], frame: &[u8]) -> bool {
    const NEEDS_CSUM: u8 = 1;
    const DATA_VALID: u8 = 2;
    const GSO_ECN: u8 = 0x80;
    let field = |i: usize| usize::from(u16::from_le_bytes([v[i], v[i + 1]]));
    let (flags, gso, hdr_len, gso_size, csum_start, csum_offset) = (v[0], v[1], field(2), field(4), field(6), field(8));
    if flags & !(NEEDS_CSUM | DATA_VALID) != 0 {
        return false;
    }
    if flags & NEEDS_CSUM != 0 && (csum_start < ETH_HLEN || !matches!(csum_offset, 6 | 16) || csum_start + csum_offset + 2 > frame.len()) {
        return false;
    }
    let (ip_proto, v6) = match ethertype(frame) {
        Some(ETHERTYPE_IPV4) => (frame.get(ETH_HLEN + 9).copied(), false),
        Some(0x86dd) => (frame.get(ETH_HLEN + 6).copied(), true),
        _ => (None, false),
    };
    match gso & !GSO_ECN {
        0 => return gso == 0,
        1 if !v6 => {}
        4 if v6 => {}
        _ => return false,
    }
    ip_proto == Some(6) && flags & NEEDS_CSUM != 0 && gso_size > 0 && gso_size < frame.len() && hdr_len <= frame.len()
}

/// What to do with a frame larger than the path allows.
#[derive(Debug, PartialEq, Eq)]
pub enum TooBig {
    /// IPv4 with DF: send this ICMP frame back into the local bridge.
    Icmp(Vec<u8>),
    /// IPv4 without DF: send these fragments instead.
    Fragments(Vec<Vec<u8>>),
    /// Not IPv4 (or malformed): drop.
    Drop,
}

/// Handle `frame`, which exceeds `max_frame` bytes (Ethernet header
/// included) on the path it must take.
pub fn too_big(frame: &[u8], max_frame: usize) -> TooBig {
    if ethertype(frame) != Some(ETHERTYPE_IPV4) || max_frame < ETH_HLEN + 28 {
        return TooBig::Drop;
    }
    let ip = &frame[ETH_HLEN..];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return TooBig::Drop;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || total > ip.len() {
        return TooBig::Drop;
    }
    let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
    let df = flags_frag & 0x4000 != 0;
    let mtu = max_frame - ETH_HLEN;
    if df {
        icmp_frag_needed(frame, ihl, mtu).map_or(TooBig::Drop, TooBig::Icmp)
    } else {
        TooBig::Fragments(fragment(frame, ihl, total, mtu))
    }
}

/// ICMP type 3 code 4 from the original destination back to the sender,
/// quoting the header and 8 bytes as RFC 792 asks.
fn icmp_frag_needed(frame: &[u8], ihl: usize, mtu: usize) -> Option<Vec<u8>> {
    let ip = &frame[ETH_HLEN..];
    if ip[9] == 1 {
        // Never answer an ICMP message with an ICMP error... except echo
        // requests/replies, which are queries (types 0 and 8).
        let ty = *ip.get(ihl)?;
        if ty != 0 && ty != 8 {
            return None;
        }
    }
    let quote = &ip[..(ihl + 8).min(ip.len())];
    let icmp_len = 8 + quote.len();
    let total = 20 + icmp_len;
    let mut out = Vec::with_capacity(ETH_HLEN + total);
    out.extend_from_slice(&frame[6..12]); // to the sender's MAC
    out.extend_from_slice(&frame[0..6]); // from the frame's destination MAC
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let mut iph = [0u8; 20];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    iph[6] = 0x40; // DF
    iph[8] = 64;
    iph[9] = 1;
    iph[12..16].copy_from_slice(&ip[16..20]);
    iph[16..20].copy_from_slice(&ip[12..16]);
    let c = checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&iph);
    let mut icmp = vec![3u8, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&(mtu.min(0xffff) as u16).to_be_bytes());
    icmp.extend_from_slice(quote);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&icmp);
    Some(out)
}

/// Split an IPv4 packet into fragments of at most `mtu` bytes of IP.
fn fragment(frame: &[u8], ihl: usize, total: usize, mtu: usize) -> Vec<Vec<u8>> {
    let ip = &frame[ETH_HLEN..ETH_HLEN + total];
    let header = &ip[..ihl];
    let payload = &ip[ihl..];
    let per = ((mtu - ihl) / 8) * 8;
    let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
    let base_off = usize::from(flags_frag & 0x1fff) * 8;
    let more_after = flags_frag & 0x2000 != 0;
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + per).min(payload.len());
        let last = end == payload.len();
        let mut f = Vec::with_capacity(ETH_HLEN + ihl + end - off);
        f.extend_from_slice(&frame[..ETH_HLEN]);
        f.extend_from_slice(header);
        f.extend_from_slice(&payload[off..end]);
        let h = &mut f[ETH_HLEN..ETH_HLEN + ihl];
        h[2..4].copy_from_slice(&((ihl + end - off) as u16).to_be_bytes());
        let mf = if last && !more_after { 0 } else { 0x2000 };
        let fo = ((base_off + off) / 8) as u16;
        h[6..8].copy_from_slice(&(mf | fo).to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        out.push(f);
        off = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_frame(payload: usize, df: bool, proto: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
        let total = 20 + payload;
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        h[4..6].copy_from_slice(&[0x12, 0x34]);
        if df {
            h[6] = 0x40;
        }
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&[10, 32, 0, 1]);
        h[16..20].copy_from_slice(&[10, 32, 0, 2]);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    #[test]
    fn df_gets_icmp_frag_needed() {
        let f = ipv4_frame(2000, true, 17);
        let TooBig::Icmp(icmp) = too_big(&f, 1390) else { panic!("expected ICMP") };
        assert_eq!(&icmp[0..6], &f[6..12]);
        let ip = &icmp[14..];
        assert_eq!(checksum(&ip[..20]), 0);
        assert_eq!(&ip[12..16], &[10, 32, 0, 2]);
        assert_eq!(&ip[16..20], &[10, 32, 0, 1]);
        assert_eq!((ip[20], ip[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([ip[26], ip[27]]), 1376);
        assert_eq!(checksum(&ip[20..]), 0);
        assert_eq!(&ip[28..48], &f[14..34], "quotes the original header");
    }

    #[test]
    fn no_icmp_error_about_icmp_errors() {
        let mut f = ipv4_frame(2000, true, 1);
        f[34] = 3;
        assert_eq!(too_big(&f, 1390), TooBig::Drop);
        f[34] = 8;
        assert!(matches!(too_big(&f, 1390), TooBig::Icmp(_)));
    }

    #[test]
    fn fragments_reassemble_to_the_original() {
        let f = ipv4_frame(5000, false, 17);
        let TooBig::Fragments(frags) = too_big(&f, 1390) else { panic!("expected fragments") };
        assert_eq!(frags.len(), 4);
        let mut data = Vec::new();
        for (i, fr) in frags.iter().enumerate() {
            assert!(fr.len() <= 1390);
            let ip = &fr[14..];
            assert_eq!(checksum(&ip[..20]), 0);
            let ff = u16::from_be_bytes([ip[6], ip[7]]);
            assert_eq!(usize::from(ff & 0x1fff) * 8, data.len());
            assert_eq!(ff & 0x2000 != 0, i + 1 < frags.len());
            assert_eq!(&ip[4..6], &[0x12, 0x34], "same IP id");
            data.extend_from_slice(&ip[20..]);
        }
        assert_eq!(&data[..], &f[34..]);
    }

    #[test]
    fn non_ipv4_and_garbage_dropped() {
        assert_eq!(too_big(&[0u8; 3000], 1390), TooBig::Drop);
        let mut f = ipv4_frame(2000, false, 17);
        f[16] = 0xff; // total length larger than the frame
        assert_eq!(too_big(&f, 1390), TooBig::Drop);
        assert_eq!(too_big(&ipv4_frame(2000, false, 17), 30), TooBig::Drop);
    }
}
