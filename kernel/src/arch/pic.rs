//! The legacy 8259 PICs: remapped away from the exception vectors and masked.
//! Devices interrupt through the local APIC and MSI/MSI-X instead.

use x86_64::instructions::port::Port;

pub fn disable() {
    let ports = [0x20u16, 0x21, 0xA0, 0xA1];
    let [mut cmd1, mut data1, mut cmd2, mut data2] = ports.map(Port::<u8>::new);
    // SAFETY: these are the 8259 ports on every PC-compatible machine; the
    // sequence is the standard ICW1-4 initialisation, leaving every line masked.
    unsafe {
        cmd1.write(0x11);
        cmd2.write(0x11);
        data1.write(0x20); // master vectors 0x20..0x27
        data2.write(0x28); // slave vectors 0x28..0x2f
        data1.write(4);
        data2.write(2);
        data1.write(1);
        data2.write(1);
        data1.write(0xff);
        data2.write(0xff);
    }
}
