//! Builds the freestanding test guests in `guests/` with the system C compiler (gcc by default,
//! `CAPSULE_GUEST_CC` to override) into `OUT_DIR/guests/`, and exports each image's path to the
//! crate as `CAPSULE_GUEST_<NAME>` (PVH note, 32-bit PVH entry + 64-bit e_entry),
//! `CAPSULE_GUEST_<NAME>_NONOTE` (no PVH note: only the 64-bit Linux boot protocol entry) and
//! `CAPSULE_GUEST_BOOTCHECK_LINUX64_SHIM` (see guests/linux64_shim.c).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags required for the guests: no libc, no SSE/MMX (no FPU state set up), no red zone, fixed
/// addresses (linked at 1 MiB).
const CFLAGS: &[&str] = &[
    "-m64",
    "-std=gnu11",
    "-ffreestanding",
    "-nostdlib",
    "-static",
    "-fno-pic",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-mno-sse",
    "-mno-mmx",
    "-O2",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wa,--noexecstack",
];

const LDFLAGS: &[&str] = &[
    "-no-pie",
    "-Wl,--build-id=none",
    "-Wl,-z,max-page-size=4096",
];

/// Objects every guest links: entry code, runtime, boot-info decoding.
const RUNTIME: &[&str] = &["start.S", "runtime.c", "boot.c"];

/// (name used in file and env var names, main source file).
const GUESTS: &[(&str, &str)] = &[
    ("hello", "hello.c"),
    ("bootcheck", "bootcheck.c"),
    ("virtio_probe", "virtio_probe.c"),
    ("reboot", "reboot.c"),
    ("triple_fault", "triple_fault.c"),
    ("exec_mmio", "exec_mmio.c"),
    ("idle", "idle.c"),
    ("vsock_echo", "vsock_echo.c"),
    ("cpu_features", "cpu_features.c"),
];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src = manifest.join("guests");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("guests");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/guests");
    let cc = env::var("CAPSULE_GUEST_CC").unwrap_or_else(|_| "gcc".into());

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CAPSULE_GUEST_CC");
    for entry in std::fs::read_dir(&src).expect("read tests/guests") {
        let path = entry.expect("read tests/guests entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let compile = |file: &str| -> PathBuf {
        let obj = out.join(format!("{}.o", file.replace('.', "_")));
        run(Command::new(&cc)
            .args(CFLAGS)
            .arg("-I")
            .arg(&src)
            .arg("-c")
            .arg(src.join(file))
            .arg("-o")
            .arg(&obj));
        obj
    };
    let link = |name: &str, objects: &[&PathBuf]| -> PathBuf {
        let elf = out.join(format!("{name}.elf"));
        run(Command::new(&cc)
            .args(CFLAGS)
            .args(LDFLAGS)
            .arg(format!("-Wl,-T,{}", src.join("link.ld").display()))
            .args(objects)
            .arg("-o")
            .arg(&elf));
        elf
    };

    let runtime: Vec<PathBuf> = RUNTIME.iter().map(|f| compile(f)).collect();
    let note = compile("pvh_note.S");
    let shim = compile("linux64_shim.c");

    for (name, file) in GUESTS {
        let main = compile(file);
        let mut objects: Vec<&PathBuf> = runtime.iter().collect();
        objects.push(&main);
        let no_note = link(&format!("{name}-nonote"), &objects);
        objects.push(&note);
        let pvh = link(name, &objects);
        export(&format!("CAPSULE_GUEST_{}", name.to_uppercase()), &pvh);
        export(
            &format!("CAPSULE_GUEST_{}_NONOTE", name.to_uppercase()),
            &no_note,
        );
        if *name == "bootcheck" {
            objects.push(&shim);
            let shimmed = link("bootcheck-linux64-shim", &objects);
            export("CAPSULE_GUEST_BOOTCHECK_LINUX64_SHIM", &shimmed);
        }
    }
}

fn export(var: &str, path: &Path) {
    println!("cargo:rustc-env={var}={}", path.display());
}

fn run(cmd: &mut Command) {
    let output = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} to build the test guests ({e}); install gcc (build-essential) or \
             set CAPSULE_GUEST_CC",
            cmd.get_program()
        )
    });
    if !output.status.success() {
        panic!(
            "building a test guest failed: {:?} {:?}\n{}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
