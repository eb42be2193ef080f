//! A minimal writer for the "newc" cpio format the kernel unpacks as initramfs.

use std::io::{self, Write};

pub struct Writer<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

const DIR: u32 = 0o040_755;
const FILE: u32 = 0o100_644;
const EXEC: u32 = 0o100_755;
const LINK: u32 = 0o120_777;

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            if mode == DIR { 2 } else { 1 },
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.put(&[0, 0, 0][..n as usize])
    }

    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, DIR, &[])
    }

    pub fn file(&mut self, name: &str, data: &[u8], executable: bool) -> io::Result<()> {
        self.entry(name, if executable { EXEC } else { FILE }, data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, LINK, target.as_bytes())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, &[])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_padded_and_terminated() {
        let mut w = Writer::new(Vec::new());
        w.dir("/etc").unwrap();
        w.file("/etc/x", b"abc", false).unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("etc/x\0"));
        assert!(text.contains("TRAILER!!!\0"));
        assert_eq!(text.matches("070701").count(), 4);
    }
}
