//! The tiny freestanding test guests (`tests/guests/`, built by `tests/build.rs`), their inputs,
//! and the parser for the report lines they print on the serial console.
//!
//! Every guest prints lines starting with [`REPORT_PREFIX`]:
//! - `capsule-guest: ok <check>[: <detail>]`
//! - `capsule-guest: not ok <check>: <detail>`
//! - `capsule-guest: <key> <text>` (information, e.g. `e820 ...`, `cmdline ...`, `boot-path ...`)
//! - `capsule-guest: done` (last line of a guest that ran to its end)
//!
//! Other console lines (firmware, VMM) are ignored by the parser.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix of every line a test guest prints.
pub const REPORT_PREFIX: &str = "capsule-guest: ";

/// QEMU's exit status when a guest that ran to `done` with no failed check wrote to the
/// isa-debug-exit port (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`): (0x10 << 1) | 1.
pub const QEMU_EXIT_PASS: i32 = 33;
/// QEMU's exit status when the guest reported at least one failed check: (0x11 << 1) | 1.
pub const QEMU_EXIT_FAIL: i32 = 35;

/// The line the `hello` guest prints.
pub const HELLO_LINE: &str = "capsule-guest: hello from the capsule test guest";

/// One of the test guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// Prints [`HELLO_LINE`] and its boot path, then ends the VM.
    Hello,
    /// Checks the boot state (see [`BootExpect`]).
    BootCheck,
    /// Probes the virtio-mmio devices announced on the command line; expects
    /// `capsule.expect_virtio=<id>[,<id>...]`.
    VirtioProbe,
    /// Requests a reboot through the i8042 controller (and nothing else).
    Reboot,
    /// Loads an empty IDT and executes `ud2`: the CPU triple-faults.
    TripleFault,
    /// Jumps into unbacked MMIO space: KVM stops it with an internal (emulation) error.
    ExecMmio,
    /// Prints `capsule-guest: idle halting`, then halts forever (for the boot benchmark).
    Idle,
}

impl Guest {
    /// The guests that end the same way on every VMM (ExecMmio's end is KVM-specific; Idle never
    /// ends by itself).
    pub const ALL: [Guest; 5] = [
        Guest::Hello,
        Guest::BootCheck,
        Guest::VirtioProbe,
        Guest::Reboot,
        Guest::TripleFault,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Guest::Hello => "hello",
            Guest::BootCheck => "bootcheck",
            Guest::VirtioProbe => "virtio_probe",
            Guest::Reboot => "reboot",
            Guest::TripleFault => "triple_fault",
            Guest::ExecMmio => "exec_mmio",
            Guest::Idle => "idle",
        }
    }

    /// The ELF image with the Xen PVH note: a PVH-capable VMM enters at the 32-bit PVH entry.
    /// Its e_entry is the 64-bit Linux boot protocol entry.
    pub fn pvh(self) -> &'static Path {
        Path::new(match self {
            Guest::Hello => env!("CAPSULE_GUEST_HELLO"),
            Guest::BootCheck => env!("CAPSULE_GUEST_BOOTCHECK"),
            Guest::VirtioProbe => env!("CAPSULE_GUEST_VIRTIO_PROBE"),
            Guest::Reboot => env!("CAPSULE_GUEST_REBOOT"),
            Guest::TripleFault => env!("CAPSULE_GUEST_TRIPLE_FAULT"),
            Guest::ExecMmio => env!("CAPSULE_GUEST_EXEC_MMIO"),
            Guest::Idle => env!("CAPSULE_GUEST_IDLE"),
        })
    }

    /// The same guest without the PVH note: the VMM must use the 64-bit Linux boot protocol
    /// (e_entry, `%rsi` = boot_params).
    pub fn no_note(self) -> &'static Path {
        Path::new(match self {
            Guest::Hello => env!("CAPSULE_GUEST_HELLO_NONOTE"),
            Guest::BootCheck => env!("CAPSULE_GUEST_BOOTCHECK_NONOTE"),
            Guest::VirtioProbe => env!("CAPSULE_GUEST_VIRTIO_PROBE_NONOTE"),
            Guest::Reboot => env!("CAPSULE_GUEST_REBOOT_NONOTE"),
            Guest::TripleFault => env!("CAPSULE_GUEST_TRIPLE_FAULT_NONOTE"),
            Guest::ExecMmio => env!("CAPSULE_GUEST_EXEC_MMIO_NONOTE"),
            Guest::Idle => env!("CAPSULE_GUEST_IDLE_NONOTE"),
        })
    }
}

