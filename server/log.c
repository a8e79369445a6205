/*
 * log.c: one line per message, to stderr or syslog.
 */
#include "server.h"

#include <stdio.h>
#include <syslog.h>
#include <time.h>

int log_verbosity;

GQuark rawnbd_error_quark(void)
{
    return g_quark_from_static_string("rawnbd-error-quark");
}
static LogTarget target = LOG_TARGET_STDERR;

void log_init(LogTarget t)
{
    target = t;
    if (t == LOG_TARGET_SYSLOG) {
        openlog("rawnbd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    }
}

static void G_GNUC_PRINTF(3, 0) vlog(int prio, const char *tag,
                                     const char *fmt, va_list ap)
{
    char buf[512];
    char *msg = buf;
    va_list ap2;
    int n;

    va_copy(ap2, ap);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    if (n >= (int)sizeof(buf)) {
        msg = g_strdup_vprintf(fmt, ap2);      /* rare: long messages */
    }
    va_end(ap2);
    if (target == LOG_TARGET_SYSLOG) {
        syslog(prio, "%s", msg);
    } else {
        /* One fprintf per message, so lines from loops do not interleave. */
        fprintf(stderr, "rawnbd: %s%s\n", tag, msg);
    }
    if (msg != buf) {
        g_free(msg);
    }
}

void log_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_ERR, "error: ", fmt, ap);
    va_end(ap);
}

void log_warn(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_WARNING, "warning: ", fmt, ap);
    va_end(ap);
}

void log_info(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_INFO, "", fmt, ap);
    va_end(ap);
}

void log_debug_msg(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_DEBUG, "debug: ", fmt, ap);
    va_end(ap);
}
