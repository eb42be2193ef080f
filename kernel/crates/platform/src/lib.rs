//! Platform logic that needs no privileged instruction: parsing ACPI tables,
//! walking PCI configuration space, managing physical frames, keeping the log
//! ring and converting clock readings. The kernel supplies the accessors
//! (physical memory reads, config-space ports or ECAM) and this crate does the
//! rest, so all of it is tested on the host against fakes and fixtures.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod frames;
pub mod logring;
pub mod pci;
pub mod time;

pub use ironbay_boot::PhysRead;
