//! Building the kernel image.

use crate::{cargo, prereq, sh, workspace_root};
use ironbay_tests::images;
use std::path::PathBuf;
use std::process::Command;

pub const TARGET: &str = "x86_64-unknown-none";

pub struct Images {
    pub kernel: PathBuf,
    pub pvh: PathBuf,
}

pub fn build(release: bool) -> Result<Images, String> {
    prereq::ensure_rust_target()?;
    let mut c = cargo();
    c.args(["build", "-p", "ironbay-kernel", "--target", TARGET]);
    if release {
        c.arg("--release");
    }
    sh(&mut c)?;
    let profile = if release { "release" } else { "debug" };
    let target = workspace_root().join("target");
    let built = target.join(TARGET).join(profile).join("ironbay");
    let kernel = target.join("ironbay.elf");
    // The shipped image carries no debug info; the full one stays for addr2line.
    let stripped = Command::new("objcopy")
        .args([
            "--strip-debug",
            &built.display().to_string(),
            &kernel.display().to_string(),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !stripped {
        std::fs::copy(&built, &kernel).map_err(|e| format!("copy kernel: {e}"))?;
    }
    let pvh = target.join("ironbay-pvh.elf");
    images::write_pvh_only(&kernel, &pvh).map_err(|e| format!("PVH-only image: {e}"))?;
    let file = std::fs::metadata(&kernel).map_err(|e| e.to_string())?.len();
    let loaded = loaded_size(&kernel).unwrap_or(0);
    println!(
        "kernel: {} ({} KiB file, {} KiB loaded incl. bss); symbols in {}",
        kernel.display(),
        file / 1024,
        loaded / 1024,
        built.display()
    );
    Ok(Images { kernel, pvh })
}

/// Sum of PT_LOAD memory sizes of an ELF64 file.
fn loaded_size(path: &std::path::Path) -> Option<u64> {
    let b = std::fs::read(path).ok()?;
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    let mut total = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? == 1 {
            total += u64_at(ph + 0x28)?;
        }
    }
    Some(total)
}
