//! Block commands (SBC-3): CDB checks and the set-up of their I/O.

use super::cdb::{self, Cdb, op};
use super::io::{DataOut, Keep, Phase};
use super::sense::{Sense, asc};
use super::{Cmd, Cmp, Failure, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS, Task};
use alloc::vec;
use alloc::vec::Vec;

impl Task {
    pub(super) fn read(&mut self, c: Cdb<'_>) -> Result<(), Failure> {
        let (lba, blocks) = lba_len(c);
        if c.b(1) & 0xe0 != 0 && c.opcode() != op::READ_6 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        self.geo.check_range(lba, blocks)?;
        self.check_xfer(c, blocks)?;
        if blocks == 0 {
            self.good();
            return Ok(());
        }
        self.cmd = Cmd::Read;
        self.din = (0..blocks.div_ceil(self.geo.chunk_blocks))
            .map(|_| None)
            .collect();
        let chunk = self.geo.chunk_blocks;
        self.start_phase(
            0,
            Phase::Read {
                lba,
                blocks,
                chunk,
                keep: Keep::DataIn,
            },
        );
        Ok(())
    }

    pub(super) fn check_xfer(&self, c: Cdb<'_>, blocks: u64) -> Result<(), Sense> {
        if blocks > self.geo.max_xfer_blocks {
            return Err(Sense::invalid_cdb(len_byte(c.opcode()), None));
        }
        Ok(())
    }

    pub(super) fn check_writable(&self) -> Result<(), Sense> {
        if self.geo.read_only {
            return Err(Sense::write_protected());
        }
        Ok(())
    }

    /// Blocks of data-out to take for a CDB asking `blocks` when the
    /// initiator sends `edtl` bytes: whole blocks only.
    pub(super) fn out_blocks(&mut self, blocks: u64, edtl: usize) -> Result<u64, Sense> {
        let need = blocks * self.geo.bs;
        self.cdb_out = need as usize;
        if edtl as u64 >= need {
            Ok(blocks)
        } else if (edtl as u64).is_multiple_of(self.geo.bs) {
            Ok(edtl as u64 / self.geo.bs)
        } else {
            Err(Sense::illegal(asc::INVALID_FIELD_IN_IU))
        }
    }

    /// FUA for a write CDB with a FUA bit (byte 1 bit 3); with the write
    /// cache turned off every write goes to the medium.
    pub(super) fn write_fua(&self, c: Cdb<'_>) -> bool {
        let fua = c.opcode() != op::WRITE_6 && c.b(1) & 0x08 != 0;
        fua || self.cache_off()
    }

    pub(super) fn cache_off(&self) -> bool {
        self.geo.cache && !self.wce()
    }

    pub(super) fn write(
        &mut self,
        c: Cdb<'_>,
        verify: Option<bool>,
        edtl: usize,
    ) -> Result<(), Failure> {
        let (lba, blocks) = lba_len(c);
        if c.b(1) & 0xe0 != 0 && c.opcode() != op::WRITE_6 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        self.check_writable()?;
        self.geo.check_range(lba, blocks)?;
        self.check_xfer(c, blocks)?;
        let blocks = self.out_blocks(blocks, edtl)?;
        if blocks == 0 {
            self.good();
            return Ok(());
        }
        let fua = self.write_fua(c) || verify.is_some();
        self.cmd = Cmd::Write {
            lba,
            blocks,
            fua,
            verify,
        };
        let bytes = (blocks * self.geo.bs) as usize;
        let chunk = (self.geo.chunk_blocks * self.geo.bs) as usize;
        self.expect_out(DataOut::new(bytes, 0, chunk));
        Ok(())
    }

    pub(super) fn verify(&mut self, c: Cdb<'_>, edtl: usize) -> Result<(), Failure> {
        let (lba, blocks) = lba_len(c);
        if c.b(1) & 0xe0 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        let cmp = match (c.b(1) >> 1) & 3 {
            0 => Cmp::None,
            1 => Cmp::Full,
            3 => Cmp::One,
            _ => return Err(Sense::invalid_cdb(1, Some(2)).into()),
        };
        self.geo.check_range(lba, blocks)?;
        self.check_xfer(c, blocks)?;
        let bs = self.geo.bs;
        let chunk = (self.geo.chunk_blocks * bs) as usize;
        let blocks = match cmp {
            Cmp::None => blocks,
            Cmp::Full => self.out_blocks(blocks, edtl)?,
            Cmp::One if blocks == 0 => 0,
            Cmp::One => {
                self.cdb_out = bs as usize;
                if (edtl as u64) < bs {
                    return Err(Sense::illegal(asc::INVALID_FIELD_IN_IU).into());
                }
                blocks
            }
        };
        if blocks == 0 {
            self.good();
            return Ok(());
        }
        self.cmd = Cmd::Verify { lba, blocks, cmp };
        match cmp {
            Cmp::None => self.begin_verify_read(),
            Cmp::Full => self.expect_out(DataOut::new((blocks * bs) as usize, 0, chunk)),
            Cmp::One => self.expect_out(DataOut::new(bs as usize, 0, bs as usize)),
        }
        Ok(())
    }

