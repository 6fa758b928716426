//! One connection to a vhost-user backend: connect and negotiate ([`Connection::connect`]),
//! hand the driver's queues over ([`Connection::activate`]), take them back on a driver reset
//! ([`Connection::reset`]).

use std::path::{Path, PathBuf};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

/// Protocol features the frontend uses when the backend offers them: several queues, and a
/// reply to every request so that a refused request is an error here.
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

/// Errors of a vhost-user connection; each names the backend's socket and the step.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("cannot connect to the vhost-user backend at {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user backend at {socket}: {step} failed")]
    Request {
        socket: PathBuf,
        step: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user backend at {socket} serves {offered} queues, the device needs {needed}")]
    QueueCount {
        socket: PathBuf,
        offered: u64,
        needed: usize,
    },
    #[error("vhost-user backend at {socket}: guest memory region at {addr:#x} is not file-backed (the VM needs shared memory)")]
    PrivateMemory { socket: PathBuf, addr: u64 },
    #[error("vhost-user backend at {socket}: queue {index} lies outside guest memory")]
    QueueAddress { socket: PathBuf, index: usize },
    #[error("vhost-user backend at {socket}: {got} queues and {kicks} kick eventfds for {calls} call eventfds")]
    Queues {
        socket: PathBuf,
        got: usize,
        kicks: usize,
        calls: usize,
    },
}

/// A negotiated connection to one backend.
pub struct Connection {
    frontend: Frontend,
    socket: PathBuf,
    /// What the backend offers (virtio feature bits, VHOST_USER_F_PROTOCOL_FEATURES included).
    backend_features: u64,
    /// Whether VHOST_USER_F_PROTOCOL_FEATURES is in use (rings then start disabled and are
    /// enabled with SET_VRING_ENABLE).
    protocol_features: bool,
    /// Queues handed to the backend by the last [`Connection::activate`].
    active_queues: Vec<usize>,
}

