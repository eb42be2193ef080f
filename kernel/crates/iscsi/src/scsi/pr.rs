//! Reservations of one logical unit: persistent reservations (SPC-4 5.14,
//! PERSISTENT RESERVE IN / OUT), SPC-2 RESERVE / RELEASE, and the conflict
//! rules every command meets.
//!
//! Registrations belong to an initiator port (`<name>,i,0x<isid>`, the one
//! target port being implied), so they outlive sessions; an SPC-2
//! reservation belongs to one I_T nexus (a session) and ends with it or
//! with a reset. Not offered: persistence through power loss (APTPL),
//! SPEC_I_PT, ALL_TG_PT, REGISTER AND MOVE and REPLACE LOST RESERVATION.
//! RESERVE / RELEASE follow the CRH exceptions (SPC-4 5.14.3): from a
//! persistent reservation holder they succeed without effect.

use super::cdb::{Cdb, be_at, op};
use super::sense::{Sense, asc};
use super::{Failure, NexusState, UnitAttention, status};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Registrations one LU keeps; one more gets INSUFFICIENT REGISTRATION
/// RESOURCES.
pub const MAX_REGISTRATIONS: usize = 128;
/// Unit attentions kept for initiator ports that have not picked them up.
const MAX_PENDING_UAS: usize = 2 * MAX_REGISTRATIONS;
/// Longest PERSISTENT RESERVE OUT parameter list taken in: only the basic
/// 24 bytes are valid, a longer one is read to tell SPEC_I_PT apart.
pub const MAX_OUT_LIST: usize = 4096;
const BASIC_LIST: usize = 24;
/// Relative port identifier of the target port (device identification).
const TARGET_PORT: u16 = 1;

/// The iSCSI initiator port name of a session: what registrations belong
/// to and what READ FULL STATUS reports.
pub fn initiator_port(name: &str, isid: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = isid;
    alloc::format!("{name},i,0x{a:02x}{b:02x}{c:02x}{d:02x}{e:02x}{f:02x}")
}

/// Who sends a command: its initiator port and its I_T nexus.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Nexus<'a> {
    pub port: &'a str,
    pub id: u64,
}

