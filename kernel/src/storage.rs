//! Storage bring-up: finds NVMe and virtio-blk devices on PCI, attaches them,
//! creates the RAM and null bdevs the boot config asks for, and owns the
//! registry every target will use.

use crate::drivers::{nvme, virtio};
use crate::{mem, pci};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use ironbay_bdev::{BdevId, BlockDevice, IoCompletion, Registry};
use ironbay_config::{BootConfig, MethodCall};
use ironbay_nvme::{Controller, NvmeBdev, Options};
use ironbay_platform::pci::{Function, Size};
use ironbay_virtio_blk::VirtioBlk;

pub struct Storage {
    pub bdevs: Registry,
    /// The iSCSI part of the object model: nodes, groups, live sessions.
    pub iscsi: ironbay_iscsi::Target,
    /// The NVMe-oF part: subsystems, transport options, live controllers.
    pub nvmf: ironbay_nvmf::Target,
    pub hw: Hardware,
    completions: Vec<(BdevId, IoCompletion)>,
    /// Boot config calls held back until `framework_start_init`.
    pending: Vec<(String, MethodCall)>,
    /// The config's NBD calls, for the NBD target to run when it starts
    /// (after the bdevs they name exist).
    pub nbd_calls: Vec<MethodCall>,
    /// Where the configuration is saved (see `persist.rs`).
    pub config_store: ironbay_model::persist::ConfigStore,
    /// Logical volume stores, found by tasting at boot or made over the API.
    pub lvol: ironbay_model::lvol::Lvols,
    /// The targetd API's credentials and options.
    pub targetd: ironbay_model::targetd::Settings,
}

/// The NVMe controllers and virtio-blk devices found at boot, attached
/// (named) or not; JSON-RPC attaches and detaches them by PCI address.
#[derive(Default)]
pub struct Hardware {
    nvme: Vec<Slot<Rc<RefCell<Controller<nvme::Hal>>>>>,
    virtio: Vec<Slot<()>>,
}

/// A device found at boot: its PCI function, the name it is attached as
/// (if it is), and what the driver keeps across detach and attach.
struct Slot<T> {
    function: Function,
    name: Option<String>,
    device: T,
}

/// The detached device at `traddr`; `what` names the kind in errors.
fn free_slot<'s, T>(
    slots: &'s mut [Slot<T>],
    traddr: &str,
    what: &str,
) -> Result<&'s mut Slot<T>, String> {
    let e = slots
        .iter_mut()
        .find(|e| same_address(&e.function, traddr))
        .ok_or_else(|| format!("no {what} at {traddr}"))?;
    if let Some(current) = &e.name {
        return Err(format!("the {what} at {traddr} is attached as {current}"));
    }
    Ok(e)
}

/// The device attached as `name`.
fn named_slot<'s, T>(
    slots: &'s mut [Slot<T>],
    name: &str,
    what: &str,
) -> Result<&'s mut Slot<T>, String> {
    slots
        .iter_mut()
        .find(|e| e.name.as_deref() == Some(name))
        .ok_or_else(|| format!("no {what} named {name}"))
}

/// `0000:00:04.0` or `00:04.0`.
fn same_address(f: &Function, traddr: &str) -> bool {
    let full = format!("{}", f.bdf);
    full == traddr || full.get(5..) == Some(traddr)
}

/// Bdevs named `{controller}n{nsid}` for every namespace of `ctrl`.
fn expose_nvme(
    bdevs: &mut Registry,
    ctrl: &Rc<RefCell<Controller<nvme::Hal>>>,
    name: &str,
) -> Vec<String> {
    let (namespaces, queues) = {
        let c = ctrl.borrow();
        (c.namespaces.clone(), c.io_queues().max(1))
    };
    let mut names = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        let bdev = NvmeBdev::new(ctrl, name, ns, i % queues);
        let bdev_name = bdev.info().name.clone();
        match bdevs.add(alloc::boxed::Box::new(bdev)) {
            Ok(_) => names.push(bdev_name),
            Err(e) => log::error!("{bdev_name}: {e}"),
        }
    }
    names
}

