/*
 * ironbay 32-bit entry.
 *
 * Two doors into one path:
 *   mb_entry  - Multiboot1 (QEMU -kernel, iPXE): eax = 0x2BADB002, ebx = info.
 *   pvh_entry - Xen PVH direct boot: ebx = hvm_start_info.
 * Both arrive in flat 32-bit protected mode with paging off. We record the TSC,
 * identity-map the first 4 GiB with 2 MiB pages (the default TCG CPU has no
 * 1 GiB pages), enter long mode and call
 *   kernel_entry(protocol: u32, info: u32, magic: u32)
 * with protocol 1 = Multiboot, 2 = PVH.
 */

.set MB_MAGIC,    0x1BADB002
.set MB_FLAGS,    0x00010003      /* page-align modules, memory info, address fields */
.set PROTO_MB,    1
.set PROTO_PVH,   2

.section .multiboot, "a"
.p2align 2
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long mb_header          /* header_addr */
    .long __image_start      /* load_addr */
    .long __data_end         /* load_end_addr */
    .long __image_end        /* bss_end_addr */
    .long mb_entry           /* entry_addr */

.section .note.Xen, "a", @note
.p2align 2
    .long 4                  /* namesz */
    .long 4                  /* descsz */
    .long 18                 /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_entry
    .p2align 2

.section .boot.text, "ax"
.code32
.global mb_entry
mb_entry:
    cli
    cld
    mov %eax, %esi
    mov $PROTO_MB, %edi
    jmp common32

.global pvh_entry
pvh_entry:
    cli
    cld
    xor %esi, %esi
    mov $PROTO_PVH, %edi

common32:
    /* Boot timestamp first: the TSC counts from machine reset. */
    rdtsc
    mov %eax, boot_tsc
    mov %edx, boot_tsc + 4

    mov $boot_stack_top, %esp

    /* Zero the page tables: the loader zeroes .bss, but do not rely on it. */
    push %edi
    mov $boot_pml4, %edi
    mov $(6 * 4096 / 4), %ecx
    xor %eax, %eax
    rep stosl
    pop %edi

    /* PML4[0] -> PDPT, PDPT[0..4] -> four page directories. */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4

    mov $boot_pd, %eax
    or $0x3, %eax
    xor %ecx, %ecx
1:  mov %eax, boot_pdpt(,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jne 1b

    /* 2048 x 2 MiB: present, writable, large page. */
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(,%ecx,8)
    movl $0, boot_pd + 4(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b

    /* CR4.PAE | CR4.PGE */
    mov %cr4, %eax
    or $0xA0, %eax
    mov %eax, %cr4

    mov $boot_pml4, %eax
    mov %eax, %cr3

    /* EFER.LME */
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr

    /* CR0.PG | CR0.WP | CR0.PE */
    mov %cr0, %eax
    or $0x80010001, %eax
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $long_entry

.code64
long_entry:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs

    mov $boot_stack_top, %rsp
    xor %ebp, %ebp              /* ends frame-pointer backtraces */

    /* Upper halves are undefined after the mode switch: zero-extend. */
    mov %esi, %edx              /* magic */
    mov %ebx, %esi              /* info */
    mov %edi, %edi              /* protocol */
    call kernel_entry
3:  cli
    hlt
    jmp 3b

.section .rodata
.p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
boot_gdt_end:
.p2align 2
    .word 0
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

.section .data
.p2align 3
.global boot_tsc
boot_tsc:
    .quad 0

.section .bss.boot_tables, "aw", @nobits
.p2align 12
.global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096

.section .bss, "aw", @nobits
.p2align 4
boot_stack:
    .skip 512 * 1024
.global boot_stack_top
boot_stack_top:
