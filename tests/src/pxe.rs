//! A TFTP folder that QEMU's built-in iPXE boots from.

use std::path::Path;

pub const SCRIPT: &str = "boot.ipxe";
pub const KERNEL: &str = "ironbay.elf";
pub const CONFIG: &str = "ironbay.json";

/// Writes `boot.ipxe`, the kernel and, if given, the boot config into `dir`.
/// iPXE's Multiboot loader takes the ELF64 through its address fields and
/// passes the config as the first module.
pub fn write_folder(
    dir: &Path,
    kernel: &Path,
    config: Option<&Path>,
    args: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(kernel, dir.join(KERNEL))?;
    let mut script = format!(
        "#!ipxe\necho ironbay: loading {KERNEL} over the network\nkernel {KERNEL} {args}\n"
    );
    if let Some(cfg) = config {
        std::fs::copy(cfg, dir.join(CONFIG))?;
        script.push_str(&format!("module {CONFIG}\n"));
    }
    script.push_str("boot\n");
    std::fs::write(dir.join(SCRIPT), script)
}
