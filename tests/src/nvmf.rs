//! A minimal NVMe/TCP host for protocol-error tests: it builds PDUs byte by
//! byte (so it can also build wrong ones) and reads whatever comes back.
//! Digests use the `crc32c` crate, not the appliance's own CRC code.
//! Real-host behaviour is tested with Linux nvme-cli in the rig guest; this
//! is for what no well-behaved host sends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const ICREQ: u8 = 0x00;
pub const ICRESP: u8 = 0x01;
pub const C2H_TERM_REQ: u8 = 0x03;
pub const CAPSULE_CMD: u8 = 0x04;
pub const CAPSULE_RESP: u8 = 0x05;
pub const H2C_DATA: u8 = 0x06;
pub const C2H_DATA: u8 = 0x07;
pub const R2T: u8 = 0x09;

const FLAG_HDGST: u8 = 0x01;
const FLAG_DDGST: u8 = 0x02;
const FLAG_LAST: u8 = 0x04;
const FLAG_SUCCESS: u8 = 0x08;

/// A PDU as received: its header (without digest) and its data.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub kind: u8,
    pub flags: u8,
    pub header: Vec<u8>,
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn u16_at(&self, o: usize) -> u16 {
        u16::from_le_bytes([self.header[o], self.header[o + 1]])
    }
    pub fn u32_at(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.header[o..o + 4].try_into().unwrap())
    }
    /// Status field of a CapsuleResp (SCT << 8 | SC, DNR bit 14).
    pub fn status(&self) -> u16 {
        self.u16_at(8 + 14) >> 1
    }
    pub fn cid(&self) -> u16 {
        self.u16_at(8 + 12)
    }
    pub fn dw0(&self) -> u32 {
        self.u32_at(8)
    }
}

/// A completed command: the status, CQE dword 0, and data from C2HData.
#[derive(Debug, Clone)]
pub struct Done {
    pub status: u16,
    pub dw0: u32,
    pub data: Vec<u8>,
}

pub struct Host {
    pub sock: TcpStream,
    pub hdgst: bool,
    pub ddgst: bool,
    cid: u16,
}

pub fn crc(data: &[u8]) -> [u8; 4] {
    crc32c::crc32c(data).to_le_bytes()
}

/// A 64-byte command with opcode, CID and NSID set.
pub fn sqe(opcode: u8, nsid: u32) -> [u8; 64] {
    let mut s = [0u8; 64];
    s[0] = opcode;
    s[4..8].copy_from_slice(&nsid.to_le_bytes());
    s
}