/// Removes every bdev in `names`, or none if any is busy.
fn remove_all(bdevs: &mut Registry, names: &[String]) -> Result<(), String> {
    let ids: Vec<BdevId> = names.iter().filter_map(|n| bdevs.find(n)).collect();
    if let Some(busy) = ids.iter().find(|&&id| bdevs.in_flight(id) > 0) {
        let name = bdevs
            .info(*busy)
            .map(|b| b.name.clone())
            .unwrap_or_default();
        return Err(format!("{name} has I/O in flight"));
    }
    for id in ids {
        bdevs.remove(id).map_err(|e| format!("{e}"))?;
    }
    Ok(())
}

impl ironbay_rpc::Devices for Hardware {
    fn nvme_attach(
        &mut self,
        bdevs: &mut Registry,
        name: &str,
        traddr: &str,
    ) -> Result<Vec<String>, String> {
        let e = free_slot(&mut self.nvme, traddr, "NVMe controller")?;
        if self_name_taken(bdevs, name) {
            return Err(format!("bdevs named {name}n* already exist"));
        }
        let names = expose_nvme(bdevs, &e.device, name);
        e.name = Some(name.into());
        log::info!(
            "{name}: NVMe controller at {traddr} attached, bdevs {}",
            names.join(" ")
        );
        Ok(names)
    }

    fn nvme_detach(&mut self, bdevs: &mut Registry, name: &str) -> Result<(), String> {
        let e = named_slot(&mut self.nvme, name, "NVMe controller")?;
        let prefix = format!("{name}n");
        let names: Vec<String> = bdevs
            .ids()
            .filter_map(|id| bdevs.info(id))
            .filter(|b| b.product == "NVMe disk" && b.name.starts_with(&prefix))
            .map(|b| b.name.clone())
            .collect();
        remove_all(bdevs, &names)?;
        e.name = None;
        log::info!("{name}: NVMe controller detached");
        Ok(())
    }

    fn virtio_attach(
        &mut self,
        bdevs: &mut Registry,
        name: &str,
        traddr: &str,
    ) -> Result<Vec<String>, String> {
        let e = free_slot(&mut self.virtio, traddr, "virtio-blk device")?;
        if bdevs.find(name).is_some() {
            return Err(format!("a bdev named {name} already exists"));
        }
        // A fresh transport resets the device before the queues are set up again.
        let transport = virtio::transport(&e.function)?;
        let blk =
            VirtioBlk::<virtio::Hal, _>::new(transport, name).map_err(|err| format!("{err}"))?;
        bdevs
            .add(alloc::boxed::Box::new(blk))
            .map_err(|err| format!("{err}"))?;
        e.name = Some(name.into());
        Ok(alloc::vec![name.into()])
    }

    fn virtio_detach(&mut self, bdevs: &mut Registry, name: &str) -> Result<(), String> {
        let e = named_slot(&mut self.virtio, name, "virtio-blk device")?;
        remove_all(bdevs, &[name.into()])?;
        e.name = None;
        Ok(())
    }

    fn disks(&self, bdevs: &Registry) -> Vec<ironbay_model::rapiddisk::Disk> {
        let mut out = Vec::new();
        for e in &self.nvme {
            let Some(name) = &e.name else { continue };
            let (vendor, model) = {
                let c = e.device.borrow();
                (vendor_name(c.identity.vendor), c.identity.model.clone())
            };
            let prefix = format!("{name}n");
            for b in bdevs.ids().filter_map(|id| bdevs.info(id)) {
                if b.product == "NVMe disk" && b.name.starts_with(&prefix) {
                    out.push(ironbay_model::rapiddisk::Disk {
                        name: b.name.clone(),
                        size: b.size_bytes(),
                        vendor: vendor.clone(),
                        model: model.clone(),
                    });
                }
            }
        }
        for e in &self.virtio {
            let Some(b) = e
                .name
                .as_ref()
                .and_then(|n| bdevs.find(n))
                .and_then(|id| bdevs.info(id))
            else {
                continue;
            };
            out.push(ironbay_model::rapiddisk::Disk {
                name: b.name.clone(),
                size: b.size_bytes(),
                vendor: vendor_name(e.function.vendor),
                model: "Virtio Block Device".into(),
            });
        }
        out
    }

