//! Why a VM ended, and the process exit code and one-line message for each reason.

use std::fmt;

/// Exit codes of `capsule run`.
pub mod code {
    /// The guest powered off or asked to reboot: a clean end.
    pub const GUEST_EXIT: u8 = 0;
    /// The VMM failed, or its input was bad.
    pub const VMM_ERROR: u8 = 1;
    /// Command-line usage error (clap's convention).
    pub const USAGE: u8 = 2;
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN) or crashed.
    pub const GUEST_FAULT: u8 = 3;
    /// KVM could not run the guest (KVM_EXIT_INTERNAL_ERROR).
    pub const KVM_INTERNAL: u8 = 4;
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest requested a reboot (i8042 CPU reset or a KVM reset event). capsule does not
    /// restart guests: for a microVM, reboot means "done".
    Reboot,
    /// The guest powered off.
    PowerOff,
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault { vcpu: u8 },
    /// The guest reported a crash (KVM_SYSTEM_EVENT_CRASH).
    GuestCrash { vcpu: u8 },
    /// KVM_EXIT_INTERNAL_ERROR, e.g. an instruction KVM's emulator cannot handle.
    KvmInternalError {
        vcpu: u8,
        suberror: u32,
        rip: Option<u64>,
        insn: Vec<u8>,
    },
    /// The VMM itself failed while the VM ran.
    VmmError(String),
}

impl ExitReason {
    pub fn exit_code(&self) -> u8 {
        match self {
            ExitReason::Reboot | ExitReason::PowerOff => code::GUEST_EXIT,
            ExitReason::TripleFault { .. } | ExitReason::GuestCrash { .. } => code::GUEST_FAULT,
            ExitReason::KvmInternalError { .. } => code::KVM_INTERNAL,
            ExitReason::VmmError(_) => code::VMM_ERROR,
        }
    }
}

fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exception",
        3 => "delivery event",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reboot => write!(f, "guest requested a reboot; the VM ended"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::TripleFault { vcpu } => write!(
                f,
                "guest triple fault on vCPU {vcpu} (KVM_EXIT_SHUTDOWN): the guest hit an \
                 exception it could not handle"
            ),
            ExitReason::GuestCrash { vcpu } => write!(f, "guest reported a crash on vCPU {vcpu}"),
            ExitReason::KvmInternalError {
                vcpu,
                suberror,
                rip,
                insn,
            } => {
                write!(
                    f,
                    "KVM internal error on vCPU {vcpu}: {} (suberror {suberror})",
                    suberror_name(*suberror)
                )?;
                if let Some(rip) = rip {
                    write!(f, " at RIP {rip:#x}")?;
                }
                if !insn.is_empty() {
                    write!(f, ", instruction bytes:")?;
                    for b in insn {
                        write!(f, " {b:02x}")?;
                    }
                }
                Ok(())
            }
            ExitReason::VmmError(msg) => write!(f, "VMM error: {msg}"),
        }
    }
}

/// `e` and its causes on one line, `: `-separated: the message of an
/// [`ExitReason::VmmError`] or of a VM's status.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        assert_eq!(ExitReason::Reboot.exit_code(), 0);
        assert_eq!(ExitReason::TripleFault { vcpu: 0 }.exit_code(), 3);
        let e = ExitReason::KvmInternalError {
            vcpu: 1,
            suberror: 1,
            rip: Some(0xffff_ffff_8100_0000),
            insn: vec![0x0f, 0xae, 0x2f],
        };
        assert_eq!(e.exit_code(), 4);
        assert_eq!(
            e.to_string(),
            "KVM internal error on vCPU 1: emulation failure (suberror 1) at RIP \
             0xffffffff81000000, instruction bytes: 0f ae 2f"
        );
        assert!(ExitReason::TripleFault { vcpu: 0 }
            .to_string()
            .contains("triple fault"));
    }
}
