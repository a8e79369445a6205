/*
 * coroutine-int.h: the Coroutine structure, shared by the coroutine core,
 * its context-switch backends and aio.c (which links coroutines into its
 * wake-up lists).  Not for use outside coro/.
 */
#ifndef CO_COROUTINE_INT_H
#define CO_COROUTINE_INT_H

#include "config.h"
#include "coroutine.h"

#if CONFIG_COROUTINE_UCONTEXT
#include <setjmp.h>
#endif

struct Coroutine {
    CoroutineEntry *entry;
    void *opaque;
    Coroutine *caller;          /* who entered us; NULL when not entered */
    void *home;                 /* home AioContext (see co_set_home) */
    Coroutine *pool_next;       /* link on the pool lists */
    Coroutine *sched_next;      /* link on an AioContext's wake-up list */
    int scheduled;              /* atomic: on a wake-up list */
    bool is_leader;             /* a thread's own stack, not a coroutine */

    void *stack;                /* lowest usable address of the stack */
    size_t stack_size;          /* usable bytes (the guard page excluded) */
    void *map_base;             /* the mapping, guard page included */
    size_t map_size;
    unsigned valgrind_id;
    void *asan_fake_stack;      /* ASan's fake stack of this context */
    void *tsan_fiber;

#if CONFIG_COROUTINE_ASM
    void *sp;                   /* saved stack pointer while switched out */
#else
    sigjmp_buf env;
    sigjmp_buf *init_env;       /* only while the stack is first set up */
#endif
};

/*
 * Backend interface (coroutine-asm.c or coroutine-ucontext.c).
 *
 * co_backend_init() prepares @co's fresh stack so that the first
 * co_backend_switch() into it calls co_trampoline_main(@co) on that stack.
 * co_backend_switch() saves the running context in @from and resumes @to;
 * it returns when something switches back to @from.
 */
void co_backend_init(Coroutine *co);
#if CONFIG_COROUTINE_ASM
/*
 * Save the callee-saved state of the running context on its stack, store
 * its stack pointer in *@save_sp, load @new_sp and resume what is saved
 * there.  Inline, and without call or ret: a call would leave its return
 * address on the CPU's return-stack predictor, which then mispredicts the
 * first ret of the context we switch to.  A saved context is, from its
 * stack pointer up: rbp, the address to resume at.  The compiler saves
 * every other register it needs (all are clobbered); the 128-byte red
 * zone below the stack pointer is stepped over first.
 */
static inline __attribute__((always_inline))
void co_backend_switch(Coroutine *from, Coroutine *to)
{
    void **save_sp = &from->sp;
    /*
     * The analyzer does not see that co_enter() set the caller of a
     * pooled coroutine while it was switched out (behind this very asm),
     * and follows co_trampoline_main's second loop with it still NULL.
     */
    void *new_sp = to->sp; /* NOLINT(clang-analyzer-core.NullDereference) */

    __asm__ volatile(
        "leaq -128(%%rsp), %%rsp\n\t"
        "leaq 1f(%%rip), %%rax\n\t"
        "pushq %%rax\n\t"
        "pushq %%rbp\n\t"
        "movq %%rsp, (%0)\n\t"
        "movq %1, %%rsp\n\t"
        "popq %%rbp\n\t"
        "popq %%rax\n\t"
        "jmpq *%%rax\n"
        "1:\n\t"
        "leaq 128(%%rsp), %%rsp\n\t"
        : "+D"(save_sp), "+S"(new_sp)
        :
        : "rax", "rbx", "rcx", "rdx", "r8", "r9", "r10", "r11",
          "r12", "r13", "r14", "r15", "memory", "cc",
          "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
          "xmm15", "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)",
          "st(6)", "st(7)", "mm0", "mm1", "mm2", "mm3", "mm4", "mm5", "mm6",
          "mm7");
}
#else
void co_backend_switch(Coroutine *from, Coroutine *to);
#endif

/* Provided by coroutine.c; runs on the coroutine stack and never returns. */
void co_trampoline_main(Coroutine *co) __attribute__((noreturn));

#if CONFIG_ASAN
void __sanitizer_start_switch_fiber(void **fake_stack_save,
                                    const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save,
                                     const void **bottom_old,
                                     size_t *size_old);
#endif
#if CONFIG_TSAN
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
#endif

#endif /* CO_COROUTINE_INT_H */
