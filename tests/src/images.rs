//! Kernel images produced by `cargo xtask build`.

use std::path::{Path, PathBuf};

/// The workspace `target/` directory.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// The kernel with both the Multiboot header and the PVH note.
pub fn kernel() -> PathBuf {
    std::env::var_os("IRONBAY_KERNEL")
        .map_or_else(|| target_dir().join("ironbay.elf"), PathBuf::from)
}

/// The same kernel with its Multiboot header removed, so loaders that prefer
/// Multiboot (QEMU does) take the PVH entry.
pub fn kernel_pvh() -> PathBuf {
    target_dir().join("ironbay-pvh.elf")
}

/// The Multiboot1 header magic as it sits in the file.
const MB_MAGIC: [u8; 4] = 0x1BAD_B002u32.to_le_bytes();
/// Multiboot requires its header in the first 8 KiB.
const MB_SEARCH: usize = 8192;

/// Writes a copy of `elf` without its Multiboot header magic.
pub fn write_pvh_only(elf: &Path, out: &Path) -> std::io::Result<()> {
    let mut bytes = std::fs::read(elf)?;
    let end = bytes.len().min(MB_SEARCH);
    let pos = (0..end.saturating_sub(3))
        .step_by(4)
        .find(|&i| bytes[i..i + 4] == MB_MAGIC)
        .ok_or_else(|| std::io::Error::other("no Multiboot header in the first 8 KiB"))?;
    bytes[pos..pos + 4].fill(0);
    std::fs::write(out, bytes)
}

/// The file must exist; otherwise explain how to make it.
pub fn require(path: &Path) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run the QEMU tests through `cargo xtask test`, which builds the kernel",
        path.display()
    );
    path.to_path_buf()
}