/// bootcheck with a test-only shim (`tests/guests/linux64_shim.c`): it boots through PVH, turns
/// the PVH start_info into a boot_params zero page and re-enters at the 64-bit entry. Lets a
/// PVH-only VMM (QEMU microvm) exercise the guests' 64-bit entry and boot_params decoding.
pub fn bootcheck_linux64_shim() -> &'static Path {
    Path::new(env!("CAPSULE_GUEST_BOOTCHECK_LINUX64_SHIM"))
}

/// The boot path a guest came in on, as bootcheck names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPath {
    /// Xen PVH: 32-bit entry from the ELF note, `hvm_start_info`.
    Pvh,
    /// 64-bit Linux boot protocol: ELF e_entry, boot_params zero page.
    Linux64,
}

impl BootPath {
    pub fn name(self) -> &'static str {
        match self {
            BootPath::Pvh => "pvh",
            BootPath::Linux64 => "linux64",
        }
    }
}

/// An initrd the test wrote, with the size and checksum bootcheck must find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestInitrd {
    pub path: PathBuf,
    pub size: u64,
    pub fnv1a32: u32,
}

/// What bootcheck is told to expect, on its kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootExpect {
    pub boot_path: BootPath,
    pub cpus: u32,
    pub mem_mib: u64,
    /// `None`: bootcheck checks that no initrd is announced.
    pub initrd: Option<TestInitrd>,
}

impl BootExpect {
    /// The command-line parameters that tell bootcheck what to expect, ending with the
    /// `capsule.end` sentinel (bootcheck checks it arrived, so truncation is caught).
    pub fn cmdline(&self) -> String {
        let mut s = format!(
            "capsule.expect_boot={} capsule.expect_cpus={} capsule.expect_mem_mib={}",
            self.boot_path.name(),
            self.cpus,
            self.mem_mib
        );
        if let Some(initrd) = &self.initrd {
            let _ = write!(
                s,
                " capsule.initrd_size={} capsule.initrd_sum={:#010x}",
                initrd.size, initrd.fnv1a32
            );
        }
        s.push_str(" capsule.end");
        s
    }

    /// The checks bootcheck must report as ok for these expectations.
    pub fn required_checks(&self) -> Vec<&'static str> {
        let mut checks = vec![
            "boot-info",
            "boot-path",
            "cmdline",
            "e820-count",
            "e820-order",
            "e820-low-ram",
            "e820-image",
            "e820-total",
            "initrd-present",
            "mptable-found",
            "mptable-table",
            "mptable-cpus",
        ];
        if self.initrd.is_some() {
            checks.extend(["initrd-size", "initrd-location", "initrd-checksum"]);
        }
        checks
    }

    /// Checks a bootcheck run: every required check ok, none failed, the guest reached `done`,
    /// and the command line it printed contains ours verbatim.
    pub fn verify(&self, report: &GuestReport) -> Result<(), String> {
        report.expect_all_ok(&self.required_checks())?;
        let ours = self.cmdline();
        match report.info("cmdline").next() {
            Some(seen) if seen.contains(&ours) => Ok(()),
            Some(seen) => Err(format!(
                "the command line the guest printed does not contain ours verbatim\n  \
                 guest: {seen}\n  ours:  {ours}"
            )),
            None => Err("the guest printed no command line".into()),
        }
    }
}

/// FNV-1a, 32-bit: the checksum bootcheck computes over the initrd.
pub fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Writes an initrd of `len` bytes of deterministic pseudo-random content (varied, so a
/// misplaced or shifted copy changes the checksum) and returns its expectations.
pub fn write_test_initrd(path: &Path, len: usize) -> Result<TestInitrd, String> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect();
    std::fs::write(path, &data).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(TestInitrd {
        path: path.to_owned(),
        size: len as u64,
        fnv1a32: fnv1a32(&data),
    })
}

