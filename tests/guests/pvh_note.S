/*
 * Xen PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (type 18), name "Xen", descriptor = the 32-bit
 * physical address of pvh_entry (stored as a quad, as Linux does; loaders read the low 32 bits
 * or the whole quad). Linked only into the PVH builds of the guests.
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

    .section .note.Xen, "a", @note
    .balign 4
    .long   4                       /* namesz */
    .long   8                       /* descsz */
    .long   XEN_ELFNOTE_PHYS32_ENTRY
    .asciz  "Xen"
    .balign 4
    .quad   pvh_entry
    .balign 4
