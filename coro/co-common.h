/*
 * co-common.h: small helpers shared by the runtime (and usable above it).
 *
 * Atomics are the GCC/Clang __atomic builtins, wrapped so that every use
 * names its memory order.  Sequentially consistent unless the name says
 * otherwise.
 */
#ifndef CO_COMMON_H
#define CO_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Marks a function that may yield: call it only from coroutine context.
 * It is documentation; the compiler does not check it.
 */
#define coroutine_fn

#define atomic_read(p)          __atomic_load_n(p, __ATOMIC_RELAXED)
#define atomic_set(p, v)        __atomic_store_n(p, v, __ATOMIC_RELAXED)
#define atomic_load_acquire(p)  __atomic_load_n(p, __ATOMIC_ACQUIRE)
#define atomic_store_release(p, v) __atomic_store_n(p, v, __ATOMIC_RELEASE)
#define atomic_load_seq(p)      __atomic_load_n(p, __ATOMIC_SEQ_CST)
#define atomic_store_seq(p, v)  __atomic_store_n(p, v, __ATOMIC_SEQ_CST)
#define atomic_xchg(p, v)       __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST)
#define atomic_fetch_or(p, v)   __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST)
#define atomic_fetch_and(p, v)  __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST)
#define atomic_fetch_add(p, v)  __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST)
#define atomic_fetch_sub(p, v)  __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST)
#define atomic_add_relaxed(p, v) __atomic_fetch_add(p, v, __ATOMIC_RELAXED)
#define atomic_sub_relaxed(p, v) __atomic_fetch_sub(p, v, __ATOMIC_RELAXED)
/* Weak CAS with release on success: for pushing onto lock-free lists. */
#define atomic_cas_release(p, expected_ptr, desired) \
    __atomic_compare_exchange_n(p, expected_ptr, desired, true, \
                                __ATOMIC_RELEASE, __ATOMIC_RELAXED)
#define smp_mb()                __atomic_thread_fence(__ATOMIC_SEQ_CST)

/*
 * A lock-free LIFO push of @node onto the list whose head is *@headp,
 * linking through @node->@field.  Any thread may push; consumers take the
 * whole list at once with atomic_xchg(headp, NULL), so there is no ABA.
 * The release ordering makes the node's contents visible to the taker,
 * whose exchange is (at least) acquire.
 */
#define LIFO_PUSH_ATOMIC(headp, node, field)                              \
    do {                                                                  \
        __typeof__(*(headp)) lifo_old_ = atomic_read(headp);              \
        do {                                                              \
            (node)->field = lifo_old_;                                    \
        } while (!atomic_cas_release(headp, &lifo_old_, (node)));         \
    } while (0)

/* Reverse a singly linked list taken from a LIFO, giving FIFO order. */
#define LIFO_REVERSE(head, type, field)                                   \
    ({                                                                    \
        type *rev_prev_ = NULL, *rev_cur_ = (head);                       \
        while (rev_cur_) {                                                \
            type *rev_next_ = rev_cur_->field;                            \
            rev_cur_->field = rev_prev_;                                  \
            rev_prev_ = rev_cur_;                                         \
            rev_cur_ = rev_next_;                                         \
        }                                                                 \
        rev_prev_;                                                        \
    })

/* Nanoseconds on CLOCK_MONOTONIC. */
int64_t clock_ns(void);

#endif /* CO_COMMON_H */
