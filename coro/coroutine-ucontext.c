/*
 * coroutine-ucontext.c: portable context switch.
 *
 * makecontext/swapcontext create the first frame on a new stack, once per
 * stack; every later switch is sigsetjmp/siglongjmp with the signal mask
 * left alone, so no system call happens per switch.  Since a pooled
 * coroutine's trampoline loops forever (see co_trampoline_main), the
 * ucontext work is done once per stack, not once per coroutine.
 *
 * _FORTIFY_SOURCE turns siglongjmp into a checked variant that refuses to
 * jump to a frame on another stack ("longjmp causes uninitialized stack
 * frame"), which is all this file does: it must be off here.
 */
#undef _FORTIFY_SOURCE

#include "config.h"
#include "coroutine-int.h"

#if CONFIG_COROUTINE_UCONTEXT

#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#if CONFIG_TSAN
#error "ThreadSanitizer builds need the asm coroutine backend"
#endif

static void co_uc_trampoline(int hi, int lo)
{
    Coroutine *co = (Coroutine *)(((uintptr_t)(unsigned)hi << 32) |
                                  (uintptr_t)(unsigned)lo);
#if CONFIG_ASAN
    const void *bottom;
    size_t size;

    __sanitizer_finish_switch_fiber(NULL, &bottom, &size);
#endif
    if (!sigsetjmp(co->env, 0)) {
#if CONFIG_ASAN
        __sanitizer_start_switch_fiber(&co->asan_fake_stack, bottom, size);
#endif
        siglongjmp(*co->init_env, 1);
    }
    /* First real entry. */
    co_trampoline_main(co);
}

void co_backend_init(Coroutine *co)
{
    ucontext_t uc, old_uc;
    sigjmp_buf init_env;
    uintptr_t p = (uintptr_t)co;
#if CONFIG_ASAN
    void *fake_stack = NULL;
#endif

    if (getcontext(&uc) < 0) {
        perror("coroutine: getcontext");
        abort();
    }
    uc.uc_link = &old_uc;
    uc.uc_stack.ss_sp = co->stack;
    uc.uc_stack.ss_size = co->stack_size;
    uc.uc_stack.ss_flags = 0;
    makecontext(&uc, (void (*)(void))co_uc_trampoline, 2,
                (int)(unsigned)(p >> 32), (int)(unsigned)p);

    co->init_env = &init_env;
    if (!sigsetjmp(init_env, 0)) {
#if CONFIG_ASAN
        __sanitizer_start_switch_fiber(&fake_stack, co->stack,
                                       co->stack_size);
#endif
        swapcontext(&old_uc, &uc);
    }
#if CONFIG_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, NULL, NULL);
#endif
    co->init_env = NULL;
}

void co_backend_switch(Coroutine *from, Coroutine *to)
{
    if (!sigsetjmp(from->env, 0)) {
        siglongjmp(to->env, 1);
    }
}

#endif /* CONFIG_COROUTINE_UCONTEXT */