    fn memory(&self) -> (u64, u64) {
        use ironbay_bdev::PagePool;
        let free = crate::mem::pages::FramePages.free_bytes() + mem::heap_stats().free() as u64;
        (mem::usable_bytes(), free)
    }
}

/// A PCI vendor ID as a name where it is a well-known storage vendor.
fn vendor_name(id: u16) -> String {
    match id {
        0x1af4 | 0x1b36 => "Red Hat".into(),
        0x8086 => "Intel".into(),
        0x144d => "Samsung".into(),
        0x1344 => "Micron".into(),
        0x15b7 => "Sandisk".into(),
        0x1c5c => "SK hynix".into(),
        0x1e0f => "KIOXIA".into(),
        0x1179 => "Toshiba".into(),
        0x126f => "Silicon Motion".into(),
        0x1987 => "Phison".into(),
        _ => format!("{id:#06x}"),
    }
}

fn self_name_taken(bdevs: &Registry, controller: &str) -> bool {
    let prefix = format!("{controller}n");
    bdevs
        .ids()
        .filter_map(|id| bdevs.info(id))
        .any(|b| b.name.starts_with(&prefix))
}

impl Storage {
    /// Runs boot config calls through the JSON-RPC method table.
    /// `held`: heap the caller knows will be taken soon (RAM bdevs may not
    /// use it).
    fn apply(&mut self, calls: Vec<(String, MethodCall)>, initialized: bool, held: u64) {
        let (mut initialized, mut shutdown) = (initialized, false);
        for (subsystem, call) in calls {
            if subsystem == "nbd" {
                self.nbd_calls.push(call);
                continue;
            }
            let heap = mem::heap_stats();
            let mut model = ironbay_rpc::Model {
                bdevs: &mut self.bdevs,
                devices: Some(&mut self.hw),
                nbd: None,
                iscsi: Some(&mut self.iscsi),
                nvmf: Some(&mut self.nvmf),
                memory_budget: heap.ram_bdev_budget().saturating_sub(held),
                initialized: &mut initialized,
                shutdown: &mut shutdown,
                bench: None,
                config_store: None,
                lvol: Some(&mut self.lvol),
                targetd: Some(&mut self.targetd),
            };
            match ironbay_rpc::methods::call(&mut model, &call.method, &call.params) {
                Ok(r) => log::info!("{subsystem}: {} -> {r}", call.method),
                Err(e) => log::error!("{subsystem}: {} failed: {}", call.method, e.message),
            }
        }
    }

