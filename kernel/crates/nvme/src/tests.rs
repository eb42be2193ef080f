//! The driver against the fake controller.

use crate::fake::{Device, FakeHal, FakeNs};
use crate::{Controller, NvmeBdev, NvmeError, Options};
use ironbay_bdev::{BdevId, IoBuf, IoCompletion, IoOp, IoRequest, IoStatus, Registry};
use std::cell::RefCell;
use std::rc::Rc;

fn two_namespaces() -> Device {
    Device {
        namespaces: vec![
            FakeNs {
                nsid: 1,
                blocks: 1 << 20,
                lbads: 9,
                metadata: 0,
            },
            FakeNs {
                nsid: 3,
                blocks: 4096,
                lbads: 12,
                metadata: 0,
            },
            FakeNs {
                nsid: 4,
                blocks: 4096,
                lbads: 9,
                metadata: 8,
            },
        ],
        ..Device::default()
    }
}

fn opts() -> Options {
    Options {
        io_queues: 4,
        io_depth: 16,
        admin_timeout_us: 1_000_000,
        io_timeout_us: 5_000_000,
    }
}

#[test]
fn bring_up_finds_active_namespaces_and_makes_queues() {
    let hal = FakeHal::new(two_namespaces());
    let c = Controller::init(hal.clone(), opts()).unwrap();
    assert_eq!(c.identity.serial, "FAKESERIAL");
    assert_eq!(c.io_queues(), 2, "controller granted two");
    assert_eq!(c.io_depth(), 16);
    let ns: Vec<_> = c
        .namespaces
        .iter()
        .map(|n| (n.nsid, n.identity.block_size, n.identity.size_blocks))
        .collect();
    assert_eq!(
        ns,
        vec![(1, 512, 1 << 20), (3, 4096, 4096)],
        "namespace 4 has metadata"
    );
    assert_eq!(c.namespaces[0].uuid, [0x11; 16], "from the descriptor list");
    assert_eq!(c.namespaces[1].uuid, [3; 16], "NGUID fallback");
    assert!(c.notes.iter().any(|n| n.contains("namespace 4 skipped")));
    assert_eq!(c.max_transfer(), 128 * 1024, "MDTS 5 with 4 KiB pages");
}

#[test]
fn old_controllers_without_active_list_are_probed() {
    let hal = FakeHal::new(Device {
        active_list: false,
        ..two_namespaces()
    });
    let c = Controller::init(hal, opts()).unwrap();
    assert_eq!(c.namespaces.len(), 2);
    assert!(
        c.notes
            .iter()
            .any(|n| n.contains("probing every namespace"))
    );
}

#[test]
fn a_controller_that_never_gets_ready_times_out() {
    let hal = FakeHal::new(Device {
        ready_on_enable: false,
        clock_step: 10_000,
        ..Device::default()
    });
    assert_eq!(
        Controller::init(hal, opts()).err(),
        Some(NvmeError::Timeout("controller ready"))
    );
}

#[test]
fn fatal_status_during_bring_up_is_reported() {
    let hal = FakeHal::new(Device {
        ready_on_enable: false,
        csts: 2,
        ..Device::default()
    });
    assert_eq!(Controller::init(hal, opts()).err(), Some(NvmeError::Fatal));
}

struct Rig {
    hal: FakeHal,
    reg: Registry,
    ids: Vec<BdevId>,
    now: u64,
}

fn rig(dev: Device, opts: Options) -> Rig {
    let hal = FakeHal::new(dev);
    let ctrl = Rc::new(RefCell::new(Controller::init(hal.clone(), opts).unwrap()));
    let mut reg = Registry::new();
    let namespaces = ctrl.borrow().namespaces.clone();
    let ids = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            reg.add(Box::new(NvmeBdev::new(&ctrl, "Nvme0", ns, i)))
                .unwrap()
        })
        .collect();
    Rig {
        hal,
        reg,
        ids,
        now: 0,
    }
}

impl Rig {
    fn submit(&mut self, id: usize, tag: u64, op: IoOp) -> Result<(), IoRequest> {
        self.reg.submit(
            self.ids[id],
            IoRequest {
                tag,
                op,
                fua: false,
            },
            self.now,
        )
    }

