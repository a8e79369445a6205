/*
 * coroutine-asm.c: context switch in a few instructions, for x86-64.
 *
 * A switched-out context is just its stack pointer: the switch pushes the
 * callee-saved registers of the System V ABI (rbp, rbx, r12-r15) on the
 * current stack, stores the stack pointer, loads the other context's and
 * pops its registers.  Everything else is caller-saved, so the compiler
 * has already spilled it around the call.  The MXCSR and x87 control words
 * are not switched: nothing in this program changes them.
 */
#include "config.h"
#include "coroutine-int.h"

#if CONFIG_COROUTINE_ASM

#if !defined(__x86_64__)
#error "the asm coroutine backend supports x86-64 only; use -Dcoroutine_backend=ucontext"
#endif

/* First instruction of a new coroutine; rbx holds it, r12 the C entry. */
void co_asm_start(void);

__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl co_asm_switch\n"
    ".hidden co_asm_switch\n"
    ".type co_asm_switch, @function\n"
    "co_asm_switch:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    /*
     * Not "ret": the return-stack predictor has no idea we changed
     * stacks and would mispredict every switch.  An indirect jump is
     * predicted from its own history instead.
     */
    "    popq %rcx\n"
    "    jmpq *%rcx\n"
    ".size co_asm_switch, .-co_asm_switch\n"
    "\n"
    ".p2align 4\n"
    ".globl co_asm_start\n"
    ".hidden co_asm_start\n"
    ".type co_asm_start, @function\n"
    "co_asm_start:\n"
    "    movq %rbx, %rdi\n"
    "    callq *%r12\n"
    "    ud2\n"
    ".size co_asm_start, .-co_asm_start\n");

/*
 * Lay out a fresh stack as if co_asm_switch had saved it, returning into
 * co_asm_start with the coroutine in rbx and co_trampoline_main in r12.
 * After the six pops and the ret, rsp must be 16-byte aligned so that the
 * call in co_asm_start enters the C function with the ABI's alignment.
 */
void co_backend_init(Coroutine *co)
{
    uintptr_t top = ((uintptr_t)co->stack + co->stack_size) & ~(uintptr_t)15;
    void **sp = (void **)(top - 72);

    sp[0] = 0;                              /* r15 */
    sp[1] = 0;                              /* r14 */
    sp[2] = 0;                              /* r13 */
    sp[3] = (void *)co_trampoline_main;     /* r12 */
    sp[4] = co;                             /* rbx */
    sp[5] = 0;                              /* rbp: ends frame chains */
    sp[6] = (void *)co_asm_start;           /* return address */
    sp[7] = 0;
    sp[8] = 0;
    co->sp = sp;
}

#endif /* CONFIG_COROUTINE_ASM */
