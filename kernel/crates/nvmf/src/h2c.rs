//! H2CData PDUs: the header is checked once it is in, then the data goes
//! straight into the command's granted buffers as it arrives, its digest
//! computed on the way. No PDU-sized buffer is ever assembled, so MAXH2CDATA
//! costs no memory beyond what the R2T grant already holds.

use crate::conn::{Connection, Stage, TRANSIENT_TRANSPORT_ERROR, TTAG_SLOT_MASK};
use crate::pdu::{self, Common, DIGEST_LEN, fes, flag};
use crate::target::Target;
use ironbay_bdev::Registry;
use ironbay_crc::{crc32c, crc32c_append};

/// The H2CData PDU whose data is coming in.
pub(crate) struct Incoming {
    slot: usize,
    generation: u8,
    ttag: u16,
    /// Where the next byte goes in the command's data.
    at: usize,
    /// Data bytes still to come.
    left: usize,
    datal: u32,
    /// The last PDU of its R2T window.
    last: bool,
    crc: u32,
    /// The data digest, as much of it as arrived.
    digest: [u8; DIGEST_LEN],
    digest_got: usize,
}

impl Connection {
    /// The header of an H2CData PDU (everything before its data): checked
    /// against the command's R2T windows before any data is taken.
    pub(crate) fn h2c_head(&mut self, raw: &[u8]) {
        let Some(c) = Common::parse(raw) else {
            return;
        };
        let hlen = c.hlen as usize;
        if self.hd {
            let want = pdu::le32(raw, hlen);
            let got = raw.get(..hlen).map_or(0, crc32c);
            if want != got {
                return self.terminate(fes::HEADER_DIGEST, 0, raw, "header digest error");
            }
        }
        // check_header made sure data follows PDO.
        let data_len = (c.plen as usize).saturating_sub(c.pdo as usize + self.dd_len());
        let h = pdu::H2cData::parse(raw);
        let i = (h.ttag & TTAG_SLOT_MASK) as usize;
        let generation = self.slots.generation(i as u16);
        let found = match self.slots.get(i as u16) {
            Some(cmd) if cmd.stage == Stage::Receiving => {
                if cmd.sqe.cid() != h.cccid {
                    return self.terminate(
                        fes::INVALID_HEADER_FIELD,
                        pdu::at::CCCID,
                        raw,
                        "H2CData for an unknown command",
                    );
                }
                cmd.windows
                    .iter()
                    .find(|w| w.0 == h.ttag)
                    .map(|w| (generation, *w))
            }
            _ => None,
        };
        let Some((generation, (_, off, len, got))) = found else {
            return self.terminate(
                fes::INVALID_HEADER_FIELD,
                pdu::at::TTAG,
                raw,
                "H2CData for an unknown transfer tag",
            );
        };
        if h.datal as usize != data_len {
            return self.terminate(
                fes::INVALID_HEADER_FIELD,
                pdu::at::DATAL,
                raw,
                "H2CData length does not match the PDU",
            );
        }
        let expect = off.saturating_add(got);
        let end = expect.saturating_add(h.datal);
        if h.datao != expect || end > off.saturating_add(len) {
            return self.terminate(
                fes::OUT_OF_RANGE,
                pdu::at::DATAO,
                raw,
                "H2CData outside the R2T window",
            );
        }
        let last = end == off.saturating_add(len);
        if (c.flags & flag::LAST_PDU != 0) != last {
            return self.terminate(fes::SEQUENCE_ERROR, 0, raw, "H2CData LAST_PDU misplaced");
        }
        self.h2c = Some(Incoming {
            slot: i,
            generation,
            ttag: h.ttag,
            at: h.datao as usize,
            left: data_len,
            datal: h.datal,
            last,
            crc: 0,
            digest: [0; DIGEST_LEN],
            digest_got: if self.dd { 0 } else { DIGEST_LEN },
        });
    }

    /// Data (then digest) bytes of the H2CData PDU coming in; returns how
    /// many it took.
    pub(crate) fn h2c_stream(
        &mut self,
        bytes: &[u8],
        target: &mut Target,
        bdevs: &Registry,
    ) -> usize {
        let Some(mut inc) = self.h2c.take() else {
            return 0;
        };
        let mut used = inc.left.min(bytes.len());
        if used > 0 {
            let piece = &bytes[..used];
            if self.dd {
                inc.crc = crc32c_append(inc.crc, piece);
            }
            // A command aborted meanwhile takes nothing.
            if self.slots.is_current(inc.slot as u16, inc.generation)
                && let Some(c) = self.slots.get_mut(inc.slot as u16)
            {
                c.put(inc.at, piece);
            }
            inc.at += used;
            inc.left -= used;
        }
        if inc.left == 0 && inc.digest_got < DIGEST_LEN {
            let n = (DIGEST_LEN - inc.digest_got).min(bytes.len() - used);
            inc.digest[inc.digest_got..inc.digest_got + n].copy_from_slice(&bytes[used..used + n]);
            inc.digest_got += n;
            used += n;
        }
        if inc.left > 0 || inc.digest_got < DIGEST_LEN {
            self.h2c = Some(inc);
            return used;
        }
        let digest_ok = !self.dd || u32::from_le_bytes(inc.digest) == inc.crc;
        self.h2c_done(&inc, digest_ok, target, bdevs);
        used
    }

    /// A whole H2CData PDU is in: account for it, ask for more data or run
    /// the command.
    fn h2c_done(&mut self, inc: &Incoming, digest_ok: bool, target: &mut Target, bdevs: &Registry) {
        let i = inc.slot;
        let now = self.now;
        if !self.slots.is_current(i as u16, inc.generation) {
            return;
        }
        let Some(cmd) = self.slots.get_mut(i as u16) else {
            return;
        };
        if cmd.stage != Stage::Receiving {
            return;
        }
        let Some(k) = cmd.windows.iter().position(|w| w.0 == inc.ttag) else {
            return;
        };
        if !digest_ok {
            // The data already in the buffer never reaches the device.
            cmd.failed.get_or_insert(TRANSIENT_TRANSPORT_ERROR);
        }
        cmd.got += inc.datal as usize;
        cmd.data_since = now;
        if let Some(w) = cmd.windows.get_mut(k) {
            w.3 = w.3.saturating_add(inc.datal);
        }
        if !inc.last {
            return;
        }
        cmd.windows.remove(k);
        if !cmd.windows.is_empty() {
            return self.send_r2ts(i);
        }
        // With a digest error no further R2Ts go out: answer once the
        // outstanding ones are in.
        if let Some(st) = cmd.failed {
            return self.complete(i, st, 0, 0);
        }
        if cmd.got < cmd.want {
            return self.send_r2ts(i);
        }
        cmd.stage = Stage::Running;
        if let Err(st) = self.ready(i, target, bdevs) {
            self.complete(i, st, 0, 0);
        }
    }
}