    fn poll(&mut self) -> Vec<IoCompletion> {
        let mut out = Vec::new();
        self.reg.poll(self.now, &mut out);
        out.into_iter().map(|(_, c)| c).collect()
    }

    fn clock(&self, us: u64) {
        self.hal.0.borrow_mut().now += us;
    }
}

#[test]
fn namespaces_become_bdevs_with_their_geometry() {
    let r = rig(two_namespaces(), opts());
    let a = r.reg.info(r.ids[0]).unwrap();
    assert_eq!(
        (a.name.as_str(), a.block_size, a.num_blocks),
        ("Nvme0n1", 512, 1 << 20)
    );
    let b = r.reg.info(r.ids[1]).unwrap();
    assert_eq!(
        (b.name.as_str(), b.block_size, b.num_blocks),
        ("Nvme0n3", 4096, 4096)
    );
    assert_eq!(b.max_transfer, 128 * 1024);
    assert_eq!(
        a.io_types.to_string(),
        "read,write,flush,unmap,write_zeroes"
    );
    assert_eq!(a.queue_depth, 15);
}

#[test]
fn prp_entries_follow_the_buffer() {
    let mut r = rig(two_namespaces(), opts());
    for (tag, len) in [(1u64, 4096usize), (2, 8192), (3, 128 * 1024), (4, 512)] {
        r.submit(
            0,
            tag,
            IoOp::Read {
                lba: 100,
                buf: IoBuf::new(len),
            },
        )
        .unwrap();
    }
    let done = r.poll();
    assert_eq!(done.len(), 4);
    assert!(
        done.iter()
            .all(|c| c.status == IoStatus::Success && c.buf.is_some())
    );
    let d = r.hal.0.borrow();
    let log = &d.log;
    assert_eq!(log.len(), 4);
    for l in log.iter() {
        assert_eq!(l.cmd.opcode, 0x02);
        assert_eq!((l.cmd.cdw10, l.cmd.cdw11), (100, 0));
        assert_eq!(l.cmd.prp1 % 512, 0);
    }
    // 4 KiB from a 512-aligned heap address may cross a page.
    assert_eq!(log[0].cmd.cdw12, 7);
    assert_eq!(log[2].cmd.cdw12, 255);
    let first_page = log[2].cmd.prp1 / 4096 * 4096;
    let expect: Vec<u64> = (1..=crate::prp::extra_pages(log[2].cmd.prp1, 128 * 1024, 4096))
        .map(|i| first_page + i * 4096)
        .collect();
    assert_eq!(log[2].prp_list, expect);
    assert!(expect.len() >= 31);
    assert_eq!(log[3].cmd.prp2, 0);
}

#[test]
fn flush_write_zeroes_and_deallocate_encode() {
    let mut r = rig(two_namespaces(), opts());
    r.submit(1, 1, IoOp::Flush).unwrap();
    r.submit(
        1,
        2,
        IoOp::WriteZeroes {
            lba: 7,
            blocks: 300,
        },
    )
    .unwrap();
    r.submit(
        1,
        3,
        IoOp::Unmap {
            lba: 4000,
            blocks: 9,
        },
    )
    .unwrap();
    assert!(r.poll().iter().all(|c| c.status.is_ok()));
    let d = r.hal.0.borrow();
    let ops: Vec<(u16, u8, u32)> = d
        .log
        .iter()
        .map(|l| (l.qid, l.cmd.opcode, l.cmd.nsid))
        .collect();
    assert_eq!(
        ops,
        vec![(2, 0x00, 3), (2, 0x08, 3), (2, 0x09, 3)],
        "second namespace on the second queue"
    );
    assert_eq!((d.log[1].cmd.cdw10, d.log[1].cmd.cdw12), (7, 299));
    assert_eq!(d.log[2].cmd.cdw11, 1 << 2);
    assert_eq!(d.log[2].dsm_range, Some((9, 4000)));
}

