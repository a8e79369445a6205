/*
 * fault.c: parse RAWNBD_FAULTS and answer fault_check() (see fault.h).
 */
#include "config.h"
#include "fault.h"

#if CONFIG_FAULT_INJECTION

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "co-common.h"

#define MAX_RULES 16
#define MAX_DELAY_MS 60000

typedef struct FaultRule {
    FaultSite site;
    int result;                 /* -errno or FAULT_SHORT; 0: a delay */
    unsigned delay_ms;          /* a delay rule: sleep this long, go on */
    uint64_t offset, length;    /* length 0: any range */
    long remaining;             /* atomic; -1: unlimited */
} FaultRule;

static FaultRule rules[MAX_RULES];
static int nrules;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static const char *const site_names[FAULT_NSITES] = {
    "preadv", "pwritev", "fdatasync", "fallocate", "laio-submit",
    "laio-read", "laio-write",
};

static const struct {
    const char *name;
    int value;
} errnos[] = {
    { "EIO", EIO }, { "ENOSPC", ENOSPC }, { "EDQUOT", EDQUOT },
    { "EFBIG", EFBIG }, { "EPERM", EPERM }, { "EROFS", EROFS },
    { "ENOMEM", ENOMEM }, { "EINVAL", EINVAL }, { "EAGAIN", EAGAIN },
    { "EOPNOTSUPP", EOPNOTSUPP }, { "ENOSYS", ENOSYS },
};

static void bad(const char *rule)
{
    fprintf(stderr, "rawnbd: bad RAWNBD_FAULTS rule '%s'\n", rule);
    exit(2);
}

static void parse_rule(char *rule)
{
    FaultRule *r = &rules[nrules];
    char *eq = strchr(rule, '='), *err, *p;
    size_t i;

    if (!eq || nrules == MAX_RULES) {
        bad(rule);
    }
    *eq = '\0';
    for (i = 0; i < FAULT_NSITES && strcmp(rule, site_names[i]) != 0; i++) {
    }
    if (i == FAULT_NSITES) {
        bad(rule);
    }
    r->site = i;
    r->remaining = -1;
    err = eq + 1;
    if ((p = strchr(err, '*'))) {
        *p++ = '\0';
        r->remaining = strtol(p, NULL, 10);
    }
    if ((p = strchr(err, '@'))) {
        char *plus;

        *p++ = '\0';
        r->offset = strtoull(p, &plus, 10);
        r->length = *plus == '+' ? strtoull(plus + 1, NULL, 10) : 1;
    }
    if (!strcmp(err, "short")) {
        r->result = FAULT_SHORT;
    } else if (!strncmp(err, "delay", 5)) {
        char *end;
        unsigned long ms = strtoul(err + 5, &end, 10);

        if (end == err + 5 || *end || ms == 0 || ms > MAX_DELAY_MS) {
            bad(err);
        }
        r->result = 0;
        r->delay_ms = ms;
    } else {
        for (i = 0;
             i < ARRAY_SIZE(errnos) && strcmp(err, errnos[i].name) != 0;
             i++) {
        }
        if (i == ARRAY_SIZE(errnos)) {
            bad(err);
        }
        r->result = -errnos[i].value;
    }
    nrules++;
}

static void parse_env(void)
{
    const char *env = getenv("RAWNBD_FAULTS");
    char *copy, *save = NULL, *rule;

    if (!env || !*env) {
        return;
    }
    copy = strdup(env);
    for (rule = strtok_r(copy, ";", &save); rule;
         rule = strtok_r(NULL, ";", &save)) {
        parse_rule(rule);
    }
    free(copy);
    fprintf(stderr, "rawnbd: fault injection: %s\n", env);
}

/* Sleep @ms milliseconds, signals or not. */
static void sleep_ms(unsigned ms)
{
    struct timespec left = { ms / 1000, (long)(ms % 1000) * 1000000 };

    while (nanosleep(&left, &left) < 0 && errno == EINTR) {
    }
}

bool fault_armed(FaultSite site)
{
    int i;

    pthread_once(&once, parse_env);
    for (i = 0; i < nrules; i++) {
        if (rules[i].site == site) {
            return true;
        }
    }
    return false;
}

int fault_check(FaultSite site, uint64_t offset, uint64_t len)
{
    int i;

    pthread_once(&once, parse_env);
    for (i = 0; i < nrules; i++) {
        FaultRule *r = &rules[i];
        long left;

        if (r->site != site) {
            continue;
        }
        if (r->length && (offset >= r->offset + r->length ||
                          offset + (len ? len : 1) <= r->offset)) {
            continue;
        }
        left = atomic_read(&r->remaining);
        do {
            if (left == 0) {
                break;
            }
        } while (left > 0 &&
                 !__atomic_compare_exchange_n(&r->remaining, &left, left - 1,
                                              true, __ATOMIC_RELAXED,
                                              __ATOMIC_RELAXED));
        if (left == 0) {
            continue;
        }
        if (r->delay_ms) {
            /* errno is the caller's: keep it as it was. */
            int saved = errno;

            sleep_ms(r->delay_ms);
            errno = saved;
            continue;
        }
        return r->result;
    }
    return 0;
}

#endif /* CONFIG_FAULT_INJECTION */
