//! The NVMe bdev module's global settings (SPDK's `bdev_nvme_set_options`
//! and `bdev_nvme_set_hotplug`), as plain data the [`Registry`] keeps.
//!
//! The appliance's NVMe driver does not act on them: it has its own fixed
//! timeouts and polls its queues from the run loop, and PCIe devices are
//! found once at boot (hot-plug needs the PCIe hot-plug machinery the
//! appliance does not drive). They are kept, validated by the object model,
//! so a configuration written for SPDK applies and a saved configuration
//! round-trips.
//!
//! [`Registry`]: crate::Registry

/// What to do when an NVMe command times out (SPDK's `action_on_timeout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeoutAction {
    #[default]
    None,
    Reset,
    Abort,
}

impl TimeoutAction {
    pub fn name(self) -> &'static str {
        match self {
            TimeoutAction::None => "none",
            TimeoutAction::Reset => "reset",
            TimeoutAction::Abort => "abort",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(TimeoutAction::None),
            "reset" => Some(TimeoutAction::Reset),
            "abort" => Some(TimeoutAction::Abort),
            _ => None,
        }
    }
}

/// `bdev_nvme_set_options`, at SPDK's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmeOptions {
    pub action_on_timeout: TimeoutAction,
    /// I/O command timeout; 0: not tracked.
    pub timeout_us: u64,
    /// Admin command timeout; 0: as `timeout_us`.
    pub timeout_admin_us: u64,
    pub keep_alive_timeout_ms: u32,
    /// Attempts per I/O at the transport (`retry_count` in the seed).
    pub transport_retry_count: u32,
    /// Retries of failed I/O in the bdev module; -1: for ever.
    pub bdev_retry_count: i32,
    pub nvme_adminq_poll_period_us: u64,
    /// 0: poll the I/O queues on every pass.
    pub nvme_ioq_poll_period_us: u64,
    /// Requests per I/O queue; 0: the driver's default.
    pub io_queue_requests: u32,
    pub delay_cmd_submit: bool,
}

impl Default for NvmeOptions {
    fn default() -> Self {
        NvmeOptions {
            action_on_timeout: TimeoutAction::None,
            timeout_us: 0,
            timeout_admin_us: 0,
            keep_alive_timeout_ms: 10_000,
            transport_retry_count: 4,
            bdev_retry_count: 3,
            nvme_adminq_poll_period_us: 10_000,
            nvme_ioq_poll_period_us: 0,
            io_queue_requests: 0,
            delay_cmd_submit: true,
        }
    }
}

/// `bdev_nvme_set_hotplug`: off by default, as in SPDK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmeHotplug {
    pub enabled: bool,
    pub period_us: u64,
}

impl NvmeHotplug {
    /// SPDK's poll period when none (or 0) is given.
    pub const DEFAULT_PERIOD_US: u64 = 100_000;
    /// SPDK's longest poll period.
    pub const MAX_PERIOD_US: u64 = 10_000_000;
}

impl Default for NvmeHotplug {
    fn default() -> Self {
        NvmeHotplug {
            enabled: false,
            period_us: NvmeHotplug::DEFAULT_PERIOD_US,
        }
    }
}

/// Both, as the registry keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmeSettings {
    pub options: NvmeOptions,
    pub hotplug: NvmeHotplug,
}
