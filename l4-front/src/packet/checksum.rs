//! Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! The data path only ever uses the incremental forms; the full sums are for
//! building new headers (TUN outer header, ICMP errors, ARP has none) and for
//! completing checksums the kernel left partial (veth offload).

/// One's-complement sum of `data` added to `initial`, not folded.
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u64) << 8;
    }
    while acc >> 32 != 0 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Folds a 32-bit accumulator to 16 bits and complements it.
pub fn finish(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Checksum of a complete header or message (checksum field included as 0).
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data, 0))
}

/// The IPv4 pseudo-header sum for TCP/UDP.
pub fn pseudo_header(src: u32, dst: u32, proto: u8, len: u16) -> u32 {
    let mut acc: u32 = 0;
    acc += src >> 16;
    acc += src & 0xffff;
    acc += dst >> 16;
    acc += dst & 0xffff;
    acc += proto as u32;
    acc += len as u32;
    acc
}

/// Full TCP/UDP checksum over `segment` (whose checksum field must be 0).
pub fn l4_checksum(src: u32, dst: u32, proto: u8, segment: &[u8]) -> u16 {
    finish(sum(
        segment,
        pseudo_header(src, dst, proto, segment.len() as u16),
    ))
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for a 16-bit field change.
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let acc = (!csum as u32) + (!old as u32 & 0xffff) + new as u32;
    finish(acc)
}

/// RFC 1624 for a 32-bit field (an IPv4 address) change.
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let acc =
        (!csum as u32) + (!(old >> 16) & 0xffff) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    finish(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // Example from RFC 1071 §3: sum 0x00 01 f2 03 f4 f5 f6 f7 = 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum(&data, 0)), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(checksum(&[0x12]), checksum(&[0x12, 0x00]));
    }

    #[test]
    fn incremental_matches_full() {
        let mut hdr = [
            0x45u8, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 10, 201, 1, 2, 10, 201, 2, 100,
        ];
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let old = u32::from_be_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
        let new: u32 = 0x0ac9_020b;
        hdr[16..20].copy_from_slice(&new.to_be_bytes());
        let inc = update32(c, old, new);
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(inc, checksum(&hdr));
        hdr[10..12].copy_from_slice(&inc.to_be_bytes());
        assert_eq!(checksum(&hdr), 0);
        let c2 = update16(inc, 0x4006, 0x3f06);
        hdr[8] = 0x3f;
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(c2, checksum(&hdr));
    }
}