impl Connection {
    /// Connects to the backend at `socket`, takes ownership of it (SET_OWNER) and negotiates
    /// protocol features; the backend must serve at least `num_queues` queues.
    pub fn connect(socket: &Path, num_queues: usize) -> Result<Self, VhostUserError> {
        let mut frontend = Frontend::connect(socket, num_queues as u64).map_err(|source| {
            VhostUserError::Connect {
                socket: socket.to_path_buf(),
                source,
            }
        })?;
        let request = |step| {
            move |source| VhostUserError::Request {
                socket: socket.to_path_buf(),
                step,
                source,
            }
        };
        frontend.set_owner().map_err(request("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(request("GET_FEATURES"))?;
        let protocol_features =
            backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol_features {
            let offered = frontend
                .get_protocol_features()
                .map_err(request("GET_PROTOCOL_FEATURES"))?;
            let acked = offered & WANTED_PROTOCOL_FEATURES;
            frontend
                .set_protocol_features(acked)
                .map_err(request("SET_PROTOCOL_FEATURES"))?;
            if acked.contains(VhostUserProtocolFeatures::MQ) {
                let offered = frontend.get_queue_num().map_err(request("GET_QUEUE_NUM"))?;
                if offered < num_queues as u64 {
                    return Err(VhostUserError::QueueCount {
                        socket: socket.to_path_buf(),
                        offered,
                        needed: num_queues,
                    });
                }
            }
        }
        Ok(Connection {
            frontend,
            socket: socket.to_path_buf(),
            backend_features,
            protocol_features,
            active_queues: Vec::new(),
        })
    }

    /// The backend's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The virtio features the backend offers (without the vhost-user protocol bit, which is
    /// not the driver's to see).
    pub fn backend_features(&self) -> u64 {
        self.backend_features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// The descriptor of the control socket (to notice the backend hanging up).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.frontend)
    }

    fn request(&self, step: &'static str) -> impl FnOnce(vhost::Error) -> VhostUserError + '_ {
        move |source| VhostUserError::Request {
            socket: self.socket.clone(),
            step,
            source,
        }
    }

    /// Hands the driver's queues to the backend: the features the driver accepted, the guest
    /// memory table, then for each ready queue its size, ring addresses (as this process maps
    /// them), base index, call and kick eventfds, and enables it.
    pub fn activate(
        &mut self,
        mem: &GuestMemoryMmap,
        driver_features: u64,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), VhostUserError> {
        if queues.len() != kicks.len() || queues.len() != calls.len() {
            return Err(VhostUserError::Queues {
                socket: self.socket.clone(),
                got: queues.len(),
                kicks: kicks.len(),
                calls: calls.len(),
            });
        }
        let mut features = driver_features & self.backend_features();
        if self.protocol_features {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(features)
            .map_err(self.request("SET_FEATURES"))?;

        let regions = mem
            .iter()
            .map(|region| {
                VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|_| {
                    VhostUserError::PrivateMemory {
                        socket: self.socket.clone(),
                        addr: region.start_addr().0,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(self.request("SET_MEM_TABLE"))?;

        self.active_queues.clear();
        for (index, queue) in queues.iter().enumerate() {
            if !queue.ready() {
                continue;
            }
            let hva = |addr: GuestAddress| {
                // The transport checked that each ring lies inside guest memory.
                mem.get_host_address(addr).map(|p| p as u64).map_err(|_| {
                    VhostUserError::QueueAddress {
                        socket: self.socket.clone(),
                        index,
                    }
                })
            };
            let ring = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: hva(GuestAddress(queue.desc_table()))?,
                used_ring_addr: hva(GuestAddress(queue.used_ring()))?,
                avail_ring_addr: hva(GuestAddress(queue.avail_ring()))?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(index, queue.size())
                .map_err(self.request("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(index, &ring)
                .map_err(self.request("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, queue.next_avail())
                .map_err(self.request("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(index, &calls[index])
                .map_err(self.request("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(index, &kicks[index])
                .map_err(self.request("SET_VRING_KICK"))?;
            if self.protocol_features {
                self.frontend
                    .set_vring_enable(index, true)
                    .map_err(self.request("SET_VRING_ENABLE"))?;
            }
            self.active_queues.push(index);
        }
        Ok(())
    }

    /// Takes the queues back after a driver reset: GET_VRING_BASE stops each ring.
    pub fn reset(&mut self) -> Result<(), VhostUserError> {
        for index in std::mem::take(&mut self.active_queues) {
            if self.protocol_features {
                self.frontend
                    .set_vring_enable(index, false)
                    .map_err(self.request("SET_VRING_ENABLE"))?;
            }
            self.frontend
                .get_vring_base(index)
                .map_err(self.request("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixListener;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    // vhost-user request codes (the specification's "front-end message types").
    const GET_FEATURES: u32 = 1;
    const SET_FEATURES: u32 = 2;
    const SET_OWNER: u32 = 3;
    const SET_MEM_TABLE: u32 = 5;
    const SET_VRING_NUM: u32 = 8;
    const SET_VRING_ADDR: u32 = 9;
    const SET_VRING_BASE: u32 = 10;
    const GET_VRING_BASE: u32 = 11;
    const SET_VRING_KICK: u32 = 12;
    const SET_VRING_CALL: u32 = 13;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const GET_QUEUE_NUM: u32 = 17;
    const SET_VRING_ENABLE: u32 = 18;

    /// Offered by the fake backend: VERSION_1, EVENT_IDX and the protocol-features bit.
    const OFFERED: u64 = (1 << 32) | (1 << 29) | (1 << 30);

    /// One request as the backend received it.
    #[derive(Debug)]
    struct Request {
        code: u32,
        body: Vec<u8>,
        fds: usize,
    }

    impl Request {
        fn u64_at(&self, at: usize) -> u64 {
            u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap())
        }
    }

    /// A backend that answers the GET requests, records every request and stops at the first
    /// GET_VRING_BASE of queue 1 or at end of stream.
    fn fake_backend(listener: UnixListener) -> std::thread::JoinHandle<Vec<Request>> {
        std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut log = Vec::new();
            loop {
                let mut hdr = [0u8; 12];
                let mut fds = [-1; 8];
                let mut iov = [libc::iovec {
                    iov_base: hdr.as_mut_ptr().cast(),
                    iov_len: hdr.len(),
                }];
                // SAFETY: the iovec points at `hdr`, which outlives the call.
                let Ok((n, nfds)) = (unsafe { sock.recv_with_fds(&mut iov, &mut fds) }) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                for fd in &fds[..nfds] {
                    // SAFETY: received descriptors are ours to close.
                    drop(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
                let code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
                let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
                let mut body = vec![0u8; size];
                sock.read_exact(&mut body).unwrap();
                let reply = match code {
                    GET_FEATURES => Some(OFFERED.to_le_bytes().to_vec()),
                    // MQ only: no REPLY_ACK, so SET requests get no answer.
                    GET_PROTOCOL_FEATURES => Some(1u64.to_le_bytes().to_vec()),
                    GET_QUEUE_NUM => Some(2u64.to_le_bytes().to_vec()),
                    GET_VRING_BASE => Some(body[..4].iter().chain(&[0; 4]).copied().collect()),
                    _ => None,
                };
                if let Some(reply) = reply {
                    let mut msg = hdr[0..4].to_vec();
                    msg.extend_from_slice(&0x5u32.to_le_bytes()); // version 1, reply
                    msg.extend_from_slice(&(reply.len() as u32).to_le_bytes());
                    msg.extend_from_slice(&reply);
                    sock.write_all(&msg).unwrap();
                }
                let done = code == GET_VRING_BASE && body[..4] == [1, 0, 0, 0];
                log.push(Request {
                    code,
                    body,
                    fds: nfds,
                });
                if done {
                    break;
                }
            }
            log
        })
    }

    fn queue(mem: &GuestMemoryMmap, base: u64, ready: bool) -> Queue {
        let mut q = Queue::new(256).unwrap();
        q.set_size(64);
        q.try_set_desc_table_address(GuestAddress(base)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(base + 0x1000))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(base + 0x2000))
            .unwrap();
        q.set_ready(ready);
        assert!(!ready || q.is_valid(mem));
        q
    }

    fn socket_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("capsule-vu-{tag}-{}.sock", std::process::id()))
    }

    #[test]
    fn negotiates_then_hands_over_memory_and_ready_queues() {
        let path = socket_path("activate");
        let _ = std::fs::remove_file(&path);
        let backend = fake_backend(UnixListener::bind(&path).unwrap());
        let mut conn = Connection::connect(&path, 2).unwrap();
        assert_eq!(
            conn.backend_features(),
            (1 << 32) | (1 << 29),
            "the protocol-features bit is not the driver's"
        );
        let mem = crate::memory::create_shared_guest_memory(4).unwrap();
        let queues = [queue(&mem, 0x10000, true), queue(&mem, 0x20000, true)];
        let evts = || -> Vec<EventFd> { (0..2).map(|_| EventFd::new(0).unwrap()).collect() };
        let (kicks, calls) = (evts(), evts());
        // The driver accepted VERSION_1 only.
        conn.activate(&mem, 1 << 32, &queues, &kicks, &calls)
            .unwrap();
        conn.reset().unwrap();
        drop(conn);
        let log = backend.join().unwrap();
        let codes: Vec<u32> = log.iter().map(|r| r.code).collect();
        let per_queue = [
            SET_VRING_NUM,
            SET_VRING_ADDR,
            SET_VRING_BASE,
            SET_VRING_CALL,
            SET_VRING_KICK,
            SET_VRING_ENABLE,
        ];
        let mut want = vec![
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            GET_QUEUE_NUM,
            SET_FEATURES,
            SET_MEM_TABLE,
        ];
        want.extend(per_queue);
        want.extend(per_queue);
        want.extend([
            SET_VRING_ENABLE,
            GET_VRING_BASE,
            SET_VRING_ENABLE,
            GET_VRING_BASE,
        ]);
        assert_eq!(codes, want);

        let find = |code| log.iter().find(|r| r.code == code).unwrap();
        // The driver's features plus the protocol-features bit; the memory table is one
        // region (4 MiB at 0) with the memfd attached.
        assert_eq!(find(SET_FEATURES).u64_at(0), (1 << 32) | (1 << 30));
        let table = find(SET_MEM_TABLE);
        assert_eq!((table.body[0], table.fds), (1, 1));
        assert_eq!((table.u64_at(8), table.u64_at(16)), (0, 4 << 20));
        // Ring addresses are this process's mapping of the guest addresses.
        let addr = find(SET_VRING_ADDR);
        let hva = |gpa| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        assert_eq!(addr.u64_at(8), hva(0x10000), "descriptor table");
        assert_eq!(addr.u64_at(16), hva(0x12000), "used ring");
        assert_eq!(addr.u64_at(24), hva(0x11000), "available ring");
        assert_eq!(find(SET_VRING_KICK).fds, 1);
        assert_eq!(find(SET_VRING_CALL).fds, 1);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn private_memory_and_mismatched_eventfds_are_errors() {
        let path = socket_path("private");
        let _ = std::fs::remove_file(&path);
        let _backend = fake_backend(UnixListener::bind(&path).unwrap());
        let mut conn = Connection::connect(&path, 2).unwrap();
        let mem = crate::memory::create_guest_memory(4).unwrap();
        let queues = [queue(&mem, 0x10000, true), queue(&mem, 0x20000, false)];
        let evts = || -> Vec<EventFd> { (0..2).map(|_| EventFd::new(0).unwrap()).collect() };
        let err = conn
            .activate(&mem, 1 << 32, &queues, &evts(), &evts())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not file-backed"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        let err = conn
            .activate(&mem, 1 << 32, &queues, &evts(), &evts()[..1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("call eventfds"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
