/*
 * coroutine-asm.c: the x86-64 context switch's start-up half.
 *
 * The switch itself is inline assembly in coroutine-int.h: a switched-out
 * context is its stack pointer, below which it left rbp and the address
 * to resume at.  Every other register is declared clobbered, so the
 * compiler keeps whatever it needs across the switch on the context's
 * own stack.  The MXCSR and x87 control words are not switched: nothing
 * in this program changes them.  This file lays out new stacks.
 */
#include "config.h"
#include "coroutine-int.h"

#if CONFIG_COROUTINE_ASM

#if !defined(__x86_64__)
#error "the asm coroutine backend supports x86-64 only; use -Dcoroutine_backend=ucontext"
#endif

/*
 * First instruction of a new coroutine, reached from co_backend_switch()
 * with the stack pointer at the coroutine and then its C entry.
 */
void co_asm_start(void);

__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl co_asm_start\n"
    ".hidden co_asm_start\n"
    ".type co_asm_start, @function\n"
    "co_asm_start:\n"
    "    popq %rdi\n"
    "    popq %rax\n"
    "    callq *%rax\n"
    "    ud2\n"
    ".size co_asm_start, .-co_asm_start\n");

/*
 * Lay out a fresh stack as co_backend_switch() leaves a saved context:
 * rbp (0, which ends frame chains), then the resume address, co_asm_start,
 * which pops the coroutine and the C entry.  The call it makes must find
 * the stack 16-byte aligned.
 */
void co_backend_init(Coroutine *co)
{
    uintptr_t top = ((uintptr_t)co->stack + co->stack_size) & ~(uintptr_t)15;
    void **sp = (void **)(top - 48);

    sp[0] = 0;                              /* rbp */
    sp[1] = (void *)co_asm_start;           /* resume address */
    sp[2] = co;                             /* popped into rdi */
    sp[3] = (void *)co_trampoline_main;     /* popped, then called */
    sp[4] = 0;
    sp[5] = 0;
    co->sp = sp;
}

#endif /* CONFIG_COROUTINE_ASM */