/// One parsed report line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportLine {
    Ok { check: String, detail: String },
    NotOk { check: String, detail: String },
    Info { key: String, text: String },
    Done,
}

/// The report lines of one guest run, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    pub lines: Vec<ReportLine>,
}

impl GuestReport {
    /// Parses console text; lines without [`REPORT_PREFIX`] are skipped, `\r` is dropped.
    pub fn parse(console: &str) -> Self {
        let lines = console
            .lines()
            .filter_map(|line| {
                let line = line.trim_end_matches('\r');
                let rest = &line[line.find(REPORT_PREFIX)? + REPORT_PREFIX.len()..];
                Some(if rest == "done" {
                    ReportLine::Done
                } else if let Some(r) = rest.strip_prefix("not ok ") {
                    let (check, detail) = split_check(r);
                    ReportLine::NotOk { check, detail }
                } else if let Some(r) = rest.strip_prefix("ok ") {
                    let (check, detail) = split_check(r);
                    ReportLine::Ok { check, detail }
                } else {
                    let (key, text) = rest.split_once(' ').unwrap_or((rest, ""));
                    ReportLine::Info {
                        key: key.to_owned(),
                        text: text.to_owned(),
                    }
                })
            })
            .collect();
        GuestReport { lines }
    }

    /// Whether the guest printed `done`.
    pub fn done(&self) -> bool {
        self.lines.contains(&ReportLine::Done)
    }