    /// The object model over this storage, as a management front end sees
    /// it.
    pub fn model<'a>(
        &'a mut self,
        nbd: Option<&'a mut ironbay_nbd::Exports>,
        initialized: &'a mut bool,
        shutdown: &'a mut bool,
        bench: Option<&'a mut Option<ironbay_bdev::bench::BenchSpec>>,
    ) -> ironbay_rpc::Model<'a> {
        ironbay_rpc::Model {
            bdevs: &mut self.bdevs,
            devices: Some(&mut self.hw),
            nbd,
            iscsi: Some(&mut self.iscsi),
            nvmf: Some(&mut self.nvmf),
            memory_budget: mem::heap_stats().ram_bdev_budget(),
            initialized,
            shutdown,
            bench,
            config_store: Some(&mut self.config_store),
            lvol: Some(&mut self.lvol),
            targetd: Some(&mut self.targetd),
        }
    }

    /// `framework_start_init` arrived: the held-back boot config runs now.
    pub fn finish_init(&mut self) {
        let calls = core::mem::take(&mut self.pending);
        log::info!("framework_start_init: {} boot config calls", calls.len());
        self.apply(calls, true, 0);
    }

    /// Polls every device once; completions land in `out`.
    pub fn poll(&mut self, out: &mut Vec<(BdevId, IoCompletion)>) -> usize {
        self.bdevs.poll(crate::time::uptime_us(), out)
    }

    /// Runs one request to completion; `None` on timeout. For start-up and
    /// self-tests: nothing else may be in flight, since other completions of
    /// the same polls are dropped.
    pub fn run(
        &mut self,
        id: BdevId,
        op: ironbay_bdev::IoOp,
        timeout_us: u64,
    ) -> Option<IoCompletion> {
        let now = crate::time::uptime_us;
        let deadline = now() + timeout_us;
        let mut pending = Some(ironbay_bdev::IoRequest {
            tag: u64::MAX,
            op,
            fua: false,
        });
        let mut out = core::mem::take(&mut self.completions);
        let mut result = None;
        while now() < deadline {
            if let Some(req) = pending.take()
                && let Err(back) = self.bdevs.submit(id, req, now())
            {
                pending = Some(back);
            }
            out.clear();
            self.poll(&mut out);
            if pending.is_none()
                && let Some(i) = out.iter().position(|(i, c)| *i == id && c.tag == u64::MAX)
            {
                result = Some(out.swap_remove(i).1);
                break;
            }
        }
        self.completions = out;
        result
    }

    /// Flushes every bdev with a volatile write cache (before power-off),
    /// then has the volume stores save their bitmaps and record a clean
    /// shutdown (last: nothing writes to a volume after it).
    pub fn flush_all(&mut self) {
        let ids: Vec<BdevId> = self.bdevs.ids().collect();
        for id in ids {
            if self.bdevs.info(id).is_some_and(|b| b.write_cache) {
                let name = self
                    .bdevs
                    .info(id)
                    .map(|b| b.name.clone())
                    .unwrap_or_default();
                match self.run(id, ironbay_bdev::IoOp::Flush, 10_000_000) {
                    Some(c) if c.status.is_ok() => log::info!("{name}: flushed"),
                    _ => log::error!("{name}: flush failed"),
                }
            }
        }
        for p in self.lvol.close_all(&self.bdevs) {
            log::error!("{p}");
        }
    }

    pub fn nvme_controllers(&self) -> usize {
        self.hw.nvme.len()
    }
}

fn is_virtio_blk(f: &Function) -> bool {
    f.vendor == 0x1af4 && matches!(f.device, 0x1001 | 0x1042)
}

