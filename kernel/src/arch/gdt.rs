//! The long-mode GDT with a TSS whose IST gives double faults and NMIs their
//! own stacks, so a kernel stack overflow still gets reported.

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

pub const DOUBLE_FAULT_IST: u16 = 0;
pub const NMI_IST: u16 = 1;
const IST_STACK: usize = 32 * 1024;

// The CPU aligns the stack to 16 bytes itself when it switches to an IST stack.
static mut DOUBLE_FAULT_STACK: [u8; IST_STACK] = [0; IST_STACK];
static mut NMI_STACK: [u8; IST_STACK] = [0; IST_STACK];

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(
    GlobalDescriptorTable,
    SegmentSelector,
    SegmentSelector,
    SegmentSelector,
)> = Once::new();

pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let top = |s: *const [u8; IST_STACK]| VirtAddr::from_ptr(s) + IST_STACK as u64;
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = top(&raw const DOUBLE_FAULT_STACK);
        tss.interrupt_stack_table[NMI_IST as usize] = top(&raw const NMI_STACK);
        tss
    });
    let (gdt, code, data, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, data, tss_sel)
    });
    gdt.load();
    // SAFETY: the selectors come from the GDT just loaded, which lives in a
    // static for the rest of the kernel's life; the TSS selector names a valid
    // TSS descriptor.
    unsafe {
        CS::set_reg(*code);
        DS::set_reg(*data);
        ES::set_reg(*data);
        SS::set_reg(*data);
        load_tss(*tss_sel);
    }
}
