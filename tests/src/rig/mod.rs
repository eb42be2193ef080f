//! The Linux guest rig: a small Linux VM built from Debian packages, used as a
//! real initiator (nvme-cli, open-iscsi, fio) and as a peer target (nvmet,
//! LIO), on a private network inside a network namespace the test creates.
//!
//! - [`guest`]: builds and caches the guest kernel + initramfs.
//! - [`cpio`]: the initramfs archive writer (newc format).
//! - [`netns`]: the namespace with a bridge and one tap per VM.
//! - [`vm`]: guest VMs running a script and reporting its output.
//! - [`fio`]: reading fio's terse output.
//! - [`stepped`]: an appliance and a guest script stopping at named steps.

pub mod cpio;
pub mod fio;
pub mod guest;
pub mod netns;
pub mod stepped;
pub mod vm;
