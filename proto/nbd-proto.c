/*
 * nbd-proto.c: names of protocol values for logs, and the errno <-> NBD
 * error mapping.
 */
#include <errno.h>
#include <stdio.h>

#include "nbd-proto.h"

#define UNKNOWN "unknown"

const char *nbd_opt_name(uint32_t opt)
{
    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
        return "NBD_OPT_EXPORT_NAME";
    case NBD_OPT_ABORT:
        return "NBD_OPT_ABORT";
    case NBD_OPT_LIST:
        return "NBD_OPT_LIST";
    case NBD_OPT_PEEK_EXPORT:
        return "NBD_OPT_PEEK_EXPORT";
    case NBD_OPT_STARTTLS:
        return "NBD_OPT_STARTTLS";
    case NBD_OPT_INFO:
        return "NBD_OPT_INFO";
    case NBD_OPT_GO:
        return "NBD_OPT_GO";
    case NBD_OPT_STRUCTURED_REPLY:
        return "NBD_OPT_STRUCTURED_REPLY";
    case NBD_OPT_LIST_META_CONTEXT:
        return "NBD_OPT_LIST_META_CONTEXT";
    case NBD_OPT_SET_META_CONTEXT:
        return "NBD_OPT_SET_META_CONTEXT";
    case NBD_OPT_EXTENDED_HEADERS:
        return "NBD_OPT_EXTENDED_HEADERS";
    default:
        return UNKNOWN;
    }
}

const char *nbd_rep_name(uint32_t rep)
{
    switch (rep) {
    case NBD_REP_ACK:
        return "NBD_REP_ACK";
    case NBD_REP_SERVER:
        return "NBD_REP_SERVER";
    case NBD_REP_INFO:
        return "NBD_REP_INFO";
    case NBD_REP_META_CONTEXT:
        return "NBD_REP_META_CONTEXT";
    case NBD_REP_ERR_UNSUP:
        return "NBD_REP_ERR_UNSUP";
    case NBD_REP_ERR_POLICY:
        return "NBD_REP_ERR_POLICY";
    case NBD_REP_ERR_INVALID:
        return "NBD_REP_ERR_INVALID";
    case NBD_REP_ERR_PLATFORM:
        return "NBD_REP_ERR_PLATFORM";
    case NBD_REP_ERR_TLS_REQD:
        return "NBD_REP_ERR_TLS_REQD";
    case NBD_REP_ERR_UNKNOWN:
        return "NBD_REP_ERR_UNKNOWN";
    case NBD_REP_ERR_SHUTDOWN:
        return "NBD_REP_ERR_SHUTDOWN";
    case NBD_REP_ERR_BLOCK_SIZE_REQD:
        return "NBD_REP_ERR_BLOCK_SIZE_REQD";
    case NBD_REP_ERR_TOO_BIG:
        return "NBD_REP_ERR_TOO_BIG";
    case NBD_REP_ERR_EXT_HEADER_REQD:
        return "NBD_REP_ERR_EXT_HEADER_REQD";
    default:
        return UNKNOWN;
    }
}

const char *nbd_info_name(uint32_t info)
{
    switch (info) {
    case NBD_INFO_EXPORT:
        return "NBD_INFO_EXPORT";
    case NBD_INFO_NAME:
        return "NBD_INFO_NAME";
    case NBD_INFO_DESCRIPTION:
        return "NBD_INFO_DESCRIPTION";
    case NBD_INFO_BLOCK_SIZE:
        return "NBD_INFO_BLOCK_SIZE";
    default:
        return UNKNOWN;
    }
}

const char *nbd_cmd_name(uint32_t cmd)
{
    switch (cmd) {
    case NBD_CMD_READ:
        return "NBD_CMD_READ";
    case NBD_CMD_WRITE:
        return "NBD_CMD_WRITE";
    case NBD_CMD_DISC:
        return "NBD_CMD_DISC";
    case NBD_CMD_FLUSH:
        return "NBD_CMD_FLUSH";
    case NBD_CMD_TRIM:
        return "NBD_CMD_TRIM";
    case NBD_CMD_CACHE:
        return "NBD_CMD_CACHE";
    case NBD_CMD_WRITE_ZEROES:
        return "NBD_CMD_WRITE_ZEROES";
    case NBD_CMD_BLOCK_STATUS:
        return "NBD_CMD_BLOCK_STATUS";
    case NBD_CMD_RESIZE:
        return "NBD_CMD_RESIZE";
    default:
        return UNKNOWN;
    }
}