#[test]
fn queues_wrap_and_phase_flips_many_times() {
    let mut r = rig(
        two_namespaces(),
        Options {
            io_depth: 4,
            ..opts()
        },
    );
    let mut next = 0u64;
    let mut seen = Vec::new();
    while seen.len() < 500 {
        // Fill the queue (3 slots for depth 4), then reap.
        while r
            .submit(
                0,
                next,
                IoOp::Write {
                    lba: next % 1000,
                    buf: IoBuf::new(512),
                },
            )
            .is_ok()
        {
            next += 1;
        }
        for c in r.poll() {
            assert_eq!(c.status, IoStatus::Success);
            seen.push(c.tag);
        }
    }
    seen.sort();
    assert!(
        seen.iter().enumerate().all(|(i, &t)| t == i as u64),
        "every tag exactly once"
    );
    assert_eq!(r.reg.in_flight(r.ids[0]), 0);
}

#[test]
fn device_errors_become_error_completions() {
    let mut r = rig(two_namespaces(), opts());
    r.hal.0.borrow_mut().io_status = 0x281; // media: unrecovered read error
    r.submit(
        0,
        9,
        IoOp::Read {
            lba: 0,
            buf: IoBuf::new(512),
        },
    )
    .unwrap();
    let c = r.poll().pop().unwrap();
    assert_eq!((c.tag, c.status), (9, IoStatus::DeviceError(0x281)));
    assert!(c.buf.is_some());
}

#[test]
fn timed_out_commands_withhold_their_buffer_until_the_device_answers() {
    let mut r = rig(two_namespaces(), opts());
    r.hal.0.borrow_mut().hold_io = true;
    r.submit(
        0,
        5,
        IoOp::Read {
            lba: 0,
            buf: IoBuf::new(4096),
        },
    )
    .unwrap();
    assert!(r.poll().is_empty());
    r.clock(6_000_000);
    let c = r.poll().pop().expect("timeout completion");
    assert_eq!((c.tag, c.status), (5, IoStatus::Timeout));
    assert!(c.buf.is_none(), "the device may still write into it");
    assert_eq!(r.reg.in_flight(r.ids[0]), 0);
    // The late completion frees the slot silently.
    r.hal.0.borrow_mut().hold_io = false;
    r.hal.0.borrow_mut().release_held(0);
    r.submit(
        0,
        6,
        IoOp::Read {
            lba: 0,
            buf: IoBuf::new(512),
        },
    )
    .unwrap();
    let done = r.poll();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].tag, 6);
}

#[test]
fn controller_fatal_status_fails_outstanding_io_and_later_submissions() {
    let mut r = rig(two_namespaces(), opts());
    r.hal.0.borrow_mut().hold_io = true;
    r.submit(
        0,
        1,
        IoOp::Write {
            lba: 0,
            buf: IoBuf::new(512),
        },
    )
    .unwrap();
    r.submit(
        1,
        2,
        IoOp::Read {
            lba: 0,
            buf: IoBuf::new(4096),
        },
    )
    .unwrap();
    r.hal.0.borrow_mut().csts |= 2;
    r.clock(200_000);
    let mut done = r.poll();
    done.sort_by_key(|c| c.tag);
    assert_eq!(done.len(), 2);
    assert!(
        done.iter()
            .all(|c| c.status == IoStatus::DeviceFailed && c.buf.is_some())
    );
    r.submit(
        0,
        3,
        IoOp::Read {
            lba: 0,
            buf: IoBuf::new(512),
        },
    )
    .unwrap();
    assert_eq!(r.poll().pop().unwrap().status, IoStatus::DeviceFailed);
}

#[test]
fn full_queue_pushes_back() {
    let mut r = rig(
        two_namespaces(),
        Options {
            io_depth: 4,
            ..opts()
        },
    );
    r.hal.0.borrow_mut().hold_io = true;
    for t in 0..3 {
        r.submit(
            0,
            t,
            IoOp::Read {
                lba: 0,
                buf: IoBuf::new(512),
            },
        )
        .unwrap();
    }
    let back = r
        .submit(
            0,
            3,
            IoOp::Read {
                lba: 0,
                buf: IoBuf::new(512),
            },
        )
        .unwrap_err();
    assert_eq!(back.tag, 3);
    assert!(back.op.into_buf().is_some());
}
