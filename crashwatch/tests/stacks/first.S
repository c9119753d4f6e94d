/* main's very first instruction faults: no frame, no prologue; its CFI says where the
   return address is. */
        .text
        .globl main
        .type main, @function
main:
        .cfi_startproc
        movl 0, %eax
        ret
        .cfi_endproc
        .size main, .-main
        .section .note.GNU-stack,"",@progbits
