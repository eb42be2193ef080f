//! What the operator tells the appliance at boot.
//!
//! - [`cmdline`]: `key=value` options on the kernel command line, checked
//!   against a table of known options. Unknown keys and bad values become
//!   diagnostics for the console; parsing never fails as a whole.
//! - [`bootconfig`]: an SPDK-format JSON configuration file handed over as a
//!   boot module, validated into a list of method calls per subsystem.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod bootconfig;
pub mod cmdline;
pub mod net;

pub use bootconfig::{BootConfig, ConfigError, MethodCall, Subsystem};
pub use cmdline::{Cmdline, Diagnostic, OptionSpec};