pub fn set_dw(s: &mut [u8; 64], i: usize, v: u32) {
    s[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
}

impl Host {
    pub fn open(port: u16) -> std::io::Result<Host> {
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        sock.set_nodelay(true)?;
        Ok(Host {
            sock,
            hdgst: false,
            ddgst: false,
            cid: 0,
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// Next PDU, digests checked against our own computation.
    pub fn recv(&mut self) -> Result<Pdu, String> {
        let mut ch = [0u8; 8];
        self.sock
            .read_exact(&mut ch)
            .map_err(|e| format!("read header: {e}"))?;
        let (kind, flags, hlen, pdo) = (ch[0], ch[1], ch[2] as usize, ch[3] as usize);
        let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
        if hlen < 8 || plen < hlen || plen > 64 << 20 {
            return Err(format!("bad PDU header {ch:?}"));
        }
        let mut rest = vec![0u8; plen - 8];
        self.sock
            .read_exact(&mut rest)
            .map_err(|e| format!("read PDU body: {e}"))?;
        let mut all = ch.to_vec();
        all.extend_from_slice(&rest);
        let header = all[..hlen].to_vec();
        let mut at = hlen;
        if flags & FLAG_HDGST != 0 {
            if all[at..at + 4] != crc(&header) {
                return Err("header digest mismatch".into());
            }
            at += 4;
        }
        let mut data = Vec::new();
        if pdo != 0 && plen > pdo {
            let end = plen - if flags & FLAG_DDGST != 0 { 4 } else { 0 };
            data = all[pdo..end].to_vec();
            if flags & FLAG_DDGST != 0 && all[end..plen] != crc(&data) {
                return Err("data digest mismatch".into());
            }
        } else if kind == C2H_TERM_REQ || kind == 0x02 {
            data = all[hlen..plen].to_vec();
        }
        let _ = at;
        Ok(Pdu {
            kind,
            flags,
            header,
            data,
        })
    }

    /// A PDU with our digests: `header` is the whole header (hlen bytes,
    /// common header included; plen and pdo are filled in here).
    pub fn pdu(&self, mut header: Vec<u8>, data: &[u8]) -> Vec<u8> {
        let hlen = header.len();
        let hd = if self.hdgst { 4 } else { 0 };
        let dd = if self.ddgst && !data.is_empty() { 4 } else { 0 };
        let pdo = if data.is_empty() { 0 } else { hlen + hd };
        let plen = hlen + hd + data.len() + dd;
        header[1] |= if self.hdgst { FLAG_HDGST } else { 0 } | if dd > 0 { FLAG_DDGST } else { 0 };
        header[2] = hlen as u8;
        header[3] = pdo as u8;
        header[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
        let mut out = header.clone();
        if self.hdgst {
            out.extend_from_slice(&crc(&header));
        }
        out.extend_from_slice(data);
        if dd > 0 {
            out.extend_from_slice(&crc(data));
        }
        out
    }

    /// ICReq asking for the given digests; returns the ICResp (or whatever
    /// came instead).
    pub fn icreq(&mut self, hdgst: bool, ddgst: bool) -> Result<Pdu, String> {
        let mut h = vec![0u8; 128];
        h[0] = ICREQ;
        h[2] = 128;
        h[4..8].copy_from_slice(&128u32.to_le_bytes());
        h[11] = u8::from(hdgst) | u8::from(ddgst) << 1;
        self.send(&h).map_err(|e| e.to_string())?;
        let r = self.recv()?;
        if r.kind == ICRESP {
            self.hdgst = r.header[11] & 1 != 0;
            self.ddgst = r.header[11] & 2 != 0;
        }
        Ok(r)
    }

    /// Sends a command capsule with in-capsule data; returns its CID.
    pub fn capsule(&mut self, mut cmd: [u8; 64], data: &[u8]) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        let cid = self.cid;
        cmd[2..4].copy_from_slice(&cid.to_le_bytes());
        // SGL: data block, offset subtype when in-capsule; transport data
        // block otherwise (the caller sets the length).
        cmd[1] |= 0x40;
        if !data.is_empty() {
            cmd[24..32].fill(0);
            cmd[32..36].copy_from_slice(&(data.len() as u32).to_le_bytes());
            cmd[39] = 0x01;
        } else if cmd[39] == 0 {
            cmd[39] = 0x5a;
        }
        let mut h = vec![0u8; 72];
        h[0] = CAPSULE_CMD;
        h[8..72].copy_from_slice(&cmd);
        let pdu = self.pdu(h, data);
        self.send(&pdu).expect("send capsule");
        cid
    }

    /// Runs one command to completion: answers R2Ts from `out`, gathers
    /// C2HData, returns on the CapsuleResp (or a C2HData with SUCCESS).
    pub fn run(&mut self, cmd: [u8; 64], in_capsule: &[u8], out: &[u8]) -> Result<Done, String> {
        let mut cmd = cmd;
        if !out.is_empty() {
            cmd[32..36].copy_from_slice(&(out.len() as u32).to_le_bytes());
            cmd[39] = 0x5a;
        }
        let cid = self.capsule(cmd, in_capsule);
        let mut data = Vec::new();
        loop {
            let p = self.recv()?;
            match p.kind {
                CAPSULE_RESP if p.cid() == cid => {
                    return Ok(Done {
                        status: p.status(),
                        dw0: p.dw0(),
                        data,
                    });
                }
                C2H_DATA => {
                    let off = p.u32_at(12) as usize;
                    if off != data.len() {
                        return Err(format!("C2HData offset {off}, expected {}", data.len()));
                    }
                    data.extend_from_slice(&p.data);
                    if p.flags & FLAG_SUCCESS != 0 {
                        return Ok(Done {
                            status: 0,
                            dw0: 0,
                            data,
                        });
                    }
                }
                R2T => {
                    let (ttag, off, len) = (p.u16_at(10), p.u32_at(12), p.u32_at(16));
                    let chunk = out
                        .get(off as usize..(off + len) as usize)
                        .ok_or_else(|| format!("R2T outside the data: {off}+{len}"))?;
                    let mut h = vec![0u8; 24];
                    h[0] = H2C_DATA;
                    h[1] = FLAG_LAST;
                    h[8..10].copy_from_slice(&cid.to_le_bytes());
                    h[10..12].copy_from_slice(&ttag.to_le_bytes());
                    h[12..16].copy_from_slice(&off.to_le_bytes());
                    h[16..20].copy_from_slice(&len.to_le_bytes());
                    let pdu = self.pdu(h, chunk);
                    self.send(&pdu).map_err(|e| e.to_string())?;
                }
                other => return Err(format!("unexpected PDU type {other:#x}: {p:?}")),
            }
        }
    }

    /// Fabrics Connect to `subnqn` as `hostnqn`; queue `qid` of controller
    /// `cntlid` (0xffff for a new admin queue). Returns the status and dw0.
    pub fn connect(
        &mut self,
        subnqn: &str,
        hostnqn: &str,
        qid: u16,
        cntlid: u16,
    ) -> Result<Done, String> {
        let mut c = sqe(0x7f, 0);
        c[4] = 0x01;
        set_dw(&mut c, 10, (qid as u32) << 16);
        set_dw(&mut c, 11, 31);
        set_dw(&mut c, 12, if qid == 0 { 30_000 } else { 0 });
        let mut d = vec![0u8; 1024];
        d[0..16].copy_from_slice(b"ironbay-test-hid");
        d[16..18].copy_from_slice(&cntlid.to_le_bytes());
        d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        d[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
        self.run(c, &d, &[])
    }

    /// Fabrics Property Get (8 bytes for CAP, 4 otherwise).
    pub fn property_get(&mut self, offset: u32) -> Result<Done, String> {
        let mut c = sqe(0x7f, 0);
        c[4] = 0x04;
        set_dw(&mut c, 10, u32::from(offset == 0));
        set_dw(&mut c, 11, offset);
        self.run(c, &[], &[])
    }

    pub fn property_set(&mut self, offset: u32, value: u32) -> Result<Done, String> {
        let mut c = sqe(0x7f, 0);
        c[4] = 0x00;
        set_dw(&mut c, 11, offset);
        set_dw(&mut c, 12, value);
        self.run(c, &[], &[])
    }

    /// A command that returns `len` bytes to the host.
    pub fn fetch(&mut self, mut cmd: [u8; 64], len: u32) -> Result<Done, String> {
        cmd[32..36].copy_from_slice(&len.to_le_bytes());
        cmd[39] = 0x5a;
        self.run(cmd, &[], &[])
    }

    /// An admin queue on `subnqn`, enabled (CC.EN = 1, CSTS.RDY seen).
    pub fn admin_queue(port: u16, subnqn: &str, hostnqn: &str) -> Result<(Host, u16), String> {
        let mut h = Host::open(port).map_err(|e| e.to_string())?;
        h.icreq(false, false)?;
        let c = h.connect(subnqn, hostnqn, 0, 0xffff)?;
        if c.status != 0 {
            return Err(format!("connect status {:#x}", c.status));
        }
        let cntlid = c.dw0 as u16;
        // CC: EN, IOSQES 6, IOCQES 4.
        let s = h.property_set(0x14, 1 | 6 << 16 | 4 << 20)?;
        if s.status != 0 {
            return Err(format!("CC.EN status {:#x}", s.status));
        }
        Ok((h, cntlid))
    }
}
