//! Typed kernel settings from the command line, and the switches fatal paths read.

use alloc::string::String;
use core::sync::atomic::{AtomicBool, Ordering};
use ironbay_config::Cmdline;
use log::LevelFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrcChoice {
    Auto,
    Soft,
    Hardware,
}

pub struct Settings {
    pub log: LevelFilter,
    pub reboot_on_panic: bool,
    pub test: Option<String>,
    pub crc: CrcChoice,
    /// Benchmark jobs to run after ready.
    pub bench: Option<String>,
}

static REBOOT_ON_PANIC: AtomicBool = AtomicBool::new(false);
static TEST_MODE: AtomicBool = AtomicBool::new(false);

impl Settings {
    pub fn from_cmdline(c: &Cmdline) -> Self {
        let s = Settings {
            log: match c.get("log") {
                Some("error") => LevelFilter::Error,
                Some("warn") => LevelFilter::Warn,
                Some("debug") => LevelFilter::Debug,
                Some("trace") => LevelFilter::Trace,
                _ => LevelFilter::Info,
            },
            reboot_on_panic: c.get("panic") == Some("reboot"),
            test: c.get("test").map(String::from),
            crc: match c.get("crc") {
                Some("soft") => CrcChoice::Soft,
                Some("hw") => CrcChoice::Hardware,
                _ => CrcChoice::Auto,
            },
            bench: c.get("bench").map(String::from),
        };
        REBOOT_ON_PANIC.store(s.reboot_on_panic, Ordering::Relaxed);
        TEST_MODE.store(s.test.is_some(), Ordering::Relaxed);
        s
    }
}

pub fn reboot_on_panic() -> bool {
    REBOOT_ON_PANIC.load(Ordering::Relaxed)
}

pub fn test_mode() -> bool {
    TEST_MODE.load(Ordering::Relaxed)
}
