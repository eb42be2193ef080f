//! A RAM disk that loses power after a set number of writes, for testing
//! that metadata survives a cut at every write point.
//!
//! Writes (write, write zeroes, unmap) up to the budget land; the next one
//! lands only in part when tearing is on (a prefix of its blocks, as a disk
//! that loses power mid-transfer leaves it); that one and every later request
//! fail with [`IoStatus::DeviceFailed`], so nothing after the cut is
//! acknowledged. The surviving image is what a reboot would find.

use crate::malloc::MallocBdev;
use crate::types::{BdevInfo, BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus};
use alloc::collections::VecDeque;
use alloc::vec::Vec;

pub struct PowerCutBdev {
    disk: MallocBdev,
    /// Writes still allowed; `None`: no cut planned.
    left: Option<u64>,
    /// Blocks of the cut write that land (0: none).
    tear_blocks: u64,
    writes: u64,
    cut: bool,
    done: VecDeque<IoCompletion>,
}

impl PowerCutBdev {
    /// Power holds for `writes` more writes (`None`: for ever); the write
    /// after them lands its first `tear_blocks` blocks and fails.
    pub fn new(disk: MallocBdev, writes: Option<u64>, tear_blocks: u64) -> Self {
        PowerCutBdev {
            disk,
            left: writes,
            tear_blocks,
            writes: 0,
            cut: false,
            done: VecDeque::new(),
        }
    }

    /// Writes that landed whole.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Whether power is gone.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// The image a reboot finds.
    pub fn into_disk(self) -> MallocBdev {
        self.disk
    }

    /// The disk under the cut, which still reads after power is gone.
    pub fn disk_mut(&mut self) -> &mut MallocBdev {
        &mut self.disk
    }

    fn fail(&mut self, req: IoRequest) {
        self.done.push_back(IoCompletion {
            tag: req.tag,
            status: IoStatus::DeviceFailed,
            buf: req.op.into_buf(),
        });
    }

    /// Applies a prefix of a write that the cut interrupts.
    fn tear(&mut self, op: IoOp) -> Option<crate::IoBuf> {
        let bs = self.disk.info().block_size as usize;
        let n = self.tear_blocks as usize;
        match op {
            IoOp::Write { lba, buf } if n > 0 => {
                let keep = (n * bs).min(buf.len());
                let Some(mut part) = crate::IoBuf::try_new(keep) else {
                    return Some(buf);
                };
                part.as_mut_slice().copy_from_slice(&buf.as_slice()[..keep]);
                let mut sink = Vec::new();
                let req = IoRequest {
                    tag: 0,
                    op: IoOp::Write { lba, buf: part },
                    fua: false,
                };
                if self.disk.submit(req, 0).is_ok() {
                    self.disk.poll(0, &mut sink);
                }
                Some(buf)
            }
            IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } if n > 0 => {
                let req = IoRequest {
                    tag: 0,
                    op: IoOp::WriteZeroes {
                        lba,
                        blocks: (n as u32).min(blocks),
                    },
                    fua: false,
                };
                let mut sink = Vec::new();
                if self.disk.submit(req, 0).is_ok() {
                    self.disk.poll(0, &mut sink);
                }
                None
            }
            other => other.into_buf(),
        }
    }
}

impl BlockDevice for PowerCutBdev {
    fn info(&self) -> &BdevInfo {
        self.disk.info()
    }

    fn submit(&mut self, req: IoRequest, now_us: u64) -> Result<(), IoRequest> {
        if self.cut {
            self.fail(req);
            return Ok(());
        }
        let is_write = matches!(
            req.op,
            IoOp::Write { .. } | IoOp::Unmap { .. } | IoOp::WriteZeroes { .. }
        );
        if is_write {
            if self.left == Some(0) {
                self.cut = true;
                let buf = self.tear(req.op);
                self.done.push_back(IoCompletion {
                    tag: req.tag,
                    status: IoStatus::DeviceFailed,
                    buf,
                });
                return Ok(());
            }
            if let Some(l) = &mut self.left {
                *l -= 1;
            }
            self.writes += 1;
        }
        self.disk.submit(req, now_us)
    }

    fn poll(&mut self, now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        let n = self.done.len();
        out.extend(self.done.drain(..));
        n + self.disk.poll(now_us, out)
    }

    fn in_flight(&self) -> usize {
        self.done.len() + self.disk.in_flight()
    }

    fn allocation(&self, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        self.disk.allocation(lba, blocks)
    }

    fn resize(&mut self, num_blocks: u64) -> Result<(), IoStatus> {
        self.disk.resize(num_blocks)
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn core::any::Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync;

    #[test]
    fn cut_keeps_earlier_writes_and_tears_the_next() {
        let mut d = PowerCutBdev::new(MallocBdev::new("m", 16, 512), Some(1), 1);
        let mut t = 0;
        let mut clock = || {
            t += 1;
            t
        };
        let mut o = Vec::new();
        sync::write(&mut d, 0, &[1u8; 1024], &mut clock, &mut o).unwrap();
        assert_eq!(
            sync::write(&mut d, 4, &[2u8; 1024], &mut clock, &mut o),
            Err(IoStatus::DeviceFailed)
        );
        assert!(d.is_cut());
        assert!(sync::read(&mut d, 0, 512, &mut clock, &mut o).is_err());
        let mut disk = d.into_disk();
        let back = sync::read(&mut disk, 0, 8 * 512, &mut clock, &mut o).unwrap();
        let b = back.as_slice();
        assert!(b[..1024].iter().all(|&x| x == 1));
        assert!(b[2048..2560].iter().all(|&x| x == 2), "torn block landed");
        assert!(b[2560..3072].iter().all(|&x| x == 0), "rest did not");
    }
}
