//! The console: COM1 at 115200 8N1 behind the `log` facade.
//!
//! Each record is one line, `[seconds.micros] LEVEL module: message`, written
//! to the serial port and, once the heap exists, kept in a [`LogRing`] that the
//! management API serves. Fatal paths use [`emergency`], which bypasses the
//! lock so a fault taken while logging still gets reported.

use core::fmt::{self, Write};
use ironbay_platform::logring::LogRing;
use log::{Level, LevelFilter, Log, Metadata, Record};
use spin::Mutex;
use uart_16550::BaudRate;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

const COM1: u16 = 0x3f8;
/// Bytes of log kept in memory.
const RING_BYTES: usize = 256 * 1024;
const LINE_MAX: usize = 1024;

static SERIAL: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);
static RING: Mutex<Option<LogRing>> = Mutex::new(None);
static LOGGER: Logger = Logger;

struct Logger;

/// Brings up COM1 and installs the logger at `info`.
pub fn init() {
    // SAFETY: COM1's eight registers at 0x3f8 belong to this driver alone for
    // the kernel's lifetime; nothing else in the kernel touches those ports.
    let port = unsafe { Uart16550::new_port(COM1) };
    if let Ok(mut uart) = port {
        let config = Config {
            baud_rate: BaudRate::Baud115200,
            ..Config::DEFAULT
        };
        if uart.init(config).is_ok() {
            *SERIAL.lock() = Some(uart);
        }
    }
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

/// Starts keeping lines in memory; called once the heap is up.
pub fn enable_ring() {
    *RING.lock() = Some(LogRing::new(RING_BYTES));
}

pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// Runs `f` over the lines kept in memory (oldest first).
#[allow(dead_code, reason = "served by the management API in a later stage")]
pub fn with_ring<R>(f: impl FnOnce(Option<&LogRing>) -> R) -> R {
    f(RING.lock().as_ref())
}

/// Writes raw text to the serial port (for banners and tables).
pub fn write_str(s: &str) {
    with_serial(|uart| send(uart, s.as_bytes()));
}

/// Holds the port with interrupts off, so a handler that logs cannot spin on
/// a lock its own CPU holds.
fn with_serial(f: impl FnOnce(&mut Uart16550<PioBackend>)) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(uart) = SERIAL.lock().as_mut() {
            f(uart);
        }
    });
}

fn send(uart: &mut Uart16550<PioBackend>, bytes: &[u8]) {
    for chunk in bytes.split_inclusive(|&b| b == b'\n') {
        let (body, nl) = match chunk.split_last() {
            Some((b'\n', body)) => (body, true),
            _ => (chunk, false),
        };
        uart.send_bytes_exact(body);
        if nl {
            uart.send_bytes_exact(b"\r\n");
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = Line::default();
        let us = crate::time::uptime_us();
        let module = record.target();
        let module = module
            .strip_prefix("ironbay::")
            .or_else(|| module.strip_prefix("ironbay_"))
            .unwrap_or(module);
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let _ = write!(
            line,
            "[{:5}.{:06}] {level} {module}: {}",
            us / 1_000_000,
            us % 1_000_000,
            record.args()
        );
        x86_64::instructions::interrupts::without_interrupts(|| {
            if let Some(mut ring) = RING.try_lock()
                && let Some(ring) = ring.as_mut()
            {
                ring.push(line.as_str());
            }
        });
        with_serial(|uart| {
            send(uart, line.as_str().as_bytes());
            send(uart, b"\n");
        });
    }

    fn flush(&self) {}
}

/// A line buffer that cuts overlong messages instead of failing.
#[derive(Default)]
struct Line {
    buf: heapless::String<LINE_MAX>,
    cut: bool,
}

impl Line {
    fn as_str(&self) -> &str {
        &self.buf
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.cut || self.buf.len() + c.len_utf8() > LINE_MAX - 4 {
                if !self.cut {
                    let _ = self.buf.push_str(" ...");
                    self.cut = true;
                }
                return Ok(());
            }
            let _ = self.buf.push(c);
        }
        Ok(())
    }
}

/// A writer straight to COM1 that does not take the console lock.
pub struct Emergency(Option<Uart16550<PioBackend>>);

pub fn emergency() -> Emergency {
    // SAFETY: port I/O to COM1 has no memory-safety effect; at worst this
    // interleaves bytes with a writer interrupted mid-line, which is acceptable
    // on the way to a halt.
    Emergency(unsafe { Uart16550::new_port(COM1) }.ok())
}

impl Write for Emergency {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(uart) = self.0.as_mut() {
            send(uart, s.as_bytes());
        }
        Ok(())
    }
}
