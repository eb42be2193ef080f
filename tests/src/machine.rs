//! One description of an appliance VM, turned into a QEMU command line.

use std::path::PathBuf;
use std::process::Command;

/// Management services, forwarded from 127.0.0.1 by `xtask run`.
pub const MGMT_PORTS: &[(u16, &str)] = &[
    (5260, "SPDK JSON-RPC"),
    (18700, "targetd"),
    (9118, "REST"),
    (4444, "QMP"),
];
/// Data services, forwarded from 127.0.0.1 by `xtask run`.
pub const DATA_PORTS: &[(u16, &str)] = &[
    (10809, "NBD"),
    (3260, "iSCSI"),
    (4420, "NVMe/TCP"),
    (8009, "NVMe discovery"),
];

/// Which NIC a port forward goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nic {
    Mgmt,
    Data,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// Namespace `nsid` of NVMe controller number `controller`.
    Nvme {
        controller: u8,
        nsid: u32,
    },
    VirtioBlk,
}

#[derive(Clone, Debug)]
pub struct Disk {
    pub kind: DiskKind,
    pub path: PathBuf,
    /// Logical block size if not 512.
    pub block_size: Option<u32>,
}

impl Disk {
    pub fn nvme(controller: u8, nsid: u32, path: PathBuf) -> Self {
        Disk {
            kind: DiskKind::Nvme { controller, nsid },
            path,
            block_size: None,
        }
    }

    pub fn virtio(path: PathBuf) -> Self {
        Disk {
            kind: DiskKind::VirtioBlk,
            path,
            block_size: None,
        }
    }

    pub fn with_block_size(mut self, bs: u32) -> Self {
        self.block_size = Some(bs);
        self
    }
}

#[derive(Clone, Debug)]
pub enum Boot {
    /// `-kernel` (Multiboot, or PVH for an image without the Multiboot header).
    Kernel {
        image: PathBuf,
        append: String,
        config: Option<PathBuf>,
    },
    /// Network boot through QEMU's iPXE ROM from a TFTP folder.
    Pxe { tftp_dir: PathBuf },
}

#[derive(Clone, Debug)]
pub struct Machine {
    /// `q35` (PCIe, ECAM) or `pc` (i440FX, port I/O config space).
    pub machine_type: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub disks: Vec<Disk>,
    /// Management NIC and one data NIC, user networking.
    pub nics: bool,
    /// Forward the service ports from 127.0.0.1 (only one such VM at a time).
    pub forward_ports: bool,
    /// Extra forwards from 127.0.0.1: (NIC, host port, guest port).
    pub forwards: Vec<(Nic, u16, u16)>,
    /// Put the data NIC on this tap (in the caller's network namespace)
    /// instead of user networking.
    pub data_tap: Option<String>,
    pub boot: Boot,
    /// Exit on reset instead of rebooting (tests).
    pub no_reboot: bool,
    /// Serial multiplexed with the QEMU monitor on the terminal (Ctrl-A X quits).
    pub interactive: bool,
    pub extra: Vec<String>,
}

impl Machine {
    pub fn new(boot: Boot) -> Self {
        Machine {
            machine_type: "q35".into(),
            memory_mib: 512,
            cpus: 2,
            accel: Accel::Tcg,
            disks: Vec::new(),
            nics: true,
            forward_ports: false,
            forwards: Vec::new(),
            data_tap: None,
            boot,
            no_reboot: true,
            interactive: false,
            extra: Vec::new(),
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        let accel = match self.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        };
        // TCG's `max` CPU has SSE4.2 (hardware CRC32C); under KVM use the host's.
        let cpu = match self.accel {
            Accel::Tcg => "max",
            Accel::Kvm => "host",
        };
        push(&["-machine", &self.machine_type, "-accel", accel, "-cpu", cpu]);
        push(&[
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ]);
        let serial = if self.interactive {
            "mon:stdio"
        } else {
            "stdio"
        };
        push(&["-nodefaults", "-display", "none", "-serial", serial]);
        push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        if self.no_reboot {
            push(&["-no-reboot"]);
        }
        let mut controllers: Vec<u8> = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            let id = format!("disk{i}");
            let drive = format!("if=none,id={id},format=raw,file={}", d.path.display());
            let bs = d.block_size.map_or(String::new(), |b| {
                format!(",logical_block_size={b},physical_block_size={b}")
            });
            let dev = match d.kind {
                DiskKind::Nvme { controller, nsid } => {
                    if !controllers.contains(&controller) {
                        controllers.push(controller);
                        let ctrl =
                            format!("nvme,id=nvme{controller},serial=IRONBAY{controller:04}");
                        push(&["-device", &ctrl]);
                    }
                    format!("nvme-ns,drive={id},bus=nvme{controller},nsid={nsid}{bs}")
                }
                DiskKind::VirtioBlk => format!("virtio-blk-pci,drive={id}{bs}"),
            };
            push(&["-drive", &drive, "-device", &dev]);
        }
        let tftp = match &self.boot {
            Boot::Pxe { tftp_dir } => Some(tftp_dir),
            Boot::Kernel { .. } => None,
        };
        let fwd = |nic: Nic, ports: &[(u16, &str)]| -> String {
            let mut f = String::new();
            if self.forward_ports {
                for (p, _) in ports {
                    f.push_str(&format!(",hostfwd=tcp:127.0.0.1:{p}-:{p}"));
                }
            }
            for (n, host, guest) in &self.forwards {
                if *n == nic {
                    f.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
                }
            }
            f
        };
        if self.nics || tftp.is_some() {
            let mut mgmt = format!("user,id=mgmt,net=10.0.2.0/24{}", fwd(Nic::Mgmt, MGMT_PORTS));
            if let Some(dir) = tftp {
                mgmt.push_str(&format!(
                    ",tftp={},bootfile={}",
                    dir.display(),
                    crate::pxe::SCRIPT
                ));
            }
            push(&[
                "-netdev",
                &mgmt,
                "-device",
                "virtio-net-pci,netdev=mgmt,mac=52:54:00:1b:00:01",
            ]);
        }
        if self.nics {
            let data = match &self.data_tap {
                Some(tap) => format!("tap,id=data0,ifname={tap},script=no,downscript=no"),
                None => format!(
                    "user,id=data0,net=10.0.3.0/24{}",
                    fwd(Nic::Data, DATA_PORTS)
                ),
            };
            // No option ROM on the data NIC: network boot is the management NIC's job.
            push(&[
                "-netdev",
                &data,
                "-device",
                "virtio-net-pci,netdev=data0,mac=52:54:00:1b:01:01,romfile=",
            ]);
        }
        match &self.boot {
            Boot::Kernel {
                image,
                append,
                config,
            } => {
                push(&["-kernel", &image.display().to_string(), "-append", append]);
                if let Some(cfg) = config {
                    push(&["-initrd", &cfg.display().to_string()]);
                }
            }
            Boot::Pxe { .. } => push(&["-boot", "n"]),
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(qemu_binary());
        c.args(self.args());
        c
    }
}

pub fn qemu_binary() -> String {
    std::env::var("IRONBAY_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// Creates a sparse disk image of `size` bytes unless it exists.
pub fn sparse_disk(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?.set_len(size)
}

/// A TCP port on 127.0.0.1 free right now (for hostfwd in parallel tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
