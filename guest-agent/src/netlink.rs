//! rtnetlink requests the agent needs to set a container's interface up from outside: move a
//! link into another network namespace (by a pid of it) and rename it, look a link up by name,
//! set it up with an MTU, add an IPv4 address and a default route. Messages are built and
//! parsed here; the socket (an `AF_NETLINK`/`NETLINK_ROUTE` one, usually from
//! `container_socket()`) comes from the caller.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::{self, Errno};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_NET_NS_PID: u16 = 19;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;

/// A netlink request under construction: header, family header, attributes.
struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(ty: u16, flags: u16, family_header: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        buf.extend_from_slice(family_header);
        Request { buf }
    }

    fn attr(mut self, ty: u16, data: &[u8]) -> Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = libc::AF_UNSPEC as u8;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

fn name_attr(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// What the kernel answered: for an ack, nothing; for a link lookup, the link's index.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Ack,
    Link(i32),
}

/// Parses one reply datagram: an error/ack message or a link message.
fn parse_reply(buf: &[u8]) -> Result<Reply, Errno> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(libc::EBADMSG);
        }
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        match ty {
            NLMSG_ERROR => {
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .ok_or(libc::EBADMSG)?;
                return if code == 0 {
                    Ok(Reply::Ack)
                } else {
                    Err(-code)
                };
            }
            RTM_NEWLINK => {
                let index = payload
                    .get(4..8)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .ok_or(libc::EBADMSG)?;
                return Ok(Reply::Link(index));
            }
            NLMSG_DONE => return Ok(Reply::Ack),
            _ => {}
        }
        off += len.next_multiple_of(4);
    }
    Err(libc::EBADMSG)
}

/// Sends one request on `sock` and waits for its answer.
fn call(sock: &OwnedFd, msg: &[u8]) -> Result<Reply, Errno> {
    let fd = sock.as_raw_fd();
    sys::set_blocking(fd);
    let sent = sys::write(fd, msg).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    if sent != msg.len() {
        return Err(libc::EIO);
    }
    let mut buf = vec![0u8; 8192];
    let n = sys::read(fd, &mut buf).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let reply = parse_reply(&buf[..n])?;
    if let Reply::Link(_) = reply {
        // A link message is followed by its ack; the index is what was asked for.
        let _ = sys::read(fd, &mut buf);
    }
    Ok(reply)
}

/// Moves link `index` into the network namespace of process `pid`, named `name` there.
pub fn move_to_netns(
    sock: &OwnedFd,
    index: i32,
    pid: libc::pid_t,
    name: &str,
) -> Result<(), Errno> {
    let msg = Request::new(RTM_NEWLINK, 0, &ifinfomsg(index, 0, 0))
        .attr(IFLA_NET_NS_PID, &(pid as u32).to_ne_bytes())
        .attr(IFLA_IFNAME, &name_attr(name))
        .finish();
    call(sock, &msg).map(drop)
}

/// The index of the link named `name`.
pub fn link_index(sock: &OwnedFd, name: &str) -> Result<i32, Errno> {
    let msg = Request::new(RTM_GETLINK, 0, &ifinfomsg(0, 0, 0))
        .attr(IFLA_IFNAME, &name_attr(name))
        .finish();
    match call(sock, &msg)? {
        Reply::Link(index) => Ok(index),
        Reply::Ack => Err(libc::ENODEV),
    }
}

/// Sets link `index` up, with `mtu` unless it is 0.
pub fn link_up(sock: &OwnedFd, index: i32, mtu: u32) -> Result<(), Errno> {
    let mut req = Request::new(RTM_NEWLINK, 0, &ifinfomsg(index, IFF_UP, IFF_UP));
    if mtu != 0 {
        req = req.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    call(sock, &req.finish()).map(drop)
}

/// Gives link `index` the address `addr/prefix` (replacing the same address if present).
pub fn add_address(sock: &OwnedFd, index: i32, addr: Ipv4Addr, prefix: u8) -> Result<(), Errno> {
    let mut h = [0u8; 8];
    h[0] = libc::AF_INET as u8;
    h[1] = prefix;
    h[3] = RT_SCOPE_UNIVERSE;
    h[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
    let host_mask = if prefix >= 32 { 0 } else { u32::MAX >> prefix };
    let broadcast = Ipv4Addr::from(u32::from(addr) | host_mask);
    let msg = Request::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &h)
        .attr(IFA_LOCAL, &addr.octets())
        .attr(IFA_ADDRESS, &addr.octets())
        .attr(IFA_BROADCAST, &broadcast.octets())
        .finish();
    call(sock, &msg).map(drop)
}

/// Adds the default route through `gateway` on link `index`.
pub fn add_default_route(sock: &OwnedFd, index: i32, gateway: Ipv4Addr) -> Result<(), Errno> {
    let h = [
        libc::AF_INET as u8,
        0, // dst_len: the default route
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ];
    let msg = Request::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &h)
        .attr(RTA_GATEWAY, &gateway.octets())
        .attr(RTA_OIF, &(index as u32).to_ne_bytes())
        .finish();
    call(sock, &msg).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_length_prefixed_and_attributes_aligned() {
        let msg = Request::new(RTM_GETLINK, 0, &ifinfomsg(0, 0, 0))
            .attr(IFLA_IFNAME, &name_attr("eth0"))
            .finish();
        assert_eq!(
            u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(
            msg.len(),
            16 + 16 + 12,
            "eth0\\0 padded to 8 bytes + 4 of header"
        );
        assert_eq!(msg.len() % 4, 0);
        let flags = u16::from_ne_bytes(msg[6..8].try_into().unwrap());
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
    }

    fn message(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_acks_errors_and_links() {
        assert_eq!(
            parse_reply(&message(NLMSG_ERROR, &0i32.to_ne_bytes())),
            Ok(Reply::Ack)
        );
        assert_eq!(
            parse_reply(&message(NLMSG_ERROR, &(-libc::EEXIST).to_ne_bytes())),
            Err(libc::EEXIST)
        );
        assert_eq!(
            parse_reply(&message(RTM_NEWLINK, &ifinfomsg(7, 0, 0))),
            Ok(Reply::Link(7))
        );
    }

    #[test]
    fn hostile_replies_are_errors() {
        assert_eq!(parse_reply(&[]), Err(libc::EBADMSG));
        let mut m = message(NLMSG_ERROR, &0i32.to_ne_bytes());
        m[0] = 200; // longer than the datagram
        assert_eq!(parse_reply(&m), Err(libc::EBADMSG));
        assert_eq!(parse_reply(&message(NLMSG_ERROR, &[1])), Err(libc::EBADMSG));
    }
}
