/*
 * Entry points of capsule's test guests.
 *
 *  - pvh_entry:  Xen PVH boot (32-bit protected mode, paging off, %ebx = struct hvm_start_info).
 *                Announced by the ELF note in pvh_note.S. Under kvm-pvm every instruction before
 *                64-bit mode is emulated slowly, so this path does the minimum: load our GDT and
 *                static page tables, enable long mode, jump to 64-bit code.
 *  - entry64:    64-bit Linux boot protocol (long mode, paging on, %rsi = boot_params). This is
 *                the ELF e_entry. We still switch to our own GDT and page tables, because the VMM's
 *                may not map the MMIO window below 4 GiB and may live in memory we reuse.
 *
 * Both paths end in common64, which sets a stack, clears .bss and calls
 * guest_start(boot_path, boot_info_phys_addr) in runtime.c.
 */

#define BOOT_PATH_PVH      1
#define BOOT_PATH_LINUX64  2

#define CR0_PE     0x00000001
#define CR0_PG     0x80000000
#define CR4_PAE    0x00000020
#define MSR_EFER   0xc0000080
#define EFER_LME   0x00000100

#define SEL_CODE64 0x08
#define SEL_DATA   0x10

    .section .text.entry, "ax"

    .code32
    .globl pvh_entry
pvh_entry:
    cli
    cld
    lgdt    gdt_desc
    movl    %cr4, %eax
    orl     $CR4_PAE, %eax
    movl    %eax, %cr4
    movl    $pml4, %eax
    movl    %eax, %cr3
    movl    $MSR_EFER, %ecx
    rdmsr
    orl     $EFER_LME, %eax
    wrmsr
    movl    %cr0, %eax
    orl     $(CR0_PG | CR0_PE), %eax
    movl    %eax, %cr0
    ljmp    $SEL_CODE64, $pvh_long_mode

    .code64
pvh_long_mode:
    movl    $BOOT_PATH_PVH, %r12d
    movl    %ebx, %r13d            /* zero-extends: start_info is below 4 GiB */
    jmp     common64

    .globl entry64
entry64:
    cli
    cld
    movl    $BOOT_PATH_LINUX64, %r12d
    movq    %rsi, %r13
    lgdt    gdt_desc(%rip)
    leaq    pml4(%rip), %rax
    movq    %rax, %cr3
    /* Reload %cs from our GDT with a far return. */
    pushq   $SEL_CODE64
    leaq    common64(%rip), %rax
    pushq   %rax
    lretq

common64:
    movl    $SEL_DATA, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    movl    %eax, %fs
    movl    %eax, %gs
    leaq    stack_top(%rip), %rsp
    /* Clear .bss (which also holds the stack; nothing is on it yet). */
    leaq    __bss_start(%rip), %rdi
    leaq    __bss_end(%rip), %rcx
    subq    %rdi, %rcx
    xorl    %eax, %eax
    rep stosb
    movl    %r12d, %edi
    movq    %r13, %rsi
    call    guest_start
    /* guest_start does not return; if it does, stop here. */
1:  cli
    hlt
    jmp     1b

/*
 * GDT: null, 64-bit code, flat data. Read-only data is fine: the CPU sets the accessed bit
 * only if it is clear, and it is already set here.
 */
    .section .rodata
    .balign 16
gdt:
    .quad   0
    .quad   0x00af9b000000ffff     /* 0x08: 64-bit code, present, accessed */
    .quad   0x00cf93000000ffff     /* 0x10: flat 4 GiB data, present, accessed */
gdt_end:
    .balign 4
    .word   0
gdt_desc:
    .word   gdt_end - gdt - 1
    .quad   gdt

/*
 * Static identity map of the first 4 GiB with 2 MiB pages (so MMIO below 4 GiB, e.g. virtio-mmio
 * at 0xd0000000, is reachable). Built by the assembler: nothing to compute at boot.
 */
#define PTE_P   0x001
#define PTE_W   0x002
#define PTE_PS  0x080

    .section .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad   pdpt + (PTE_P | PTE_W)
    .fill   511, 8, 0
pdpt:
    .quad   pd + 0 * 4096 + (PTE_P | PTE_W)
    .quad   pd + 1 * 4096 + (PTE_P | PTE_W)
    .quad   pd + 2 * 4096 + (PTE_P | PTE_W)
    .quad   pd + 3 * 4096 + (PTE_P | PTE_W)
    .fill   508, 8, 0
pd:
    .set    page, 0
    .rept   2048
    .quad   (page << 21) | (PTE_P | PTE_W | PTE_PS)
    .set    page, page + 1
    .endr

    .section .bss
    .balign 16
stack:
    .skip   16384
stack_top:
