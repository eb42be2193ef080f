//! Host-side harness shared by `cargo xtask` and the QEMU tests in `tests/`.
//!
//! - [`images`]: where the built kernel images live and how to make the
//!   PVH-only variant.
//! - [`machine`]: the QEMU command line for an appliance (disks, NICs,
//!   port forwards, boot protocol) as one description, used by `xtask run`
//!   and by every test.
//! - [`pxe`]: a TFTP folder with an iPXE script, the kernel and its config.
//! - [`serial`]: a running machine whose console we read and wait on.
//! - [`rig`]: the Linux guest rig (initiator and peer target) and its
//!   private network.

#![forbid(unsafe_code)]

pub mod images;
pub mod libiscsi;
pub mod machine;
pub mod pxe;
pub mod rig;
pub mod serial;

/// QEMU's isa-debug-exit status for `ExitCode::Success` in the kernel.
pub const EXIT_SUCCESS: i32 = 33;
/// QEMU's isa-debug-exit status for `ExitCode::Failure` in the kernel.
pub const EXIT_FAILURE: i32 = 35;

/// The line the kernel prints once it serves.
pub const READY: &str = "ironbay ready:";