/// Persistent reservation types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl Kind {
    fn from_code(t: u8) -> Option<Kind> {
        Some(match t {
            1 => Kind::WriteExclusive,
            3 => Kind::ExclusiveAccess,
            5 => Kind::WriteExclusiveRegistrantsOnly,
            6 => Kind::ExclusiveAccessRegistrantsOnly,
            7 => Kind::WriteExclusiveAllRegistrants,
            8 => Kind::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    fn code(self) -> u8 {
        match self {
            Kind::WriteExclusive => 1,
            Kind::ExclusiveAccess => 3,
            Kind::WriteExclusiveRegistrantsOnly => 5,
            Kind::ExclusiveAccessRegistrantsOnly => 6,
            Kind::WriteExclusiveAllRegistrants => 7,
            Kind::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// Every registrant is a holder.
    fn all_registrants(self) -> bool {
        matches!(
            self,
            Kind::WriteExclusiveAllRegistrants | Kind::ExclusiveAccessAllRegistrants
        )
    }

    fn registrants_only(self) -> bool {
        matches!(
            self,
            Kind::WriteExclusiveRegistrantsOnly | Kind::ExclusiveAccessRegistrantsOnly
        )
    }

    /// Others may still read.
    fn write_exclusive(self) -> bool {
        matches!(
            self,
            Kind::WriteExclusive
                | Kind::WriteExclusiveRegistrantsOnly
                | Kind::WriteExclusiveAllRegistrants
        )
    }
}

#[derive(Debug)]
struct Registration {
    port: String,
    key: u64,
}

#[derive(Debug)]
struct Held {
    /// The holder (for all-registrants types, the port that reserved).
    port: String,
    kind: Kind,
}

/// How a command fares under reservations held by others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Never held off (and commands the target does not know: they get
    /// INVALID COMMAND OPERATION CODE).
    Always,
    /// Held off by SPC-2 reservations only.
    Free,
    /// Held off by exclusive access types.
    Read,
    Write,
    Reserve,
    Release,
}

fn access(c: Cdb<'_>) -> Access {
    use op::*;
    match c.opcode() {
        TEST_UNIT_READY | READ_CAPACITY_10 | PERSISTENT_RESERVE_IN | PERSISTENT_RESERVE_OUT => {
            Access::Free
        }
        SERVICE_ACTION_IN_16 if c.sa() == SA_READ_CAPACITY_16 => Access::Free,
        // Spinning up is harmless; stopping or power changes are not.
        START_STOP_UNIT if c.b(4) & 0xf1 == 0x01 => Access::Free,
        READ_6 | READ_10 | READ_12 | READ_16 | VERIFY_10 | VERIFY_12 | VERIFY_16 | PRE_FETCH_10
        | PRE_FETCH_16 | MODE_SENSE_6 | MODE_SENSE_10 | MAINTENANCE_IN | SERVICE_ACTION_IN_16
        | READ_DEFECT_DATA_10 | READ_DEFECT_DATA_12 => Access::Read,
        WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16 | WRITE_VERIFY_10 | WRITE_VERIFY_12
        | WRITE_VERIFY_16 | WRITE_SAME_10 | WRITE_SAME_16 | UNMAP | COMPARE_AND_WRITE
        | ORWRITE_16 | WRITE_ATOMIC_16 | SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16
        | MODE_SELECT_6 | MODE_SELECT_10 | START_STOP_UNIT => Access::Write,
        RESERVE_6 | RESERVE_10 => Access::Reserve,
        RELEASE_6 | RELEASE_10 => Access::Release,
        _ => Access::Always,
    }
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The reservation state of one LU.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    /// PRgeneration.
    generation: u32,
    regs: Vec<Registration>,
    held: Option<Held>,
    /// The I_T nexus holding an SPC-2 reservation.
    spc2: Option<u64>,
    /// Unit attentions for initiator ports, until their nexus picks them up.
    ua: Vec<(String, UnitAttention)>,
}

impl Reservations {
    fn key_of(&self, port: &str) -> Option<u64> {
        self.regs
            .iter()
            .find(|r| same(&r.port, port))
            .map(|r| r.key)
    }

    fn is_holder(&self, port: &str, h: &Held) -> bool {
        if h.kind.all_registrants() {
            self.key_of(port).is_some()
        } else {
            same(&h.port, port)
        }
    }

    /// Whether `c` from `who` ends in RESERVATION CONFLICT.
    pub fn conflicts(&self, who: Nexus<'_>, c: Cdb<'_>) -> bool {
        if self.regs.is_empty() && self.held.is_none() && self.spc2.is_none() {
            return false;
        }
        let a = access(c);
        if self.spc2.is_some_and(|h| h != who.id) {
            // RELEASE passes, to do nothing.
            return !matches!(a, Access::Always | Access::Release);
        }
        let Some(h) = &self.held else {
            // Registrations alone only hold off RESERVE and RELEASE.
            return matches!(a, Access::Reserve | Access::Release) && !self.regs.is_empty();
        };
        let registered = self.key_of(who.port).is_some();
        if self.is_holder(who.port, h) || (registered && h.kind.registrants_only()) {
            return false;
        }
        match a {
            Access::Always | Access::Free => false,
            Access::Read => !h.kind.write_exclusive(),
            Access::Write | Access::Reserve | Access::Release => true,
        }
    }

    /// Moves unit attentions waiting for `port` to its nexus.
    pub fn take_uas(&mut self, port: &str, nexus: &mut NexusState) {
        if self.ua.is_empty() {
            return;
        }
        self.ua.retain(|(p, ua)| {
            let mine = same(p, port);
            if mine {
                nexus.raise(*ua);
            }
            !mine
        });
    }

    fn tell(&mut self, port: &str, ua: UnitAttention) {
        if self.ua.iter().any(|(p, u)| *u == ua && same(p, port)) {
            return;
        }
        if self.ua.len() >= MAX_PENDING_UAS {
            self.ua.remove(0);
        }
        self.ua.push((port.into(), ua));
    }

    /// Tells every registrant but `except`.
    fn tell_registrants(&mut self, except: &str, ua: UnitAttention) {
        let ports: Vec<String> = self
            .regs
            .iter()
            .filter(|r| !same(&r.port, except))
            .map(|r| r.port.clone())
            .collect();
        for p in ports {
            self.tell(&p, ua);
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    // SPC-2.

    /// RESERVE(6) / RESERVE(10) that passed [`Reservations::conflicts`]:
    /// with registrations present it does nothing.
    pub fn reserve2(&mut self, nexus: u64) {
        if self.regs.is_empty() {
            self.spc2 = Some(nexus);
        }
    }

    /// RELEASE(6) / RELEASE(10): ends this nexus' SPC-2 reservation, if any.
    pub fn release2(&mut self, nexus: u64) {
        if self.spc2 == Some(nexus) {
            self.spc2 = None;
        }
    }

    /// The I_T nexus ended: its SPC-2 reservation goes.
    pub fn nexus_lost(&mut self, nexus: u64) {
        self.release2(nexus);
    }

    /// LOGICAL UNIT RESET or a target reset: SPC-2 reservations end,
    /// persistent ones stay.
    pub fn reset(&mut self) {
        self.spc2 = None;
    }

    // PERSISTENT RESERVE IN.

    /// Parameter data of PERSISTENT RESERVE IN service action `sa`.
    pub fn read(&self, sa: u16) -> Result<Vec<u8>, Sense> {
        let mut d = self.generation.to_be_bytes().to_vec();
        match sa {
            op::PRIN_READ_KEYS => {
                d.extend(((8 * self.regs.len()) as u32).to_be_bytes());
                for r in &self.regs {
                    d.extend(r.key.to_be_bytes());
                }
            }
            op::PRIN_READ_RESERVATION => match &self.held {
                None => d.extend(0u32.to_be_bytes()),
                Some(h) => {
                    d.extend(16u32.to_be_bytes());
                    let key = if h.kind.all_registrants() {
                        0
                    } else {
                        self.key_of(&h.port).unwrap_or(0)
                    };
                    d.extend(key.to_be_bytes());
                    d.extend([0u8; 5]);
                    // LU scope.
                    d.push(h.kind.code());
                    d.extend([0u8; 2]);
                }
            },
            op::PRIN_REPORT_CAPABILITIES => return Ok(capabilities()),
            op::PRIN_READ_FULL_STATUS => {
                let mut list = Vec::new();
                for r in &self.regs {
                    let holder = self.held.as_ref().filter(|h| self.is_holder(&r.port, h));
                    list.extend(r.key.to_be_bytes());
                    list.extend([0u8; 4]);
                    // ALL_TG_PT clear, R_HOLDER; scope and type of a holder.
                    list.push(u8::from(holder.is_some()));
                    list.push(holder.map_or(0, |h| h.kind.code()));
                    list.extend([0u8; 4]);
                    list.extend(TARGET_PORT.to_be_bytes());
                    let id = transport_id(&r.port);
                    list.extend((id.len() as u32).to_be_bytes());
                    list.extend(id);
                }
                d.extend((list.len() as u32).to_be_bytes());
                d.extend(list);
            }
            _ => return Err(Sense::invalid_cdb(1, Some(4))),
        }
        Ok(d)
    }

    // PERSISTENT RESERVE OUT.

    /// Runs PERSISTENT RESERVE OUT service action `sa` for `port`, with the
    /// CDB's scope and type byte and the parameter list `d`.
    pub fn update(&mut self, port: &str, sa: u16, scope_type: u8, d: &[u8]) -> Result<(), Failure> {
        let length_error = Failure::Check(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        let (Some(rk), Some(sark), Some(&flags)) = (be_at(d, 0, 8), be_at(d, 8, 8), d.get(20))
        else {
            return Err(length_error);
        };
        let register = matches!(sa, op::PROUT_REGISTER | op::PROUT_REGISTER_AND_IGNORE);
        if flags & 0x08 != 0 {
            // SPEC_I_PT: not offered.
            return Err(Sense::invalid_param(20, Some(3)).into());
        }
        if d.len() != BASIC_LIST {
            return Err(length_error);
        }
        if register && flags & 0x04 != 0 {
            // ALL_TG_PT: not offered.
            return Err(Sense::invalid_param(20, Some(2)).into());
        }
        if register && flags & 0x01 != 0 {
            // APTPL: not offered.
            return Err(Sense::invalid_param(20, Some(0)).into());
        }
        let conflict = Failure::Status(status::RESERVATION_CONFLICT);
        let mine = self.key_of(port);
        if register {
            if sa == op::PROUT_REGISTER && mine.unwrap_or(0) != rk {
                return Err(conflict);
            }
            return self.register(port, mine.is_some(), sark);
        }
        // Everything else is for registrants with their key.
        if mine != Some(rk) {
            return Err(conflict);
        }
        let kind = Kind::from_code(scope_type & 0x0f);
        let bad_type = Failure::Check(Sense::invalid_cdb(2, Some(3)));
        match sa {
            op::PROUT_RESERVE => self.reserve(port, kind.ok_or(bad_type)?),
            op::PROUT_RELEASE => self.release(port, kind.ok_or(bad_type)?),
            op::PROUT_CLEAR => {
                self.clear(port);
                Ok(())
            }
            // PREEMPT AND ABORT does not abort the preempted nexus' tasks.
            op::PROUT_PREEMPT | op::PROUT_PREEMPT_AND_ABORT => {
                self.preempt(port, sark, kind.ok_or(bad_type)?)
            }
            _ => Err(Sense::invalid_cdb(1, Some(4)).into()),
        }
    }

    fn register(&mut self, port: &str, registered: bool, key: u64) -> Result<(), Failure> {
        if key == 0 {
            if registered {
                self.unregister(port);
                self.bump();
            }
            return Ok(());
        }
        let full = self.regs.len() >= MAX_REGISTRATIONS;
        match self.regs.iter_mut().find(|r| same(&r.port, port)) {
            Some(r) => r.key = key,
            None if full => {
                return Err(Sense::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES).into());
            }
            None => self.regs.push(Registration {
                port: port.into(),
                key,
            }),
        }
        self.bump();
        Ok(())
    }

    /// Drops `port`'s registration, and the reservation if that was its
    /// holder's hold on it.
    fn unregister(&mut self, port: &str) {
        self.regs.retain(|r| !same(&r.port, port));
        let Some(h) = &self.held else { return };
        if h.kind.all_registrants() {
            if self.regs.is_empty() {
                self.held = None;
            }
        } else if same(&h.port, port) {
            let kind = h.kind;
            self.held = None;
            if kind.registrants_only() {
                self.tell_registrants(port, UnitAttention::ReservationsReleased);
            }
        }
    }

    fn reserve(&mut self, port: &str, kind: Kind) -> Result<(), Failure> {
        match &self.held {
            None => {
                self.held = Some(Held {
                    port: port.into(),
                    kind,
                });
                Ok(())
            }
            Some(h) if h.kind == kind && self.is_holder(port, h) => Ok(()),
            Some(_) => Err(Failure::Status(status::RESERVATION_CONFLICT)),
        }
    }

    fn release(&mut self, port: &str, kind: Kind) -> Result<(), Failure> {
        let Some(h) = &self.held else { return Ok(()) };
        if !self.is_holder(port, h) {
            return Ok(());
        }
        if h.kind != kind {
            return Err(Sense::illegal(asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION).into());
        }
        self.held = None;
        if kind.registrants_only() || kind.all_registrants() {
            self.tell_registrants(port, UnitAttention::ReservationsReleased);
        }
        Ok(())
    }

    fn clear(&mut self, port: &str) {
        self.tell_registrants(port, UnitAttention::ReservationsPreempted);
        self.regs.clear();
        self.held = None;
        self.bump();
    }

    fn preempt(&mut self, port: &str, sark: u64, kind: Kind) -> Result<(), Failure> {
        let zero_key = Failure::Check(Sense::invalid_param(8, None));
        // Whether the reservation passes to the preempting port.
        let takes_over = match &self.held {
            None if sark == 0 => return Err(zero_key),
            None => false,
            Some(h) if h.kind.all_registrants() => sark == 0,
            Some(_) if sark == 0 => return Err(zero_key),
            Some(h) => self.key_of(&h.port) == Some(sark),
        };
        // Zero (all-registrants takeover) removes every other registrant.
        let everyone = sark == 0;
        if !everyone && !self.regs.iter().any(|r| r.key == sark) {
            return Err(Failure::Status(status::RESERVATION_CONFLICT));
        }
        // The preempting port keeps its own registration whatever its key.
        let lost: Vec<String> = self
            .regs
            .iter()
            .filter(|r| !same(&r.port, port) && (everyone || r.key == sark))
            .map(|r| r.port.clone())
            .collect();
        self.regs.retain(|r| !lost.iter().any(|p| same(p, &r.port)));
        for p in &lost {
            self.tell(p, UnitAttention::RegistrationsPreempted);
        }
        if takes_over {
            let changed = self.held.as_ref().is_some_and(|h| h.kind != kind);
            self.held = Some(Held {
                port: port.into(),
                kind,
            });
            if changed {
                self.tell_registrants(port, UnitAttention::ReservationsReleased);
            }
        }
        self.bump();
        Ok(())
    }
}

/// Checks a PERSISTENT RESERVE OUT CDB: service action, scope and type.
pub(super) fn check_out_cdb(c: Cdb<'_>) -> Result<(), Sense> {
    match c.sa() {
        op::PROUT_RESERVE | op::PROUT_RELEASE | op::PROUT_PREEMPT | op::PROUT_PREEMPT_AND_ABORT => {
            if c.b(2) >> 4 != 0 {
                // Only LU scope.
                return Err(Sense::invalid_cdb(2, Some(7)));
            }
            if Kind::from_code(c.b(2) & 0x0f).is_none() {
                return Err(Sense::invalid_cdb(2, Some(3)));
            }
            Ok(())
        }
        op::PROUT_REGISTER | op::PROUT_CLEAR | op::PROUT_REGISTER_AND_IGNORE => Ok(()),
        _ => Err(Sense::invalid_cdb(1, Some(4))),
    }
}

/// REPORT CAPABILITIES parameter data.
fn capabilities() -> Vec<u8> {
    let mut d = vec![0u8; 8];
    d[1] = 8;
    // CRH; no SIP_C, ATP_C or PTPL_C.
    d[2] = 0x10;
    // TMV; ALLOW COMMANDS 011b: TEST UNIT READY passes every reservation,
    // MODE SENSE, REPORT SUPPORTED OPERATION CODES and READ DEFECT DATA
    // pass write exclusive ones. PTPL_A clear.
    d[3] = 0x80 | 0x30;
    // Every type: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
    d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
    d[5] = 0x01;
    d
}

/// iSCSI TransportID of an initiator port (format 01b: name, ",i,0x",
/// ISID), padded to a multiple of four.
fn transport_id(port: &str) -> Vec<u8> {
    let mut name: Vec<u8> = port.bytes().collect();
    name.push(0);
    while name.len() < 20 || !name.len().is_multiple_of(4) {
        name.push(0);
    }
    let mut t = vec![0x45, 0];
    t.extend((name.len() as u16).to_be_bytes());
    t.extend(name);
    t
}
