//! The ironbay appliance kernel.
//!
//! This crate is glue: it owns the privileged instructions, the memory map and
//! the devices, and hands bytes and block I/O to the host-tested crates that
//! hold the logic (`kernel/crates/*`, `boot/`). Built for `x86_64-unknown-none`
//! by `cargo xtask build`; on any other target it is an empty program so that
//! `cargo test --workspace` and clippy work on the host.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod acpi;
#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod blktest;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod drivers;
#[cfg(target_os = "none")]
mod init;
#[cfg(target_os = "none")]
mod mem;
#[cfg(target_os = "none")]
mod net;
#[cfg(target_os = "none")]
mod pci;
#[cfg(target_os = "none")]
mod persist;
#[cfg(target_os = "none")]
mod selftest;
#[cfg(target_os = "none")]
mod services;
#[cfg(target_os = "none")]
mod settings;
#[cfg(target_os = "none")]
mod storage;
#[cfg(target_os = "none")]
mod time;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("ironbay is a bare-metal kernel: build it with `cargo xtask build`.");
}