    pub(super) fn compare_and_write(&mut self, c: Cdb<'_>, edtl: usize) -> Result<(), Failure> {
        let lba = c.be(2, 8);
        let blocks = c.b(13) as u64;
        if c.b(1) & 0xe0 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        if blocks > self.geo.max_caw_blocks() {
            return Err(Sense::invalid_cdb(13, None).into());
        }
        self.check_writable()?;
        self.geo.check_range(lba, blocks)?;
        let half = (blocks * self.geo.bs) as usize;
        self.cdb_out = 2 * half;
        // Exactly the verify and write data, none with zero blocks: a
        // length that does not match says the CDB is not what was meant.
        if edtl != 2 * half {
            return Err(Sense::invalid_cdb(13, None).into());
        }
        if blocks == 0 {
            self.good();
            return Ok(());
        }
        let fua = self.write_fua(c);
        self.cmd = Cmd::CompareAndWrite { lba, blocks, fua };
        let chunk = (self.geo.chunk_blocks * self.geo.bs) as usize;
        self.expect_out(DataOut::new(half, half, chunk));
        Ok(())
    }

    /// ORWRITE(16): the data-out ORed into the blocks, under the LU lock.
    pub(super) fn orwrite(&mut self, c: Cdb<'_>, edtl: usize) -> Result<(), Failure> {
        let (lba, blocks) = lba_len(c);
        if c.b(1) & 0xe0 != 0 {
            // ORPROTECT: no protection information.
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        self.check_writable()?;
        self.geo.check_range(lba, blocks)?;
        self.check_xfer(c, blocks)?;
        let blocks = self.out_blocks(blocks, edtl)?;
        if blocks == 0 {
            self.good();
            return Ok(());
        }
        let fua = self.write_fua(c);
        self.cmd = Cmd::OrWrite { lba, blocks, fua };
        let chunk = (self.geo.chunk_blocks * self.geo.bs) as usize;
        self.expect_out(DataOut::new((blocks * self.geo.bs) as usize, 0, chunk));
        Ok(())
    }

    /// WRITE ATOMIC(16): one bdev write, under the LU lock.
    pub(super) fn write_atomic(&mut self, c: Cdb<'_>, edtl: usize) -> Result<(), Failure> {
        let lba = c.be(2, 8);
        let blocks = c.be(12, 2);
        if c.b(1) & 0xe0 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        if c.be(10, 2) != 0 {
            // ATOMIC BOUNDARY: boundaries are not offered.
            return Err(Sense::invalid_cdb(10, None).into());
        }
        self.check_writable()?;
        self.geo.check_range(lba, blocks)?;
        if blocks > self.geo.max_atomic_blocks() {
            return Err(Sense::invalid_cdb(12, None).into());
        }
        let blocks = self.out_blocks(blocks, edtl)?;
        if blocks == 0 {
            self.good();
            return Ok(());
        }
        let fua = self.write_fua(c);
        self.cmd = Cmd::WriteAtomic { lba, blocks, fua };
        let bytes = (blocks * self.geo.bs) as usize;
        self.expect_out(DataOut::new(bytes, 0, bytes));
        Ok(())
    }

    pub(super) fn write_same(&mut self, c: Cdb<'_>, edtl: usize) -> Result<(), Failure> {
        let ten = c.opcode() == op::WRITE_SAME_10;
        let f = c.b(1);
        if f & 0xe0 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        if f & 0x10 != 0 {
            // ANCHOR: anchored LBAs are not supported.
            return Err(Sense::invalid_cdb(1, Some(4)).into());
        }
        if f & 0x06 != 0 {
            // PBDATA / LBDATA.
            return Err(Sense::invalid_cdb(1, Some(2)).into());
        }
        let ndob = !ten && f & 0x01 != 0;
        let unmap = f & 0x08 != 0;
        let (lba, blocks) = lba_len(c);
        self.check_writable()?;
        let g = &self.geo;
        if lba > g.num_blocks {
            return Err(Sense::lba_out_of_range().into());
        }
        // Zero blocks: through the end of the medium.
        let blocks = if blocks == 0 {
            g.num_blocks - lba
        } else {
            g.check_range(lba, blocks)?;
            blocks
        };
        if blocks > MAX_WRITE_SAME_BLOCKS {
            return Err(Sense::invalid_cdb(len_byte(c.opcode()), None).into());
        }
        let bs = g.bs as usize;
        self.cdb_out = if ndob { 0 } else { bs };
        if blocks == 0 {
            self.good();
            return Ok(());
        }
        if !ndob && edtl != bs {
            return Err(Sense::illegal(asc::INVALID_FIELD_IN_IU).into());
        }
        let fua = self.cache_off();
        self.cmd = Cmd::WriteSame {
            lba,
            blocks,
            fua,
            unmap,
        };
        if ndob {
            self.pattern = vec![0; bs];
            self.begin_write_same();
        } else {
            self.expect_out(DataOut::new(bs, 0, bs));
        }
        Ok(())
    }

    pub(super) fn unmap(&mut self, c: Cdb<'_>, edtl: usize) -> Result<(), Failure> {
        if !self.geo.unmap {
            return Err(Sense::illegal(asc::INVALID_OPCODE).into());
        }
        if c.b(1) & 0x01 != 0 {
            return Err(Sense::invalid_cdb(1, Some(0)).into());
        }
        self.check_writable()?;
        let len = c.be(7, 2) as usize;
        self.cdb_out = len;
        if len == 0 {
            self.good();
            return Ok(());
        }
        if len < 8 {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        self.cmd = Cmd::Unmap;
        let n = len.min(edtl);
        if n == 0 {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        self.expect_out(DataOut::new(n, 0, n));
        Ok(())
    }

    pub(super) fn begin_verify_read(&mut self) {
        let Cmd::Verify { lba, blocks, cmp } = self.cmd else {
            return;
        };
        let keep = match cmp {
            Cmp::None => Keep::Discard,
            Cmp::Full => Keep::Compare,
            Cmp::One => Keep::CompareOne,
        };
        let chunk = self.geo.work_blocks();
        self.start_phase(
            0,
            Phase::Read {
                lba,
                blocks,
                chunk,
                keep,
            },
        );
    }

    pub(super) fn begin_write_same(&mut self) {
        let Cmd::WriteSame {
            lba,
            blocks,
            fua,
            unmap,
        } = self.cmd
        else {
            return;
        };
        let g = &self.geo;
        let zero = self.pattern.iter().all(|&b| b == 0);
        // With UNMAP the blocks are unmapped whatever the data (SBC lets
        // the device server choose; unmapped blocks read as zeroes).
        let phase = if unmap && g.unmap {
            Phase::Zero {
                lba,
                blocks,
                chunk: g.max_unmap_op.min(u32::MAX as u64),
                unmap: true,
            }
        } else if zero && g.write_zeroes && !fua {
            Phase::Zero {
                lba,
                blocks,
                chunk: g.max_zeroes_op.min(u32::MAX as u64),
                unmap: false,
            }
        } else {
            Phase::Fill {
                lba,
                blocks,
                chunk: g.fill_blocks(),
                fua,
            }
        };
        self.start_phase(0, phase);
    }

    /// The ranges of an UNMAP parameter list, checked.
    pub(super) fn unmap_list(&self, d: &[u8]) -> Result<Vec<(u64, u64)>, Sense> {
        let list_err = Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR);
        let bdl = cdb::be_at(d, 2, 2).ok_or(list_err)? as usize;
        if d.len() < 8 || bdl > d.len() - 8 {
            return Err(list_err);
        }
        let n = bdl / 16;
        if n > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_param(2, None));
        }
        let mut ranges = Vec::with_capacity(n);
        let mut total = 0u64;
        for i in 0..n {
            let at = 8 + 16 * i;
            let lba = cdb::be_at(d, at, 8).ok_or(list_err)?;
            let blocks = cdb::be_at(d, at + 8, 4).ok_or(list_err)?;
            self.geo.check_range(lba, blocks)?;
            total += blocks;
            if total > u32::MAX as u64 {
                return Err(Sense::invalid_param(at as u16 + 8, None));
            }
            if blocks > 0 {
                ranges.push((lba, blocks));
            }
        }
        Ok(ranges)
    }
}

/// LBA and transfer length fields by CDB size.
pub(super) fn lba_len(c: Cdb<'_>) -> (u64, u64) {
    match c.opcode() >> 5 {
        0 => {
            let n = c.b(4) as u64;
            (c.be(1, 3) & 0x1f_ffff, if n == 0 { 256 } else { n })
        }
        1 | 2 => (c.be(2, 4), c.be(7, 2)),
        5 => (c.be(2, 4), c.be(6, 4)),
        _ => (c.be(2, 8), c.be(10, 4)),
    }
}

/// Byte of the transfer length field, for field pointers.
pub(super) fn len_byte(opcode: u8) -> u16 {
    match opcode >> 5 {
        0 => 4,
        1 | 2 => 7,
        5 => 6,
        _ => 10,
    }
}