/// Finds the disks and applies the boot config. With `wait_for_init` only
/// the config's startup methods run now; the rest waits for
/// `framework_start_init` (SPDK's `--wait-for-rpc`).
pub fn init(
    devices: &[Function],
    config: Option<&BootConfig>,
    wait_for_init: bool,
    store: &crate::persist::Options,
) -> Storage {
    let mut s = Storage {
        bdevs: {
            let mut r = Registry::new();
            r.set_page_pool(alloc::rc::Rc::new(crate::mem::pages::FramePages));
            r
        },
        iscsi: ironbay_iscsi::Target::default(),
        nvmf: ironbay_nvmf::Target::new(ironbay_nvmf::Config::default()),
        hw: Hardware::default(),
        completions: Vec::new(),
        pending: Vec::new(),
        nbd_calls: Vec::new(),
        config_store: crate::persist::new_store(),
        lvol: ironbay_model::lvol::Lvols::new(crate::time::uptime_us, crate::arch::cpu::rdtsc()),
        targetd: ironbay_model::targetd::Settings::new(
            crate::arch::cpu::rdrand().unwrap_or_else(crate::arch::cpu::rdtsc),
        ),
    };
    let (mut nvme_index, mut virtio_index) = (0, 0);
    for f in devices {
        if f.is_nvme() {
            if let Err(e) = attach_nvme(&mut s, f, nvme_index) {
                log::error!("Nvme{nvme_index} at {}: {e}; controller left alone", f.bdf);
            }
            nvme_index += 1;
        } else if is_virtio_blk(f) {
            let name = format!("VirtioBlk{virtio_index}");
            let attached = match attach_virtio_blk(&mut s, f, &name) {
                Ok(()) => Some(name),
                Err(e) => {
                    log::error!("{name} at {}: {e}; device left alone", f.bdf);
                    None
                }
            };
            s.hw.virtio.push(Slot {
                function: f.clone(),
                name: attached,
                device: (),
            });
            virtio_index += 1;
        }
    }
    // Stores come back by themselves, before the config that may export
    // their volumes; the config area is then looked for on every bdev,
    // volumes included.
    for line in s.lvol.taste(&mut s.bdevs) {
        log::info!("{line}");
    }
    let chosen = crate::persist::choose(&mut s, store, config);
    if let Some(cfg) = chosen.as_ref() {
        let (now, later): (Vec<_>, Vec<_>) = cfg
            .calls()
            .map(|(sub, c)| (String::from(sub), c.clone()))
            .partition(|(_, c)| {
                !wait_for_init || ironbay_rpc::methods::lookup(&c.method).is_some_and(|m| m.startup)
            });
        // The target services allocate their socket buffers after the boot
        // config has run: keep RAM bdevs out of that memory.
        s.apply(now, !wait_for_init, crate::services::SOCKET_MEMORY as u64);
        s.pending = later;
    }
    if !wait_for_init {
        crate::persist::save_storage(&mut s, None, true);
    }
    log::info!("{} block devices:", s.bdevs.ids().count());
    for id in s.bdevs.ids() {
        let Some(b) = s.bdevs.info(id) else { continue };
        log::info!(
            "  bdev {}: {} bytes ({} x {} B, {}), {}, uuid {}, io {}, qd {}, max io {}{}",
            b.name,
            b.size_bytes(),
            b.num_blocks,
            b.block_size,
            Size(b.size_bytes()),
            b.product,
            b.uuid,
            b.io_types,
            b.queue_depth,
            Size(b.max_transfer as u64),
            if b.read_only { ", read-only" } else { "" }
        );
    }
    s
}

fn attach_nvme(s: &mut Storage, f: &Function, index: usize) -> Result<(), String> {
    let bar = f.bar(0).ok_or("no BAR0")?;
    pci::enable_dma(f);
    let base = mem::map_mmio(bar.base, bar.size).map_err(|e| format!("map BAR0: {e:?}"))?;
    // SAFETY: BAR0 of this controller was just mapped uncached, and this
    // driver is the only one that touches the device.
    let hal = unsafe { nvme::Hal::new(base, bar.size) };
    let ctrl = Controller::init(hal, Options::default()).map_err(|e| format!("{e}"))?;
    let id = &ctrl.identity;
    log::info!(
        "Nvme{index} at {}: {} (serial {}, firmware {}), NVMe {}.{}, {} I/O queues of {}, max transfer {}, {} namespaces",
        f.bdf,
        id.model,
        id.serial,
        id.firmware,
        ctrl.version >> 16,
        (ctrl.version >> 8) & 0xff,
        ctrl.io_queues(),
        ctrl.io_depth(),
        Size(ctrl.max_transfer() as u64),
        ctrl.namespaces.len()
    );
    for note in &ctrl.notes {
        log::warn!("Nvme{index}: {note}");
    }
    let ctrl = Rc::new(RefCell::new(ctrl));
    let name = format!("Nvme{index}");
    expose_nvme(&mut s.bdevs, &ctrl, &name);
    s.hw.nvme.push(Slot {
        function: f.clone(),
        name: Some(name),
        device: ctrl,
    });
    Ok(())
}

fn attach_virtio_blk(s: &mut Storage, f: &Function, name: &str) -> Result<(), String> {
    let transport = virtio::transport(f)?;
    let blk = VirtioBlk::<virtio::Hal, _>::new(transport, name).map_err(|e| format!("{e}"))?;
    log::info!(
        "{name} at {}: virtio-blk, features {:?}",
        f.bdf,
        blk.features_summary()
    );
    s.bdevs
        .add(alloc::boxed::Box::new(blk))
        .map_err(|e| format!("{e}"))?;
    Ok(())
}
