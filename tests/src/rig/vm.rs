//! Rig guest VMs: boot the guest with a script and collect what it prints.

use super::guest::GuestImage;
use super::netns::Netns;
use crate::serial::Running;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const BEGIN: &str = "=====RIG-BEGIN=====";
pub const END: &str = "=====RIG-END rc=";

pub struct GuestVm {
    pub memory_mib: u32,
    pub cpus: u32,
    /// `rig.ip=` for eth0, e.g. `10.55.0.2/24`.
    pub ip: Option<String>,
    pub iqn: String,
    /// virtio-blk disks (raw files), `/dev/vda`, `/dev/vdb`, ... in order.
    pub disks: Vec<PathBuf>,
    pub script: PathBuf,
    /// Tap in the namespace; without one the guest gets QEMU user networking.
    pub tap: Option<String>,
    pub mac: String,
}

impl GuestVm {
    pub fn new(script: &Path) -> Self {
        GuestVm {
            memory_mib: 1024,
            cpus: 1,
            ip: None,
            iqn: "iqn.2004-10.org.ironbay:rig".into(),
            disks: Vec::new(),
            script: script.to_path_buf(),
            tap: None,
            mac: "52:54:00:1b:10:01".into(),
        }
    }

    pub fn command(&self, image: &GuestImage) -> Command {
        let mut c = Command::new(crate::machine::qemu_binary());
        c.args(["-machine", "q35", "-accel", "tcg", "-cpu", "max"]);
        c.args([
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ]);
        c.args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]);
        c.arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd);
        let mut append = format!("console=ttyS0 panic=-1 quiet rig.iqn={}", self.iqn);
        if let Some(ip) = &self.ip {
            append.push_str(&format!(" rig.ip={ip}"));
        }
        c.args(["-append", &append]);
        c.arg("-fw_cfg")
            .arg(format!("name=opt/run,file={}", self.script.display()));
        let netdev = match &self.tap {
            Some(tap) => format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            None => "user,id=n0".into(),
        };
        c.args([
            "-netdev",
            &netdev,
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={}", self.mac),
        ]);
        for (i, d) in self.disks.iter().enumerate() {
            c.args([
                "-drive",
                &format!("if=none,id=vd{i},format=raw,file={}", d.display()),
            ]);
            c.args(["-device", &format!("virtio-blk-pci,drive=vd{i}")]);
        }
        c
    }

    pub fn start(&self, image: &GuestImage, ns: Option<&Netns>) -> Result<Running, String> {
        let cmd = self.command(image);
        let cmd = match ns {
            Some(ns) => ns.wrap(&cmd),
            None => cmd,
        };
        Running::spawn(cmd).map_err(|e| format!("start guest: {e}"))
    }
}

/// Waits for the guest's script to finish; returns its exit code and output.
pub fn finish(vm: &mut Running, timeout: Duration) -> Result<(i32, String), String> {
    vm.wait_for(END, timeout)?;
    std::thread::sleep(Duration::from_millis(200));
    let out = vm.output();
    let body = out.split(BEGIN).nth(1).unwrap_or("");
    let (body, tail) = body.split_once(END).unwrap_or((body, ""));
    let rc = tail
        .split('=')
        .next()
        .and_then(|s| s.trim().trim_end_matches('=').parse().ok())
        .unwrap_or(-1);
    Ok((rc, body.to_string()))
}
