//! KVM state: the VM (memory slots, interrupt controller, irqfds) and its vCPUs.

pub mod vcpu;
pub mod vm;
