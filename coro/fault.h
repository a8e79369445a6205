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
 * laio-read, laio-write; ERROR is an errno name (EIO, ENOSPC, ...) or
 * "short" (the transfer stops half way).  With @OFFSET[+LENGTH] only
 * operations overlapping that byte range fail; *COUNT limits how many
 * times (default: every time).  Example:
 *
 *   RAWNBD_FAULTS='pwritev=EIO@1048576+4096*1;fdatasync=ENOSPC*1'
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
 * @len.  Any thread.  Reads RAWNBD_FAULTS on first use.
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
