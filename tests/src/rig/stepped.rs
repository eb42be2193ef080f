//! An appliance and a rig guest running a script that stops at named steps
//! (`WAIT-<step>` on its console) until the test connects to its "go" port:
//! the shape of every rig test, with the namespace they share.

use super::netns::Netns;
use crate::READY;
use crate::images::{kernel, require};
use crate::machine::{Boot, Disk, Machine, Nic, free_port};
use crate::serial::Running;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// Addresses on the namespace's bridge.
pub const APPLIANCE_IP: &str = "10.55.0.10";
pub const GUEST_IP: &str = "10.55.0.2";
/// Where the guest script listens for "go" (its `step` function).
pub const GO_PORT: u16 = 7000;

/// Fields drop in order: the VMs before their namespace.
pub struct Stepped {
    pub guest: Option<Running>,
    pub appliance: Running,
    pub ns: Netns,
    /// The host port forwarded to the appliance's JSON-RPC.
    pub rpc: u16,
    pub started: Instant,
    /// How long one step may take the guest.
    pub step_timeout: Duration,
}

impl Stepped {
    /// Boots the appliance (1 GiB, `disks`) in namespace `ns` with its data
    /// NIC on the bridge at [`APPLIANCE_IP`], JSON-RPC forwarded, plus
    /// `append` on its command line and `forwards` of management ports;
    /// returns once it is ready, with no guest yet.
    pub fn boot(
        mut ns: Netns,
        disks: Vec<Disk>,
        append: &str,
        forwards: &[(u16, u16)],
        step_timeout: Duration,
    ) -> Stepped {
        let rpc = free_port();
        let mut m = Machine::new(Boot::Kernel {
            image: require(&kernel()),
            append: format!(
                "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip={APPLIANCE_IP}/24 {append}"
            ),
            config: None,
        });
        m.memory_mib = 1024;
        m.disks = disks;
        m.data_tap = Some(ns.add_tap().expect("a tap in the namespace"));
        m.forwards = vec![(Nic::Mgmt, rpc, 5260)];
        m.forwards.extend(
            forwards
                .iter()
                .map(|&(host, guest)| (Nic::Mgmt, host, guest)),
        );
        let started = Instant::now();
        let mut appliance = Running::spawn(ns.wrap(&m.command())).expect("start qemu");
        appliance
            .wait_for(READY, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        Stepped {
            guest: None,
            appliance,
            ns,
            rpc,
            started,
            step_timeout,
        }
    }

    pub fn output(&self) -> String {
        format!(
            "----- guest -----\n{}\n----- appliance -----\n{}",
            self.guest.as_ref().map(Running::output).unwrap_or_default(),
            self.appliance.output()
        )
    }

    pub fn fail(&self, what: &str) -> ! {
        panic!("{what}\n{}", self.output())
    }

    pub fn log(&self, what: &str) {
        println!("[{:6.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// `spdk-rpc` inside the namespace, where the RPC port is forwarded:
    /// its output.
    pub fn spdk_text(&self, args: &[&str]) -> String {
        let mut c = Command::new("spdk-rpc");
        c.args(["-s", "127.0.0.1", "-p", &self.rpc.to_string()])
            .args(args);
        let out = self
            .ns
            .wrap(&c)
            .output()
            .unwrap_or_else(|e| panic!("spdk-rpc (pip install spdk): {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            self.fail(&format!(
                "spdk-rpc {args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        text
    }

    /// `spdk-rpc`'s output as JSON (a bare string when it is not JSON).
    pub fn spdk(&self, args: &[&str]) -> Value {
        let text = self.spdk_text(args);
        let t = text.trim();
        if t.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string()))
        }
    }

    /// Waits until the guest prints `WAIT-<step>`.
    pub fn reach(&mut self, step: &str) {
        let needle = format!("WAIT-{step}\n");
        let timeout = self.step_timeout;
        let guest = self.guest.as_mut().expect("the guest runs");
        if let Err(e) = guest.wait_for(&needle, timeout) {
            panic!("{e}\n----- appliance -----\n{}", self.appliance.output());
        }
        self.log(&format!("guest at {step}"));
    }

    /// Lets the guest go on past `step`: connects to its port (retrying
    /// while its listener comes up).
    pub fn release(&self, step: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut c = Command::new("bash");
            c.args(["-c", &format!("echo go > /dev/tcp/{GUEST_IP}/{GO_PORT}")]);
            if self.ns.wrap(&c).output().is_ok_and(|o| o.status.success()) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("could not release the guest from {step}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Lets a test's own rig type (a [`Stepped`] in a field `s`, plus what the
/// test needs) be used as the [`Stepped`] itself.
#[macro_export]
macro_rules! stepped_rig {
    ($rig:ty) => {
        impl std::ops::Deref for $rig {
            type Target = $crate::rig::stepped::Stepped;
            fn deref(&self) -> &Self::Target {
                &self.s
            }
        }

        impl std::ops::DerefMut for $rig {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.s
            }
        }
    };
}