const char *nbd_reply_type_name(uint32_t type)
{
    switch (type) {
    case NBD_REPLY_TYPE_NONE:
        return "NBD_REPLY_TYPE_NONE";
    case NBD_REPLY_TYPE_OFFSET_DATA:
        return "NBD_REPLY_TYPE_OFFSET_DATA";
    case NBD_REPLY_TYPE_OFFSET_HOLE:
        return "NBD_REPLY_TYPE_OFFSET_HOLE";
    case NBD_REPLY_TYPE_BLOCK_STATUS:
        return "NBD_REPLY_TYPE_BLOCK_STATUS";
    case NBD_REPLY_TYPE_BLOCK_STATUS_EXT:
        return "NBD_REPLY_TYPE_BLOCK_STATUS_EXT";
    case NBD_REPLY_TYPE_ERROR:
        return "NBD_REPLY_TYPE_ERROR";
    case NBD_REPLY_TYPE_ERROR_OFFSET:
        return "NBD_REPLY_TYPE_ERROR_OFFSET";
    default:
        return UNKNOWN;
    }
}

const char *nbd_err_name(uint32_t err)
{
    switch (err) {
    case 0:
        return "success";
    case NBD_EPERM:
        return "NBD_EPERM";
    case NBD_EIO:
        return "NBD_EIO";
    case NBD_ENOMEM:
        return "NBD_ENOMEM";
    case NBD_EINVAL:
        return "NBD_EINVAL";
    case NBD_ENOSPC:
        return "NBD_ENOSPC";
    case NBD_EOVERFLOW:
        return "NBD_EOVERFLOW";
    case NBD_ENOTSUP:
        return "NBD_ENOTSUP";
    case NBD_ESHUTDOWN:
        return "NBD_ESHUTDOWN";
    default:
        return UNKNOWN;
    }
}

/* Command flag names by bit number. */
static const char *const cmd_flag_names[] = {
    "FUA", "NO_HOLE", "DF", "REQ_ONE", "FAST_ZERO", "PAYLOAD_LEN",
};

/* Appends text to buf like a chained snprintf: *used counts the full
 * length, and writing stops (NUL-terminated) at size. */
static void append(char *buf, size_t size, size_t *used, const char *text)
{
    size_t len = strlen(text);

    if (*used < size) {
        size_t room = size - *used - 1;
        size_t n = len < room ? len : room;
        memcpy(buf + *used, text, n);
        buf[*used + n] = '\0';
    }
    *used += len;
}

size_t nbd_cmd_flags_format(uint16_t flags, char *buf, size_t size)
{
    size_t used = 0;
    uint16_t unknown = flags & (uint16_t)~NBD_CMD_FLAG_KNOWN;
    bool first = true;

    if (size > 0) {
        buf[0] = '\0';
    }
    if (flags == 0) {
        append(buf, size, &used, "0");
        return used;
    }
    for (unsigned bit = 0; bit < sizeof(cmd_flag_names) / sizeof(char *);
         bit++) {
        if (flags & (1u << bit)) {
            if (!first) {
                append(buf, size, &used, "|");
            }
            append(buf, size, &used, cmd_flag_names[bit]);
            first = false;
        }
    }
    if (unknown) {
        char hex[8];
        snprintf(hex, sizeof(hex), "0x%x", (unsigned)unknown);
        if (!first) {
            append(buf, size, &used, "|");
        }
        append(buf, size, &used, hex);
    }
    return used;
}

uint32_t nbd_errno_to_nbd(int errnum)
{
    if (errnum < 0) {
        errnum = -errnum;
    }
    switch (errnum) {
    case 0:
        return 0;
    case EPERM:
    case EACCES:
    case EROFS:
        return NBD_EPERM;
    case EIO:
        return NBD_EIO;
    case ENOMEM:
        return NBD_ENOMEM;
    case EINVAL:
        return NBD_EINVAL;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
#if EOPNOTSUPP != ENOTSUP
    case EOPNOTSUPP:
#endif
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EIO;
    }
}

int nbd_err_to_errno(uint32_t err)
{
    switch (err) {
    case 0:
        return 0;
    case NBD_EPERM:
        return EPERM;
    case NBD_EIO:
        return EIO;
    case NBD_ENOMEM:
        return ENOMEM;
    case NBD_EINVAL:
        return EINVAL;
    case NBD_ENOSPC:
        return ENOSPC;
    case NBD_EOVERFLOW:
        return EOVERFLOW;
    case NBD_ENOTSUP:
        return ENOTSUP;
    case NBD_ESHUTDOWN:
        return ESHUTDOWN;
    default:
        return EINVAL;
    }
}

size_t nbd_err_msg_len(const char *msg)
{
    size_t len;

    if (msg == NULL) {
        return 0;
    }
    len = strnlen(msg, NBD_MAX_ERR_MSG + 1);
    if (len <= NBD_MAX_ERR_MSG) {
        return len;
    }
    /* msg[len] is the first byte cut off; while it continues a UTF-8
     * sequence, cut before that sequence's lead byte too.  A sequence
     * has at most 3 continuation bytes, so never back up further (the
     * text is not valid UTF-8 then anyway). */
    len = NBD_MAX_ERR_MSG;
    while (len > NBD_MAX_ERR_MSG - 3 &&
           ((unsigned char)msg[len] & 0xc0) == 0x80) {
        len--;
    }
    return len;
}
