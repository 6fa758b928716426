//! Fuzzes the packet and descriptor-chain path of the vsock device core: the input becomes a
//! sequence of guest packets (well-formed and malformed), raw descriptor chains, rx buffers and
//! host socket actions (see `capsule_vsock::fuzzing`), with the device invariants checked
//! after each.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    capsule_vsock::fuzzing::run(data);
});