    /// Names of the checks reported ok.
    pub fn passed(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                ReportLine::Ok { check, .. } => Some(check.as_str()),
                _ => None,
            })
            .collect()
    }

    /// (check, detail) of the checks reported not ok.
    pub fn failed(&self) -> Vec<(&str, &str)> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                ReportLine::NotOk { check, detail } => Some((check.as_str(), detail.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The texts of the information lines with this key.
    pub fn info<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.lines.iter().filter_map(move |l| match l {
            ReportLine::Info { key: k, text } if k == key => Some(text.as_str()),
            _ => None,
        })
    }

    /// Whether `check` was reported not ok (at least once).
    pub fn has_failure(&self, check: &str) -> bool {
        self.failed().iter().any(|(c, _)| *c == check)
    }

    /// Ok when the guest reached `done`, reported no failure, and reported every check in
    /// `required` as ok; otherwise an error listing what is wrong.
    pub fn expect_all_ok(&self, required: &[&str]) -> Result<(), String> {
        let mut problems = Vec::new();
        for (check, detail) in self.failed() {
            problems.push(format!("not ok {check}: {detail}"));
        }
        let passed = self.passed();
        for check in required {
            if !passed.contains(check) {
                problems.push(format!("check {check} was not reported ok"));
            }
        }
        if !self.done() {
            problems.push("the guest did not reach `done`".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

fn split_check(s: &str) -> (String, String) {
    let (check, detail) = s.split_once(": ").unwrap_or((s, ""));
    (check.to_owned(), detail.to_owned())
}

/// A scratch directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `$TMPDIR/capsule-test-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Result<Self, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("capsule-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ELF facts both boot paths rely on, read from the built images.
    struct ElfFacts {
        entry: u64,
        lowest_load: u64,
        pvh_entry: Option<u64>,
    }

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    fn elf_facts(path: &Path) -> ElfFacts {
        let b = std::fs::read(path).unwrap();
        assert_eq!(&b[..4], b"\x7fELF", "{}", path.display());
        assert_eq!(b[4], 2, "ELFCLASS64");
        assert_eq!(u16_at(&b, 18), 62, "EM_X86_64");
        let (phoff, phentsize, phnum) = (
            u64_at(&b, 32) as usize,
            u16_at(&b, 54) as usize,
            u16_at(&b, 56) as usize,
        );
        let mut lowest_load = u64::MAX;
        let mut pvh_entry = None;
        for i in 0..phnum {
            let ph = &b[phoff + i * phentsize..][..phentsize];
            let (p_type, offset, paddr, filesz) = (
                u32_at(ph, 0),
                u64_at(ph, 8) as usize,
                u64_at(ph, 24),
                u64_at(ph, 32) as usize,
            );
            if p_type == 1 {
                lowest_load = lowest_load.min(paddr);
            }
            if p_type == 4 {
                let mut n = &b[offset..offset + filesz];
                while n.len() >= 12 {
                    let (namesz, descsz, ty) = (u32_at(n, 0), u32_at(n, 4), u32_at(n, 8));
                    let name_end = 12 + (namesz as usize).div_ceil(4) * 4;
                    let desc = &n[name_end..name_end + descsz as usize];
                    if &n[12..12 + namesz as usize] == b"Xen\0" && ty == 18 {
                        pvh_entry = Some(u64_at(desc, 0));
                    }
                    n = &n[name_end + (descsz as usize).div_ceil(4) * 4..];
                }
            }
        }
        ElfFacts {
            entry: u64_at(&b, 24),
            lowest_load,
            pvh_entry,
        }
    }

    #[test]
    fn images_have_the_entries_each_boot_path_needs() {
        for guest in Guest::ALL {
            let pvh = elf_facts(guest.pvh());
            let bare = elf_facts(guest.no_note());
            for facts in [&pvh, &bare] {
                assert_eq!(facts.lowest_load, 0x10_0000, "{guest:?} is linked at 1 MiB");
                assert!(facts.entry > 0x10_0000, "{guest:?} has a 64-bit entry");
            }
            let pvh_entry = pvh.pvh_entry.expect("PVH build carries the Xen note");
            assert!((0x10_0000..1 << 32).contains(&pvh_entry));
            assert_ne!(
                pvh_entry, pvh.entry,
                "PVH entry differs from the 64-bit entry"
            );
            assert_eq!(
                bare.pvh_entry, None,
                "{guest:?} nonote build has no PVH note"
            );
        }
        assert!(elf_facts(bootcheck_linux64_shim()).pvh_entry.is_some());
    }

    #[test]
    fn fnv1a32_matches_reference_values() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn report_lines_parse() {
        let console = "firmware noise\r\n\
            capsule-guest: boot-path pvh (boot info at 0x1000)\r\n\
            capsule-guest: ok cmdline: 12 bytes at 0x2000\n\
            capsule-guest: not ok e820-total: 1 KiB of RAM: too little\n\
            capsule-guest: ok mptable-found\n\
            capsule-guest: done\n";
        let r = GuestReport::parse(console);
        assert_eq!(r.passed(), vec!["cmdline", "mptable-found"]);
        assert_eq!(r.failed(), vec![("e820-total", "1 KiB of RAM: too little")]);
        assert_eq!(
            r.info("boot-path").collect::<Vec<_>>(),
            vec!["pvh (boot info at 0x1000)"]
        );
        assert!(r.done());
        assert!(r.has_failure("e820-total"));
        let err = r.expect_all_ok(&["cmdline", "e820-order"]).unwrap_err();
        assert!(err.contains("not ok e820-total"), "{err}");
        assert!(err.contains("e820-order was not reported ok"), "{err}");
        assert!(GuestReport::parse("capsule-guest: ok a\n")
            .expect_all_ok(&["a"])
            .unwrap_err()
            .contains("did not reach `done`"));
    }

    #[test]
    fn boot_expect_cmdline_and_checks() {
        let e = BootExpect {
            boot_path: BootPath::Linux64,
            cpus: 2,
            mem_mib: 128,
            initrd: Some(TestInitrd {
                path: "x".into(),
                size: 10,
                fnv1a32: 0xab,
            }),
        };
        assert_eq!(
            e.cmdline(),
            "capsule.expect_boot=linux64 capsule.expect_cpus=2 capsule.expect_mem_mib=128 \
             capsule.initrd_size=10 capsule.initrd_sum=0x000000ab capsule.end"
        );
        assert!(e.required_checks().contains(&"initrd-checksum"));
        let no_initrd = BootExpect { initrd: None, ..e };
        assert!(!no_initrd.required_checks().contains(&"initrd-checksum"));
    }

    #[test]
    fn test_initrd_checksum_matches_content() {
        let dir = ScratchDir::new("initrd-unit").unwrap();
        let t = write_test_initrd(&dir.join("initrd"), 1000).unwrap();
        let data = std::fs::read(&t.path).unwrap();
        assert_eq!(data.len(), 1000);
        assert_eq!(fnv1a32(&data), t.fnv1a32);
        assert!(data.iter().any(|&b| b != data[0]), "content varies");
    }
}
