//! Makes `porthole-sftp` a static executable, and only it.
//!
//! porthole-sftp runs inside instances whose images may have no libc and
//! no dynamic loader (busybox-static, distroless), so it must need nothing
//! from the image. Rust's own switch for that on glibc targets,
//! `-C target-feature=+crt-static`, can only be set for a whole build
//! (RUSTFLAGS or a per-target config), which would also make the setuid
//! shell, the keys hook and the NSS module static. And the musl target
//! cannot be installed where CI runs (no toolchain downloads).
//!
//! So for this one binary we ask the C compiler driver for a static PIE
//! (`-static-pie`: glibc's `rcrt1.o`, no ELF interpreter) and put first on
//! the linker's search path a directory of one-line linker scripts that
//! turn the shared libraries rustc names for glibc targets (`-lc`, `-lm`,
//! `-lgcc_s`, ...) into their static archives (`libc.a`, `libgcc_eh.a`, ...;
//! Debian's libc6-dev, gcc and libseccomp-dev ship them). GNU ld applies
//! every `-L` to every `-l` whatever their order, and looks for `libX.so`
//! before `libX.a`, so only this binary's link sees the scripts.
//! tests/sftp.rs checks the result has no ELF interpreter.

use std::path::PathBuf;

/// Shared library rustc (std, libc, libseccomp-sys) may name, and the
/// static archives standing in for it.
const SHIMS: [(&str, &str); 8] = [
    ("c", "libc.a"),
    ("m", "libm.a"),
    ("rt", "librt.a"),
    ("pthread", "libpthread.a"),
    ("dl", "libdl.a"),
    ("util", "libutil.a"),
    // The unwinder: its static flavour is libgcc_eh (plus libgcc).
    ("gcc_s", "libgcc_eh.a libgcc.a"),
    ("seccomp", "libseccomp.a"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.ends_with("-linux-gnu") {
        return;
    }
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let dir = out.join("static-shims");
    if std::fs::create_dir_all(&dir).is_err() {
        println!(
            "cargo:warning=porthole-sftp: cannot create {}",
            dir.display()
        );
        return;
    }
    for (lib, archives) in SHIMS {
        let script =
            format!("/* porthole build.rs: -l{lib} linked statically */\nGROUP ( {archives} )\n");
        if std::fs::write(dir.join(format!("lib{lib}.so")), script).is_err() {
            println!("cargo:warning=porthole-sftp: cannot write the lib{lib} shim");
            return;
        }
    }
    println!("cargo:rustc-link-arg-bin=porthole-sftp=-static-pie");
    println!("cargo:rustc-link-arg-bin=porthole-sftp=-L{}", dir.display());
}
