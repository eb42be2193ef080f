//! QEMU boots of the kernel image: boot protocols, the platform layer's
//! console output, and the in-kernel self-tests. Run by `cargo xtask test`,
//! which builds the images first.

use ironbay_tests::images::{kernel, kernel_pvh, require};
use ironbay_tests::machine::{Boot, Disk, Machine, sparse_disk};
use ironbay_tests::serial::Running;
use ironbay_tests::{EXIT_FAILURE, EXIT_SUCCESS, READY, pxe, scratch};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn kernel_boot(image: PathBuf, append: &str, config: Option<PathBuf>) -> Machine {
    Machine::new(Boot::Kernel {
        image: require(&image),
        append: append.into(),
        config,
    })
}

/// Boots `m`, waits for it to exit, checks the status and returns the console.
fn boot_expect(m: Machine, status: i32) -> String {
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    let code = vm.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let out = vm.output();
    assert_eq!(code, status, "QEMU exit status\n----- console -----\n{out}");
    out
}

fn assert_has(out: &str, needles: &[&str]) {
    for n in needles {
        assert!(
            out.contains(n),
            "console lacks `{n}`\n----- console -----\n{out}"
        );
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

const CONFIG: &str = r#"{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":2048,"block_size":512}}]}]}"#;

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn multiboot_kernel_reaches_ready() {
    let dir = scratch("multiboot");
    let cfg = write(&dir, "config.json", CONFIG.as_bytes());
    let out = boot_expect(kernel_boot(kernel(), "test=boot", Some(cfg)), EXIT_SUCCESS);
    assert_has(
        &out,
        &[
            "booted via multiboot",
            "bdev: bdev_malloc_create",
            READY,
            "self-test boot: PASS",
        ],
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn multiboot_on_i440fx_reaches_ready() {
    let mut m = kernel_boot(kernel(), "test=boot", None);
    m.machine_type = "pc".into();
    let out = boot_expect(m, EXIT_SUCCESS);
    assert_has(
        &out,
        &["booted via multiboot", "config access via port I/O", READY],
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn pvh_kernel_reaches_ready() {
    let dir = scratch("pvh");
    let cfg = write(&dir, "config.json", CONFIG.as_bytes());
    let out = boot_expect(
        kernel_boot(kernel_pvh(), "test=boot", Some(cfg)),
        EXIT_SUCCESS,
    );
    assert_has(
        &out,
        &[
            "booted via pvh",
            "bdev: bdev_malloc_create",
            READY,
            "self-test boot: PASS",
        ],
    );
    assert!(!out.contains("booted via multiboot"));
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn pxe_boot_through_ipxe_reaches_ready() {
    let dir = scratch("pxe");
    let cfg = write(&dir, "src-config.json", CONFIG.as_bytes());
    let tftp = dir.join("tftp");
    pxe::write_folder(&tftp, &require(&kernel()), Some(&cfg), "test=boot").unwrap();
    let out = boot_expect(Machine::new(Boot::Pxe { tftp_dir: tftp }), EXIT_SUCCESS);
    assert_has(
        &out,
        &[
            "booted via multiboot by iPXE",
            "ironbay.json",
            "bdev: bdev_malloc_create",
            READY,
        ],
    );
}

fn with_devices(mut m: Machine, name: &str) -> Machine {
    let dir = scratch(name);
    for file in ["nvme0.img", "vblk0.img"] {
        sparse_disk(&dir.join(file), 64 << 20).unwrap();
    }
    m.disks.push(Disk::nvme(0, 1, dir.join("nvme0.img")));
    m.disks.push(Disk::virtio(dir.join("vblk0.img")));
    m
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn pci_table_lists_the_devices_given_over_ecam() {
    let m = with_devices(kernel_boot(kernel(), "test=pci", None), "pci-q35");
    let out = boot_expect(m, EXIT_SUCCESS);
    assert_has(
        &out,
        &[
            "config access via ECAM",
            "1b36:0010 010802 NVMe (QEMU)",
            "virtio-blk",
            "virtio-net",
            "BAR0=m64:",
        ],
    );
    assert_eq!(
        out.matches("1af4:1000 020000 virtio-net").count(),
        2,
        "two NICs\n{out}"
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn pci_table_lists_the_devices_given_over_port_io() {
    let mut m = with_devices(kernel_boot(kernel(), "test=pci", None), "pci-pc");
    m.machine_type = "pc".into();
    let out = boot_expect(m, EXIT_SUCCESS);
    assert_has(
        &out,
        &[
            "config access via port I/O",
            "NVMe (QEMU)",
            "virtio-blk",
            "virtio-net",
        ],
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn malformed_command_line_and_config_are_reported_and_boot_goes_on() {
    let dir = scratch("malformed");
    let cfg = write(
        &dir,
        "bad.json",
        br#"{"subsystems": [{"subsystem": 5, "config": []}]}"#,
    );
    let append = r#"test=boot log=loud bogus=1 stray mgmt.ip=10.0.2.300/24 heap=999 "unbalanced"#;
    let out = boot_expect(kernel_boot(kernel(), append, Some(cfg)), EXIT_SUCCESS);
    assert_has(
        &out,
        &[
            "command line: option `log=loud`: not one of the allowed values",
            "command line: unknown option `bogus`",
            "command line: `stray` is not key=value",
            "command line: option `mgmt.ip=10.0.2.300/24`: not an IPv4 address",
            "command line: option `heap=999`",
            "command line: unbalanced double quote",
            "rejected: config: subsystems[0].subsystem must be a string",
            READY,
        ],
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn binary_garbage_as_config_is_reported() {
    let dir = scratch("garbage");
    let cfg = write(&dir, "garbage.bin", &[0xff, 0xfe, 0x00, 0x7b, 0x80, 0x81]);
    let out = boot_expect(kernel_boot(kernel(), "test=boot", Some(cfg)), EXIT_SUCCESS);
    assert_has(&out, &["rejected: config is not UTF-8", READY]);
}

fn selftest(args: &str, status: i32) -> String {
    boot_expect(kernel_boot(kernel(), args, None), status)
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn selftest_crc_hardware_and_soft() {
    let out = selftest("test=crc", EXIT_SUCCESS);
    assert_has(
        &out,
        &[
            "crc32c: sse4.2 engine",
            "self-test crc: PASS (engines soft+sse4.2)",
        ],
    );
    let out = selftest("test=crc crc=soft", EXIT_SUCCESS);
    assert_has(
        &out,
        &["crc32c: soft engine", "self-test crc: PASS (engines soft)"],
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn selftest_memory_with_ram_above_4g() {
    let mut m = kernel_boot(kernel(), "test=mem heap=20", None);
    m.memory_mib = 5 * 1024;
    let out = boot_expect(m, EXIT_SUCCESS);
    assert_has(&out, &["self-test mem: PASS", "RAM above 4 GiB at"]);
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn selftests_time_acpi() {
    assert_has(
        &selftest("test=time", EXIT_SUCCESS),
        &["self-test time: PASS"],
    );
    assert_has(
        &selftest("test=acpi", EXIT_SUCCESS),
        &["self-test acpi: PASS (2 CPUs"],
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn clock_without_a_pit_is_calibrated_on_the_acpi_pm_timer() {
    let mut m = kernel_boot(kernel(), "test=time", None);
    m.machine_type = "q35,pit=off".into();
    let out = boot_expect(m, EXIT_SUCCESS);
    assert_has(
        &out,
        &[
            "TSC recalibrated on the ACPI PM timer",
            "self-test time: PASS",
            "PM timer agrees",
        ],
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn page_fault_is_reported_with_cr2_and_backtrace() {
    let out = selftest("test=fault", EXIT_FAILURE);
    assert_has(
        &out,
        &[
            "!!! EXCEPTION #PF page fault (vector 14) error=0x0",
            "cr2=0x00007ead00000000",
            "rip=0x",
            "backtrace:",
            "#1 ",
        ],
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn panic_is_reported_with_location_and_backtrace() {
    let out = selftest("test=panic", EXIT_FAILURE);
    assert_has(
        &out,
        &[
            "!!! PANIC at kernel/src/selftest.rs:",
            "self-test panic",
            "backtrace:",
            "#1 ",
        ],
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn panic_reboot_resets_the_machine() {
    // -no-reboot turns the reset into a clean QEMU exit.
    let out = selftest("test=panic panic=reboot", 0);
    assert_has(&out, &["!!! PANIC at", "rebooting (panic=reboot)"]);
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn acpi_power_off_stops_the_machine() {
    let out = selftest("test=poweroff", 0);
    assert_has(&out, &["powering off through ACPI"]);
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn reset_restarts_the_machine() {
    // -no-reboot turns the reset into a clean QEMU exit.
    let out = selftest("test=reboot", 0);
    assert_has(&out, &["resetting the machine"]);
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn unknown_selftest_fails_clearly() {
    let out = selftest("test=nonesuch", EXIT_FAILURE);
    assert_has(
        &out,
        &["self-test `nonesuch` does not exist; known: boot, blk, bench, crc"],
    );
}
