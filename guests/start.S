/* Entry: long mode, CPL 0, IF=0; RDI = boot info, RSI = vCPU index,
 * RSP = this vCPU's stack top (16-byte aligned). */
	.section .text.start, "ax"
	.globl _start
_start:
	cld
	xorl %ebp, %ebp
	call guest_main
1:	cli
	hlt
	jmp 1b
	.section .note.GNU-stack, "", @progbits
