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
/* In coroutine-asm.c.  Inlined: an extra call frame costs a mispredict. */
void co_asm_switch(void **save_sp, void *new_sp);

static inline void co_backend_switch(Coroutine *from, Coroutine *to)
{
    co_asm_switch(&from->sp, to->sp);
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
