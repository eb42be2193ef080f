//! virtio-net through virtio-drivers' `VirtIONetRaw`, as an `ironbay_net` NIC.

use super::virtio::Hal;
use ironbay_net::NetDriver;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::PciTransport;

/// Descriptors per virtqueue.
pub const QUEUE_SIZE: usize = 256;

pub struct VirtioNic {
    raw: VirtIONetRaw<Hal, PciTransport, QUEUE_SIZE>,
    header: usize,
}

impl VirtioNic {
    pub fn new(transport: PciTransport) -> Result<Self, virtio_drivers::Error> {
        let raw = VirtIONetRaw::new(transport)?;
        // The header size depends on the negotiated features; ask the driver.
        let mut probe = [0u8; 64];
        let header = raw.fill_buffer_header(&mut probe)?;
        Ok(VirtioNic { raw, header })
    }
}

// SAFETY: every method forwards to VirtIONetRaw, whose own contract is the
// one NetDriver states (buffers stay with the device until completed).
unsafe impl NetDriver for VirtioNic {
    fn mac(&self) -> [u8; 6] {
        self.raw.mac_address()
    }

    fn header_len(&self) -> usize {
        self.header
    }

    unsafe fn rx_begin(&mut self, buf: &mut [u8]) -> Option<u16> {
        // SAFETY: the caller keeps `buf` for the device until rx_complete.
        unsafe { self.raw.receive_begin(buf) }.ok()
    }

    fn rx_ready(&mut self) -> Option<u16> {
        self.raw.poll_receive()
    }

    unsafe fn rx_complete(&mut self, token: u16, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: the caller passes the buffer posted under `token`.
        unsafe { self.raw.receive_complete(token, buf) }
            .ok()
            .map(|(_, len)| len)
    }

    unsafe fn tx_begin(&mut self, buf: &[u8]) -> Option<u16> {
        // SAFETY: the caller keeps `buf` unmodified until tx_complete.
        unsafe { self.raw.transmit_begin(buf) }.ok()
    }

    fn tx_done(&mut self) -> Option<u16> {
        self.raw.poll_transmit()
    }

    unsafe fn tx_complete(&mut self, token: u16, buf: &[u8]) {
        // SAFETY: the caller passes the buffer sent under `token`.
        let _ = unsafe { self.raw.transmit_complete(token, buf) };
    }
}
