	.code16
	.org 0
start:
	cli
	xor %ax,%ax
	mov %ax,%ds
	mov %ax,%ss
	mov $0x7c00,%sp
	mov $0x3f8,%dx
	mov $'R',%al
	out %al,%dx
	lgdt gdtr-start+0x7c00
	mov %cr0,%eax
	or $1,%eax
	mov %eax,%cr0
	ljmpl $0x08,$(pm-start+0x7c00)
	.code32
pm:
	mov $0x10,%ax
	mov %ax,%ds
	mov %ax,%ss
	mov %ax,%es
	mov $0x7c00,%esp
	mov $0x3f8,%dx
	mov $'P',%al
	out %al,%dx
	pushf
	push $0x08
	push $(after-start+0x7c00)
	iret
after:
	mov $0x3f8,%dx
	mov $'K',%al
	out %al,%dx
1:	hlt
	jmp 1b
	.p2align 3
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff
	.quad 0x00cf92000000ffff
gdtr:
	.word gdtr-gdt-1
	.long gdt-start+0x7c00
	.org 510
	.byte 0x55,0xaa
