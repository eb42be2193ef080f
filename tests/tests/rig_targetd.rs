//! targetd exports under a real Linux initiator: the rig's guest (open-iscsi,
//! two ifaces with two initiator names) against the appliance on a bridge in
//! our own network namespace; the test plays targetd's client (curl, Basic
//! auth, JSON-RPC) between the guest's steps (tests/scripts/targetd-guest.sh).
//!
//! 1. A pool, two volumes made with `vol_create` (64 and 32 MiB), each
//!    exported as LUN 0 to one initiator name, CHAP (mutual) for the first
//!    with `initiator_set_auth`: each initiator sees only its own LUN 0;
//!    no CHAP, a wrong secret and a wrong expected target secret are all
//!    refused; ext4 with files through the first volume, fsck clean.
//! 2. `vol_copy` of it, exported to the second initiator as LUN 1: it sees
//!    two LUNs now, and the copy holds the same files.
//!
//! Needs root for the namespace. Run by `cargo xtask test`.

use ironbay_tests::images::target_dir;
use ironbay_tests::machine::{Disk, free_port};
use ironbay_tests::rig::stepped::{GUEST_IP, Stepped};
use ironbay_tests::rig::{guest, netns::Netns, vm};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const STEP_TIMEOUT: Duration = Duration::from_secs(900);
const PASSWORD: &str = "rig-targetd-pw";
const TARGET: &str = "iqn.2003-01.org.example.mach1:1234";
const IA: &str = "iqn.1994-05.com.domain:01.alpha";
const IB: &str = "iqn.1994-05.com.domain:01.bravo";

struct Rig {
    s: Stepped,
    targetd: u16,
}

ironbay_tests::stepped_rig!(Rig);

impl Rig {
    fn post(&self, port: u16, url_path: &str, auth: bool, body: &Value) -> Value {
        let mut c = Command::new("curl");
        c.args(["-s", "-m", "300"]);
        if auth {
            c.args(["-u", &format!("admin:{PASSWORD}")]);
        }
        c.args([
            "-d",
            &body.to_string(),
            &format!("http://127.0.0.1:{port}{url_path}"),
        ]);
        let out = self.ns.wrap(&c).output().expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            self.fail(&format!(
                "{body}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
    }

    /// A targetd call that must work.
    fn td(&self, method: &str, params: Value) -> Value {
        let v = self.post(
            self.targetd,
            "/targetrpc",
            true,
            &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
        );
        if v.get("error").is_some() {
            self.fail(&format!("{method} {params}: {v}"));
        }
        v["result"].clone()
    }

    /// A JSON-RPC call on 5260 that must work.
    fn rpc(&self, method: &str, params: Value) -> Value {
        // Raw JSON over TCP, inside the namespace: a few lines of Python.
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let code = [
            "import json,socket,sys",
            "s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=120)",
            "s.sendall(sys.argv[2].encode())",
            "b=b''",
            "while True:",
            "    c=s.recv(65536)",
            "    if not c: break",
            "    b+=c",
            "    try:",
            "        json.loads(b); break",
            "    except ValueError: pass",
            "print(b.decode())",
        ]
        .join("\n");
        let mut c = Command::new("python3");
        c.args(["-c", &code, &self.rpc.to_string(), &req.to_string()]);
        let out = self.ns.wrap(&c).output().expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: Value = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| {
                self.fail(&format!(
                    "{method}: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            });
        if v.get("error").is_some() {
            self.fail(&format!("{method}: {v}"));
        }
        v["result"].clone()
    }
}

#[test]
#[ignore = "boots the appliance and a Linux guest in a network namespace; run through cargo xtask test"]
fn linux_initiators_see_their_own_exports_with_chap_and_a_copy() {
    let image =
        guest::build(&target_dir().join("rig")).unwrap_or_else(|e| panic!("rig guest: {e}"));
    let dir = ironbay_tests::scratch("rig-targetd");
    let disk = dir.join("nvme.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();

    let ns = Netns::create("tdrig").unwrap_or_else(|e| panic!("{e}"));
    let targetd = free_port();
    let mut rig = Rig {
        s: Stepped::boot(
            ns,
            vec![Disk::nvme(0, 1, disk)],
            &format!("targetd.password={PASSWORD}"),
            &[(targetd, 18700)],
            STEP_TIMEOUT,
        ),
        targetd,
    };

    rig.rpc(
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "Nvme0n1", "lvs_name": "pool0", "cluster_sz": 1048576}),
    );
    rig.rpc(
        "targetd_set_options",
        json!({"target_name": TARGET, "thin_provision": true}),
    );
    for (v, mib) in [("vola", 64), ("volb", 32)] {
        rig.td(
            "vol_create",
            json!({"pool": "pool0", "name": v, "size": mib << 20}),
        );
    }
    for (v, who) in [("vola", IA), ("volb", IB)] {
        rig.td(
            "export_create",
            json!({"pool": "pool0", "vol": v, "initiator_wwn": who, "lun": 0}),
        );
    }
    rig.td(
        "initiator_set_auth",
        json!({"initiator_wwn": IA, "in_user": "alpha", "in_pass": "alpha-secret-12",
               "out_user": "target", "out_pass": "target-secret-12"}),
    );

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/targetd-guest.sh");
    let mut host = vm::GuestVm::new(&script);
    host.ip = Some(format!("{GUEST_IP}/24"));
    host.mac = "52:54:00:1b:30:03".into();
    host.tap = Some(rig.ns.add_tap().unwrap());
    rig.guest = Some(host.start(&image, Some(&rig.ns)).unwrap());

    rig.reach("exports");
    rig.release("exports");

    rig.reach("copy");
    rig.td(
        "vol_copy",
        json!({"pool": "pool0", "vol_orig": "vola", "vol_new": "vola-copy", "size": null}),
    );
    rig.td(
        "export_create",
        json!({"pool": "pool0", "vol": "vola-copy", "initiator_wwn": IB, "lun": 1}),
    );
    let exports = rig.td("export_list", Value::Null);
    assert_eq!(exports.as_array().unwrap().len(), 3, "{exports}");
    rig.release("copy");

    let guest = rig.guest.as_mut().unwrap();
    let (rc, out) = vm::finish(guest, STEP_TIMEOUT).unwrap_or_else(|e| panic!("guest: {e}"));
    println!("{out}");
    if rc != 0 {
        rig.fail(&format!("guest script failed (rc {rc})"));
    }
    for needle in [
        "B-SEES-OWN-LUN",
        "A-REFUSED-WITHOUT-CHAP",
        "A-REFUSED-WRONG-SECRET",
        "MUTUAL-WRONG-REFUSED",
        "A-SEES-OWN-LUN",
        "VOL-FSCK-CLEAN",
        "B-SEES-TWO-LUNS",
        "COPY-FSCK-CLEAN",
        "COPY-SAME-FILES",
        "TARGETD-GUEST-OK",
    ] {
        if !out.contains(needle) {
            rig.fail(&format!("guest output lacks `{needle}`"));
        }
    }
    assert!(!out.contains("FAILED"), "{out}");
    drop(rig);
}
