//! A bdev backed by a file: positioned reads and writes, done at submit time.

use ironbay_bdev::{
    BdevInfo, BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus, IoType, IoTypes, Uuid,
};
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;

pub struct FileBdev {
    info: BdevInfo,
    file: File,
    done: VecDeque<IoCompletion>,
}

impl FileBdev {
    pub fn open(name: &str, path: &str, block_size: u32, read_only: bool) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut info = BdevInfo::in_memory(
            name,
            "File disk",
            Uuid::from_name(&[b"file", path.as_bytes()]),
            len / block_size as u64,
            block_size,
        );
        info.io_types = IoTypes::empty()
            .with(IoType::Read)
            .with(IoType::Write)
            .with(IoType::Flush)
            .with(IoType::WriteZeroes);
        info.read_only = read_only;
        info.write_cache = true;
        Ok(FileBdev {
            info,
            file,
            done: VecDeque::new(),
        })
    }

    fn run(&self, op: &mut IoOp) -> std::io::Result<()> {
        let bs = self.info.block_size as u64;
        match op {
            IoOp::Read { lba, buf } => self.file.read_exact_at(buf.as_mut_slice(), *lba * bs),
            IoOp::Write { lba, buf } => self.file.write_all_at(buf.as_slice(), *lba * bs),
            IoOp::Flush => self.file.sync_data(),
            IoOp::WriteZeroes { lba, blocks } | IoOp::Unmap { lba, blocks } => {
                let zero = vec![0u8; 1 << 20];
                let (mut at, end) = (*lba * bs, (*lba + *blocks as u64) * bs);
                while at < end {
                    let n = (end - at).min(zero.len() as u64) as usize;
                    self.file.write_all_at(&zero[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
        }
    }
}

impl BlockDevice for FileBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn submit(&mut self, mut req: IoRequest, _now_us: u64) -> Result<(), IoRequest> {
        let status = match self.run(&mut req.op) {
            Ok(()) => IoStatus::Success,
            Err(e) => IoStatus::DeviceError(e.raw_os_error().unwrap_or(5) as u16),
        };
        self.done.push_back(IoCompletion {
            tag: req.tag,
            status,
            buf: req.op.into_buf(),
        });
        Ok(())
    }

    fn poll(&mut self, _now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        let n = self.done.len();
        out.extend(self.done.drain(..));
        n
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
