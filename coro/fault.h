/*
 * fault.h: fault injection for the I/O the runtime performs, for tests.
 *
 * Built only with -Dfault_injection=true; otherwise every hook is a
 * constant 0 and costs nothing.  At start-up the environment variable
 * RAWNBD_FAULTS lists the faults, separated by ';':
 *
 *   SITE=ERROR[@OFFSET[+LENGTH]][*COUNT]
 *
 * SITE is one of preadv, pwritev, fdatasync, fallocate, laio-submit,
 * laio-read, laio-write; ERROR is an errno name (EIO, ENOSPC, ...),
 * "short" (the transfer stops half way) or "delayMS" (the operation
 * first sleeps MS milliseconds, 1 to 60000, then goes on as the other
 * rules say).  With @OFFSET[+LENGTH] only operations overlapping that
 * byte range are hit; *COUNT limits how many times (default: every
 * time).  Example:
 *
 *   RAWNBD_FAULTS='pwritev=EIO@1048576+4096*1;fdatasync=ENOSPC*1'
 *   RAWNBD_FAULTS='preadv=delay500@0+4096'
 *
 * A delay sleeps in the thread that calls fault_check(): a worker of the
 * thread pool for preadv, fdatasync, fallocate and most pwritev (small
 * buffered writes are done on the event loop, see server/export.c), but
 * the event loop itself for the laio-* sites, where it stalls every
 * connection of that loop.  While any preadv rule is listed, the server
 * sends every buffered read to the thread pool (server/export.c), so
 * that page-cache hits meet the check too.
 */
#ifndef CO_FAULT_H
#define CO_FAULT_H

#include "config.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    FAULT_PREADV,
    FAULT_PWRITEV,
    FAULT_FDATASYNC,
    FAULT_FALLOCATE,
    FAULT_LAIO_SUBMIT,
    FAULT_LAIO_READ,
    FAULT_LAIO_WRITE,
    FAULT_NSITES
} FaultSite;

#define FAULT_SHORT 1       /* fault_check() result: cut the transfer short */

#if CONFIG_FAULT_INJECTION
/*
 * 0: no fault.  -errno: fail with it.  FAULT_SHORT: transfer half of
 * @len.  Any thread; sleeps first if a delay rule matches.  Reads
 * RAWNBD_FAULTS on first use.
 */
int fault_check(FaultSite site, uint64_t offset, uint64_t len);
/* Is any fault listed for @site?  (Lets callers skip fast paths.) */
bool fault_armed(FaultSite site);
#else
static inline bool fault_armed(FaultSite site)
{
    (void)site;
    return false;
}

static inline int fault_check(FaultSite site, uint64_t offset, uint64_t len)
{
    (void)site;
    (void)offset;
    (void)len;
    return 0;
}
#endif

#endif /* CO_FAULT_H */
