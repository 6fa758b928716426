//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2 section 5.1.6) in front of
//! every frame, and the checks a guest's transmit header must pass before it reaches the TAP.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Size of the header with `num_buffers` (virtio 1.x always uses it).
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Shortest frame: an Ethernet header.
pub const ETH_HLEN: usize = 14;

/// The header's fields, little-endian on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

/// Why a transmit header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "flags {0:#x} has bits other than NEEDS_CSUM, or NEEDS_CSUM without VIRTIO_NET_F_CSUM"
    )]
    Flags(u8),
    #[error("gso_type {0:#x} is not one the device accepted (none, TCPv4, TCPv6)")]
    GsoType(u8),
    #[error("a GSO frame needs NEEDS_CSUM and a non-zero gso_size")]
    GsoFields,
    #[error("checksum at {start}+{offset} lies outside the {len}-byte frame")]
    CsumRange { start: u16, offset: u16, len: usize },
    #[error("hdr_len {hdr_len} is longer than the {len}-byte frame")]
    HdrLen { hdr_len: u16, len: usize },
}

impl VnetHeader {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Checks a transmit header against the acked `features` for a frame of `frame_len` bytes
    /// (after the header). The TAP checks again; this keeps the device's counters honest and
    /// refuses what the guest was never allowed to send.
    pub fn check_tx(&self, features: u64, frame_len: usize) -> Result<(), HeaderError> {
        let acked = |bit: u32| features & (1u64 << bit) != 0;
        let needs_csum = self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0;
        if self.flags & !(VIRTIO_NET_HDR_F_NEEDS_CSUM as u8) != 0
            || (needs_csum && !acked(VIRTIO_NET_F_CSUM))
        {
            return Err(HeaderError::Flags(self.flags));
        }
        match u32::from(self.gso_type) {
            VIRTIO_NET_HDR_GSO_NONE => {}
            VIRTIO_NET_HDR_GSO_TCPV4 if acked(VIRTIO_NET_F_HOST_TSO4) => {}
            VIRTIO_NET_HDR_GSO_TCPV6 if acked(VIRTIO_NET_F_HOST_TSO6) => {}
            _ => return Err(HeaderError::GsoType(self.gso_type)),
        }
        if u32::from(self.gso_type) != VIRTIO_NET_HDR_GSO_NONE
            && (!needs_csum || self.gso_size == 0)
        {
            return Err(HeaderError::GsoFields);
        }
        if needs_csum
            && usize::from(self.csum_start) + usize::from(self.csum_offset) + 2 > frame_len
        {
            return Err(HeaderError::CsumRange {
                start: self.csum_start,
                offset: self.csum_offset,
                len: frame_len,
            });
        }
        if usize::from(self.hdr_len) > frame_len {
            return Err(HeaderError::HdrLen {
                hdr_len: self.hdr_len,
                len: frame_len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 =
        1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_HOST_TSO6;

    fn tso4() -> VnetHeader {
        VnetHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    #[test]
    fn round_trips_little_endian() {
        let h = VnetHeader {
            num_buffers: 0x0102,
            ..tso4()
        };
        let b = h.to_bytes();
        assert_eq!(&b[..6], &[1, 1, 54, 0, 0xa8, 0x05]);
        assert_eq!(&b[10..], &[2, 1]);
        assert_eq!(VnetHeader::from_bytes(&b), h);
    }

    #[test]
    fn tx_headers_are_checked_against_the_features() {
        assert_eq!(VnetHeader::default().check_tx(0, 60), Ok(()));
        assert_eq!(tso4().check_tx(ALL, 3000), Ok(()));
        let no_tso = ALL & !(1 << VIRTIO_NET_F_HOST_TSO4);
        assert_eq!(tso4().check_tx(no_tso, 3000), Err(HeaderError::GsoType(1)));
        let csum_only = VnetHeader {
            gso_type: 0,
            gso_size: 0,
            ..tso4()
        };
        assert_eq!(csum_only.check_tx(ALL, 60), Ok(()));
        assert_eq!(csum_only.check_tx(0, 60), Err(HeaderError::Flags(1)));
        let bad = |h: VnetHeader| h.check_tx(ALL, 3000).unwrap_err();
        assert!(matches!(
            bad(VnetHeader {
                flags: 0x2,
                ..tso4()
            }),
            HeaderError::Flags(_)
        ));
        assert!(matches!(
            bad(VnetHeader {
                gso_type: 3,
                ..tso4()
            }),
            HeaderError::GsoType(3)
        ));
        assert!(matches!(
            bad(VnetHeader {
                gso_type: 0x81,
                ..tso4()
            }),
            HeaderError::GsoType(_)
        ));
        assert_eq!(
            bad(VnetHeader {
                gso_size: 0,
                ..tso4()
            }),
            HeaderError::GsoFields
        );
        assert_eq!(
            bad(VnetHeader { flags: 0, ..tso4() }),
            HeaderError::GsoFields
        );
        assert!(matches!(
            bad(VnetHeader {
                csum_start: 2990,
                ..tso4()
            }),
            HeaderError::CsumRange { .. }
        ));
        assert!(matches!(
            bad(VnetHeader {
                hdr_len: 3001,
                ..tso4()
            }),
            HeaderError::HdrLen { .. }
        ));
    }
}
