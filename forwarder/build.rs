//! Builds the XDP program (`bpf/director.bpf.c`) with clang when clang is there, and tells
//! the crate so (`cfg(director_bpf)`). Without clang the crate still builds; the daemon then
//! refuses `xdp = "native"` or `"generic"` with a message that says why. A program that
//! clang cannot compile fails the build: a broken program must not ship silently.
//!
//! `CLANG` names the compiler (default `clang`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(director_bpf)");
    println!("cargo::rerun-if-env-changed=CLANG");
    for f in [
        "bpf/director.bpf.c",
        "bpf/director.h",
        "bpf/fastpath.h",
        "bpf/nat.h",
        "bpf/dr.h",
        "bpf/tun.h",
        "bpf/fullnat.h",
        "bpf/ceiling.bpf.c",
    ] {
        println!("cargo::rerun-if-changed={f}");
    }
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    if Command::new(&clang).arg("--version").output().is_err() {
        println!(
            "cargo::warning=no {clang}: building without the XDP program (xdp = \"native\" \
             and \"generic\" will be refused); install clang to build it"
        );
        return;
    }
    // Debian's multiarch include directory (asm/types.h and friends) for the target.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let include = format!("-I/usr/include/{arch}-linux-gnu");
    for (src, obj) in [
        ("bpf/director.bpf.c", out.join("director.bpf.o")),
        ("bpf/ceiling.bpf.c", out.join("ceiling.bpf.o")),
    ] {
        let status = Command::new(&clang)
            .args([
                "-target", "bpf", "-O2", "-g", "-Wall", "-Werror", &include, "-c", src, "-o",
            ])
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {clang}: {e}"));
        assert!(status.success(), "{clang} failed to build {src} ({status})");
    }
    println!("cargo::rustc-cfg=director_bpf");
}
