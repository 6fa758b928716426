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
