/*
 * nbd-proto.h: the NBD wire protocol as pure functions over buffers.
 *
 * Nothing here does I/O, allocates, or keeps state: callers read bytes
 * into their own buffers, hand them to a decoder, and write what an
 * encoder produced (e.g. with writev).  Decoders never read past the
 * length they are given; encoders never write past the documented
 * buffer size.
 *
 * Conventions:
 *   - Functions returning int or ssize_t return >= 0 on success and a
 *     negative errno value on failure; they never set errno.
 *   - Functions returning uint32_t NBD errors return 0 or an NBD_E*.
 *   - NBDString and the parsed option structs point into the caller's
 *     buffer; they are valid only as long as that buffer is.
 *   - Fixed-size encoders take a buffer at least as large as the size
 *     constant they document and return the number of bytes written.
 */
#ifndef RAWNBD_PROTO_NBD_PROTO_H
#define RAWNBD_PROTO_NBD_PROTO_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "nbd-wire.h"

/* A byte string inside some buffer; not NUL-terminated. */
typedef struct NBDString {
    const char *ptr;
    uint32_t len;
} NBDString;

/* An NBDString over a NUL-terminated C string (NULL gives ""). */
static inline NBDString nbd_str(const char *s)
{
    NBDString r = { s ? s : "", s ? (uint32_t)strlen(s) : 0 };
    return r;
}

/* ================================================================== */
/* Names for logs                                                      */
/* ================================================================== */

/*
 * Each returns a static string: the spec's constant name (e.g.
 * "NBD_OPT_GO"), or "unknown" for a value the spec does not define
 * (nbd_err_name(0) is "success").
 */
const char *nbd_opt_name(uint32_t opt);
const char *nbd_rep_name(uint32_t rep);
const char *nbd_info_name(uint32_t info);
const char *nbd_cmd_name(uint32_t cmd);
const char *nbd_reply_type_name(uint32_t type);
const char *nbd_err_name(uint32_t err);

/*
 * Formats command flags as "FUA|NO_HOLE|0x40" (unknown bits as one hex
 * number at the end; "0" for no flags) into buf, like snprintf: always
 * NUL-terminated when size > 0, and returns the length the full text
 * needs (excluding the NUL).  NBD_CMD_FLAGS_STRLEN bytes always fit.
 */
#define NBD_CMD_FLAGS_STRLEN 64
size_t nbd_cmd_flags_format(uint16_t flags, char *buf, size_t size);

/* ================================================================== */
/* Errors                                                              */
/* ================================================================== */

/*
 * The one mapping from a host errno to the NBD error sent on the wire.
 * errnum is a positive errno (a negative one is negated, so the -errno
 * returned by data-path code can be passed directly); 0 gives 0.
 *   EPERM, EACCES, EROFS         -> NBD_EPERM
 *   EIO                          -> NBD_EIO
 *   ENOMEM                       -> NBD_ENOMEM
 *   EINVAL                       -> NBD_EINVAL
 *   ENOSPC, EDQUOT, EFBIG        -> NBD_ENOSPC
 *   EOVERFLOW                    -> NBD_EOVERFLOW
 *   ENOTSUP / EOPNOTSUPP         -> NBD_ENOTSUP
 *   ESHUTDOWN                    -> NBD_ESHUTDOWN
 *   anything else                -> NBD_EIO
 * Unknown errors become EIO, not EINVAL: an errno we did not anticipate
 * comes from the server's own I/O path (EBADF, ENXIO, ENODEV, ...), so
 * "the operation failed" is the truthful answer; EINVAL would tell the
 * client its request was malformed, which it was not.
 */
uint32_t nbd_errno_to_nbd(int errnum);

/*
 * The reverse, for logs and tests: the positive errno for an NBD error,
 * 0 for 0, and EINVAL for an unknown value (the spec tells clients to
 * treat unexpected errors as EINVAL).
 */
int nbd_err_to_errno(uint32_t err);

/* ================================================================== */
/* Handshake                                                           */
/* ================================================================== */

#define NBD_GREETING_SIZE       ((size_t)sizeof(NBDWireGreeting))
#define NBD_CLIENT_FLAGS_SIZE   ((size_t)sizeof(NBDWireClientFlags))
#define NBD_OPT_HEADER_SIZE     ((size_t)sizeof(NBDWireOptHeader))

/* Writes the 18-byte newstyle greeting with handshake flags hflags;
 * returns NBD_GREETING_SIZE. */
size_t nbd_greeting_encode(void *buf, uint16_t hflags);

/*
 * Decodes the client's 4-byte flags answering a greeting that offered
 * hflags.  Returns 0 and stores them in *cflags, or -EPROTO if the
 * client set an unknown flag or NBD_FLAG_C_NO_ZEROES without the server
 * offering NBD_FLAG_NO_ZEROES: the spec then requires the server to
 * drop the connection without replying.
 */
int nbd_client_flags_decode(const void *buf, uint16_t hflags,
                            uint32_t *cflags);

/*
 * Decodes a 16-byte option header.  Returns 0 with the option code and
 * payload length, or -EPROTO if the magic is wrong (the stream cannot
 * be parsed any further: drop the connection).
 */
int nbd_opt_header_decode(const void *buf, uint32_t *opt, uint32_t *len);

/*
 * Whether an option payload of len bytes may be read into memory.
 * NBD_OPT_EXPORT_NAME's payload is a name, so at most NBD_MAX_STRING;
 * anything else at most NBD_MAX_OPT_PAYLOAD.  When false the caller
 * must not buffer the payload: drain (read and discard) it and reply
 * NBD_REP_ERR_TOO_BIG, or for NBD_OPT_EXPORT_NAME, which cannot be
 * answered with an error, disconnect.
 */
bool nbd_opt_len_ok(uint32_t opt, uint32_t len);

/*
 * For the options whose payload must be empty (NBD_OPT_LIST,
 * NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_EXTENDED_HEADERS)
 * returns -EINVAL if len != 0: reply NBD_REP_ERR_INVALID (after
 * draining).  Returns 0 otherwise, including for NBD_OPT_ABORT with
 * data: the spec says a server SHOULD ignore data sent with ABORT
 * rather than reject it (the caller drains it and acknowledges).
 */
int nbd_opt_check_empty(uint32_t opt, uint32_t len);

/* ------------------------------------------------------------------ */
/* Option replies                                                      */
/* ------------------------------------------------------------------ */

#define NBD_OPT_REPLY_HEADER_SIZE ((size_t)sizeof(NBDWireOptReply))
/* Enough for any reply below (REP_SERVER with a maximal name and
 * maximal description is the largest). */
#define NBD_OPT_REPLY_MAX \
    (NBD_OPT_REPLY_HEADER_SIZE + 4 + 2 * (size_t)NBD_MAX_STRING)
/* Error messages (option error replies and error chunks) are truncated
 * to this many bytes, at a UTF-8 character boundary. */
#define NBD_MAX_ERR_MSG         NBD_SHOULD_MAX_STRING
/* Size of NBD_OPT_EXPORT_NAME's reply with and without the zeroes. */
#define NBD_EXPORT_NAME_REPLY_SIZE ((size_t)sizeof(NBDWireExportNameReply))
#define NBD_EXPORT_NAME_REPLY_SHORT 10u

/*
 * Writes a 20-byte option reply header announcing len payload bytes
 * (the caller sends the payload itself); returns
 * NBD_OPT_REPLY_HEADER_SIZE.
 */
size_t nbd_opt_reply_header_encode(void *buf, uint32_t opt, uint32_t type,
                                   uint32_t len);

/*
 * Complete option replies (header + payload) for option `opt`, written
 * to buf of `size` bytes.  Each returns the number of bytes written,
 * -ENOBUFS if size is too small (NBD_OPT_REPLY_MAX always suffices), or
 * -EINVAL if a string is longer than NBD_MAX_STRING.
 */
/* NBD_REP_ACK, no payload. */
ssize_t nbd_rep_ack_encode(void *buf, size_t size, uint32_t opt);
/* NBD_REP_SERVER: export name and optional description (len 0: none). */
ssize_t nbd_rep_server_encode(void *buf, size_t size, uint32_t opt,
                              NBDString name, NBDString desc);
/* NBD_REP_INFO with NBD_INFO_EXPORT. */
ssize_t nbd_rep_info_export_encode(void *buf, size_t size, uint32_t opt,
                                   uint64_t export_size, uint16_t tflags);
/* NBD_REP_INFO with NBD_INFO_NAME. */
ssize_t nbd_rep_info_name_encode(void *buf, size_t size, uint32_t opt,
                                 NBDString name);
/* NBD_REP_INFO with NBD_INFO_DESCRIPTION. */
ssize_t nbd_rep_info_description_encode(void *buf, size_t size,
                                        uint32_t opt, NBDString desc);
/* NBD_REP_INFO with NBD_INFO_BLOCK_SIZE. */
ssize_t nbd_rep_info_block_size_encode(void *buf, size_t size, uint32_t opt,
                                       uint32_t min_block,
                                       uint32_t pref_block,
                                       uint32_t max_block);
/* NBD_REP_META_CONTEXT: context id and name. */
ssize_t nbd_rep_meta_context_encode(void *buf, size_t size, uint32_t opt,
                                    uint32_t id, NBDString name);
/*
 * An error reply of type `type` (must be an NBD_REP_ERR_*, else
 * -EINVAL) with message msg (NULL or "" for none), truncated to
 * NBD_MAX_ERR_MSG bytes.
 */
ssize_t nbd_rep_error_encode(void *buf, size_t size, uint32_t opt,
                             uint32_t type, const char *msg);

/*
 * Writes the reply to NBD_OPT_EXPORT_NAME: size, transmission flags and,
 * unless no_zeroes (the client set NBD_FLAG_C_NO_ZEROES), 124 zero
 * bytes.  buf holds NBD_EXPORT_NAME_REPLY_SIZE bytes; returns 134 or
 * NBD_EXPORT_NAME_REPLY_SHORT (10).
 */
size_t nbd_export_name_reply_encode(void *buf, uint64_t export_size,
                                    uint16_t tflags, bool no_zeroes);

/* ------------------------------------------------------------------ */
/* Option payload parsers                                              */
/* ------------------------------------------------------------------ */

/*
 * All parsers take the whole option payload (len bytes at buf), check
 * every length against len, and return 0 or -EINVAL for malformed data
 * (reply NBD_REP_ERR_INVALID).  Strings (names, queries) longer than
 * NBD_MAX_STRING or containing a NUL byte are malformed.  UTF-8
 * validity is not checked.
 */

/* NBD_OPT_EXPORT_NAME: the whole payload is the export name. */
int nbd_opt_export_name_parse(const void *buf, uint32_t len,
                              NBDString *name);

/* NBD_OPT_INFO / NBD_OPT_GO payload. */
typedef struct NBDOptGo {
    NBDString name;         /* export name ("" = default export) */
    uint16_t ninfo;         /* number of NBD_INFO_* requests */
    const uint8_t *info;    /* ninfo big-endian 16-bit values */
} NBDOptGo;

/*
 * Parses: 32-bit name length, name, 16-bit count, count 16-bit info
 * types; the payload must end exactly there.  Duplicate or unknown
 * info types are accepted (the spec says to ignore unknown ones).
 */
int nbd_opt_go_parse(const void *buf, uint32_t len, NBDOptGo *out);
/* The i-th requested info type; i < go->ninfo. */
uint16_t nbd_opt_go_info(const NBDOptGo *go, uint16_t i);
/* Whether the client requested info type `info`. */
bool nbd_opt_go_requested(const NBDOptGo *go, uint16_t info);

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload. */
typedef struct NBDOptMeta {
    NBDString name;         /* export name */
    uint32_t nqueries;      /* number of queries */
    const uint8_t *queries; /* the validated query list (length+string)* */
    uint32_t queries_len;   /* its size in bytes */
} NBDOptMeta;

/*
 * Parses: 32-bit name length, name, 32-bit query count, then per query
 * a 32-bit length and the string; the payload must end exactly there.
 * Every query must start with a non-empty namespace and a colon (the
 * spec makes that mandatory and lets the server fail a query without
 * one as invalid; failing tells the client its query was wrong instead
 * of silently matching nothing).  Returns 0, -EINVAL for malformed
 * data, or -E2BIG (reply NBD_REP_ERR_TOO_BIG) for a well-formed payload
 * with more than NBD_MAX_META_QUERIES queries.
 */
int nbd_opt_meta_parse(const void *buf, uint32_t len, NBDOptMeta *out);

/* Iterator over the queries of a parsed NBDOptMeta. */
typedef struct NBDMetaIter {
    const uint8_t *pos;
    const uint8_t *end;
} NBDMetaIter;

void nbd_meta_iter_init(NBDMetaIter *it, const NBDOptMeta *meta);
/* Stores the next query in *query and returns true, or returns false
 * after the last one. */
bool nbd_meta_iter_next(NBDMetaIter *it, NBDString *query);

/* ------------------------------------------------------------------ */
/* Metadata contexts offered by this server                            */
/* ------------------------------------------------------------------ */

/*
 * Contexts are known by their index in a small built-in table; a set of
 * contexts is a bit mask (bit i = context i).  The context id sent in
 * NBD_REP_META_CONTEXT (after SET) and in block status chunks is
 * index + 1, so id 0 (what LIST replies carry) is never a real id.
 */
enum {
    NBD_META_BASE_ALLOCATION = 0,   /* "base:allocation" */
    NBD_META_NCONTEXTS
};
#define NBD_META_ALL ((uint32_t)((1u << NBD_META_NCONTEXTS) - 1))

/* Name of context idx, or NULL if idx >= NBD_META_NCONTEXTS. */
const char *nbd_meta_context_name(unsigned idx);
/* Wire id of context idx. */
uint32_t nbd_meta_context_id(unsigned idx);
/* Index of the context with wire id `id`, or -1 if there is none. */
int nbd_meta_context_index(uint32_t id);

/*
 * Whether one query selects context idx.  SET (list == false): only an
 * exact match of the full name.  LIST: an exact match, or a query that
 * is just "namespace:" (empty leaf) matches every context of that
 * namespace.  Anything else, including unknown namespaces and leaves,
 * matches nothing (the spec says to ignore those, not fail).
 */
bool nbd_meta_query_matches(NBDString query, unsigned idx, bool list);

/*
 * The set of contexts a parsed request selects (SET) or lists (LIST):
 * the union over its queries; for LIST with no queries, every context;
 * for SET with no queries, none.
 */
uint32_t nbd_meta_match(const NBDOptMeta *meta, bool list);

/* ================================================================== */
/* Transmission: requests                                              */
/* ================================================================== */

/* A decoded request, in host byte order. */
typedef struct NBDRequest {
    uint16_t flags;         /* NBD_CMD_FLAG_* */
    uint16_t type;          /* NBD_CMD_* */
    uint64_t cookie;        /* opaque; echo it in every reply */
    uint64_t offset;
    uint64_t length;        /* effect length, or payload length (below) */
} NBDRequest;

#define NBD_REQUEST_SIZE        ((size_t)sizeof(NBDWireRequest))
#define NBD_EXT_REQUEST_SIZE    ((size_t)sizeof(NBDWireExtRequest))

/* Size of the request header to read: 32 with extended headers, else
 * 28. */
static inline size_t nbd_request_size(bool extended)
{
    return extended ? NBD_EXT_REQUEST_SIZE : NBD_REQUEST_SIZE;
}

/*
 * Decodes a request header of nbd_request_size(extended) bytes.
 * Returns 0, or -EPROTO if the magic is not the one the negotiated
 * header style requires: the stream has lost framing and the caller
 * must drop the connection.
 */
static inline int nbd_request_decode(const void *buf, bool extended,
                                     NBDRequest *req)
{
    if (extended) {
        NBDWireExtRequest w;
        memcpy(&w, buf, sizeof(w));
        if (be32toh(w.magic) != NBD_EXTENDED_REQUEST_MAGIC) {
            return -EPROTO;
        }
        req->length = be64toh(w.length);
        req->flags = be16toh(w.flags);
        req->type = be16toh(w.type);
        req->cookie = be64toh(w.cookie);
        req->offset = be64toh(w.offset);
    } else {
        NBDWireRequest w;
        memcpy(&w, buf, sizeof(w));
        if (be32toh(w.magic) != NBD_REQUEST_MAGIC) {
            return -EPROTO;
        }
        req->length = be32toh(w.length);
        req->flags = be16toh(w.flags);
        req->type = be16toh(w.type);
        req->cookie = be64toh(w.cookie);
        req->offset = be64toh(w.offset);
    }
    return 0;
}

/*
 * Number of payload bytes that follow the header on the wire, whatever
 * the request's validity: with compact headers only NBD_CMD_WRITE has
 * one (length bytes); with extended headers exactly the requests with
 * NBD_CMD_FLAG_PAYLOAD_LEN have one (length bytes).  Every one of those
 * bytes must be read or drained to stay in sync with the stream.
 */
static inline uint64_t nbd_request_payload_len(const NBDRequest *req,
                                               bool extended)
{
    if (extended) {
        return (req->flags & NBD_CMD_FLAG_PAYLOAD_LEN) ? req->length : 0;
    }
    return req->type == NBD_CMD_WRITE ? req->length : 0;
}

/* What the handshake settled for one connection, as request validation
 * needs it. */
typedef struct NBDSession {
    uint64_t size;          /* export size in bytes */
    uint32_t min_block;     /* minimum block size, power of 2 (0 = 1) */
    uint32_t max_payload;   /* max READ/WRITE length (0 = default) */
    uint16_t tflags;        /* transmission flags sent to the client */
    bool read_only;         /* writes fail with EPERM */
    bool structured;        /* NBD_OPT_STRUCTURED_REPLY acknowledged */
    bool extended;          /* NBD_OPT_EXTENDED_HEADERS acknowledged */
    uint32_t meta;          /* selected metadata contexts (mask) */
} NBDSession;

/* Result of nbd_request_check() besides the NBD error. */
typedef struct NBDCheck {
    /*
     * Payload bytes following the header (nbd_request_payload_len()).
     * If the check passed, they are the command's data (WRITE data or
     * the BLOCK_STATUS payload); if it failed, the caller must read
     * and discard them before (or while) replying with the error.
     */
    uint64_t payload;
    /*
     * NBD_CMD_DISC: send no reply; stop reading, finish the requests in
     * flight, then close.
     */
    bool disconnect;
} NBDCheck;

/*
 * Validates one decoded request against the session.  Returns 0 (go
 * ahead) or the NBD error to reply with.  The request is checked in
 * this order, the first failure winning:
 *   1. NBD_CMD_DISC: always 0 with out->disconnect set.
 *   2. Unknown command, or one not advertised (FLUSH, TRIM, CACHE,
 *      WRITE_ZEROES, RESIZE without their NBD_FLAG_SEND_* bit):
 *      NBD_EINVAL.
 *   3. Flags not valid for this command in this session: unknown bits;
 *      FUA without SEND_FUA; NO_HOLE / FAST_ZERO except on WRITE_ZEROES
 *      (FAST_ZERO also needs SEND_FAST_ZERO); DF except on READ with
 *      structured replies or extended headers and SEND_DF; REQ_ONE
 *      except on BLOCK_STATUS; PAYLOAD_LEN except with extended headers
 *      on WRITE, or on BLOCK_STATUS with BLOCK_STATUS_PAYLOAD
 *      advertised.  With extended headers a WRITE without PAYLOAD_LEN
 *      is invalid too.  All NBD_EINVAL.
 *   4. WRITE, TRIM, WRITE_ZEROES, RESIZE on a read-only export:
 *      NBD_EPERM.
 *   5. FLUSH with a nonzero offset or length: NBD_EINVAL.
 *   6. BLOCK_STATUS without structured replies / extended headers or
 *      without a selected context: NBD_EINVAL.  With PAYLOAD_LEN, a
 *      payload that is not 8 + 4n bytes with 1 <= n <=
 *      NBD_META_NCONTEXTS (more ids than contexts must repeat one) is
 *      NBD_EINVAL; a well-formed one passes here and the caller reads
 *      it and calls nbd_bs_payload_decode() + nbd_bs_payload_check(),
 *      which apply steps 8-9 to the effect length in the payload.
 *   7. READ or WRITE longer than max_payload: NBD_EINVAL.  (The spec
 *      reserves EOVERFLOW for DF reads it cannot send unfragmented; a
 *      READ over the advertised maximum fails with or without DF, so
 *      EINVAL, the spec's error for exceeding the maximum block size,
 *      is the honest answer.)  Other commands have no payload and may
 *      be longer.
 *   8. Range: offset + length beyond the export size (overflow-safe):
 *      NBD_ENOSPC for WRITE and WRITE_ZEROES, NBD_EINVAL otherwise.
 *   9. Alignment to min_block: offset and length of READ, WRITE, TRIM,
 *      WRITE_ZEROES, CACHE and BLOCK_STATUS: NBD_EINVAL.  A
 *      BLOCK_STATUS length may be unaligned only where it ends at the
 *      end of the export: every descriptor must be a multiple of the
 *      minimum block size, and with REQ_ONE none may be longer than the
 *      request, so an unaligned length elsewhere has no valid reply.
 *      BLOCK_STATUS of length 0: NBD_EINVAL (a successful reply needs a
 *      nonzero extent no longer than the request with REQ_ONE).  Other
 *      zero-length requests are valid no-ops if the offset is in range
 *      and aligned (the spec leaves them unspecified but says not to
 *      disconnect; succeeding trivially is the least surprising).
 * RESIZE passes steps 1-4 only: the experimental extension's rules are
 * not implemented (rawnbd does not advertise it).
 *
 * No request ever requires dropping the connection: the header alone
 * says how many payload bytes follow, so an erroneous request's payload
 * can always be drained and the stream stays framed.  (The extended
 * headers text says a server SHOULD disconnect on a PAYLOAD_LEN length
 * above the maximum payload; rawnbd drains and fails it instead, which
 * keeps the client informed and costs no memory.)  Only a bad magic
 * (nbd_request_decode) forces a drop.
 */
uint32_t nbd_request_check(const NBDRequest *req, const NBDSession *s,
                           NBDCheck *out);

/* Largest well-formed BLOCK_STATUS payload: one id per context. */
#define NBD_MAX_BS_PAYLOAD \
    ((size_t)sizeof(NBDWireBlockStatusPayload) + 4 * NBD_META_NCONTEXTS)

/* The decoded payload of BLOCK_STATUS with NBD_CMD_FLAG_PAYLOAD_LEN. */
typedef struct NBDBlockStatusPayload {
    uint64_t effect_length;
    uint32_t nids;          /* number of context ids */
    const uint8_t *ids;     /* nids big-endian 32-bit ids */
} NBDBlockStatusPayload;

/* Decodes len payload bytes: 64-bit effect length, then one or more
 * 32-bit context ids, at most NBD_MAX_BS_PAYLOAD bytes in all.  Returns
 * 0 or -EINVAL. */
int nbd_bs_payload_decode(const void *buf, size_t len,
                          NBDBlockStatusPayload *out);

/*
 * Validates a decoded BLOCK_STATUS payload: every id must be a selected
 * context and appear once (else NBD_EINVAL, as the spec requires), and
 * the effect length goes through the range, alignment and zero-length
 * checks of nbd_request_check() steps 8-9.  Returns 0 and the contexts
 * to report in *want, or the NBD error.
 */
uint32_t nbd_bs_payload_check(const NBDRequest *req, const NBDSession *s,
                              const NBDBlockStatusPayload *p,
                              uint32_t *want);

/* ================================================================== */
/* Transmission: replies                                               */
/* ================================================================== */

#define NBD_SIMPLE_REPLY_SIZE   ((size_t)sizeof(NBDWireSimpleReply))
#define NBD_CHUNK_SIZE          ((size_t)sizeof(NBDWireChunk))
#define NBD_EXT_CHUNK_SIZE      ((size_t)sizeof(NBDWireExtChunk))
/* Largest chunk header; a buffer this big fits either style. */
#define NBD_MAX_CHUNK_HEADER    NBD_EXT_CHUNK_SIZE
/* Largest output of the fixed-layout chunk encoders below (header plus
 * the fixed part of the payload). */
#define NBD_MAX_CHUNK_FIXED     (NBD_MAX_CHUNK_HEADER + 12)
/* Largest error chunk (header, error, message, offset). */
#define NBD_MAX_ERROR_CHUNK \
    (NBD_MAX_CHUNK_HEADER + sizeof(NBDWireError) + NBD_MAX_ERR_MSG + 8)

/*
 * Writes a 16-byte simple reply: error (0 or NBD_E*) and the request's
 * cookie.  For a successful READ the data follows.  Returns
 * NBD_SIMPLE_REPLY_SIZE.
 */
static inline size_t nbd_simple_reply_encode(void *buf, uint64_t cookie,
                                             uint32_t error)
{
    NBDWireSimpleReply w = {
        .magic = htobe32(NBD_SIMPLE_REPLY_MAGIC),
        .error = htobe32(error),
        .cookie = htobe64(cookie),
    };
    memcpy(buf, &w, sizeof(w));
    return sizeof(w);
}

/*
 * Writes a chunk header for a reply to req announcing `length` payload
 * bytes: a 20-byte structured header, or with `extended` a 32-byte one
 * that also echoes req->offset.  Returns the header size, or 0 (writing
 * nothing) if length does not fit the compact header's 32 bits.
 */
static inline size_t nbd_chunk_encode(void *buf, bool extended,
                                      const NBDRequest *req, uint16_t flags,
                                      uint16_t type, uint64_t length)
{
    if (extended) {
        NBDWireExtChunk w = {
            .magic = htobe32(NBD_EXTENDED_REPLY_MAGIC),
            .flags = htobe16(flags),
            .type = htobe16(type),
            .cookie = htobe64(req->cookie),
            .offset = htobe64(req->offset),
            .length = htobe64(length),
        };
        memcpy(buf, &w, sizeof(w));
        return sizeof(w);
    }
    if (length > UINT32_MAX) {
        return 0;
    }
    NBDWireChunk c = {
        .magic = htobe32(NBD_STRUCTURED_REPLY_MAGIC),
        .flags = htobe16(flags),
        .type = htobe16(type),
        .cookie = htobe64(req->cookie),
        .length = htobe32((uint32_t)length),
    };
    memcpy(buf, &c, sizeof(c));
    return sizeof(c);
}

/*
 * NBD_REPLY_TYPE_NONE with NBD_REPLY_FLAG_DONE: the final chunk of a
 * successful reply.  Returns the header size.
 */
static inline size_t nbd_chunk_none_encode(void *buf, bool extended,
                                           const NBDRequest *req)
{
    return nbd_chunk_encode(buf, extended, req, NBD_REPLY_FLAG_DONE,
                            NBD_REPLY_TYPE_NONE, 0);
}

/*
 * NBD_REPLY_TYPE_OFFSET_DATA header: chunk header plus the 8-byte
 * absolute offset of datalen data bytes, which the caller sends right
 * after (e.g. as the next iovec).  Returns header + 8, or 0 if
 * datalen + 8 does not fit the compact header.
 */
static inline size_t nbd_chunk_data_encode(void *buf, bool extended,
                                           const NBDRequest *req,
                                           uint16_t flags,
                                           uint64_t data_offset,
                                           uint64_t datalen)
{
    size_t n;

    if (datalen > UINT64_MAX - sizeof(NBDWireOffsetData)) {
        return 0;
    }
    n = nbd_chunk_encode(buf, extended, req, flags,
                         NBD_REPLY_TYPE_OFFSET_DATA,
                         datalen + sizeof(NBDWireOffsetData));
    if (n == 0) {
        return 0;
    }
    nbd_put_be64((uint8_t *)buf + n, data_offset);
    return n + sizeof(NBDWireOffsetData);
}

/*
 * NBD_REPLY_TYPE_OFFSET_HOLE: hole_size (nonzero) bytes at absolute
 * offset hole_offset read as zeroes.  Returns header + 12.
 */
size_t nbd_chunk_hole_encode(void *buf, bool extended, const NBDRequest *req,
                             uint16_t flags, uint64_t hole_offset,
                             uint32_t hole_size);

/*
 * NBD_REPLY_TYPE_ERROR with NBD error `error` and message msg (NULL or
 * "" for none) truncated to NBD_MAX_ERR_MSG bytes.  An error of 0 is
 * sent as NBD_EIO, since an error chunk must carry a nonzero error.
 * buf holds NBD_MAX_ERROR_CHUNK bytes; returns the bytes written.
 */
size_t nbd_chunk_error_encode(void *buf, bool extended, const NBDRequest *req,
                              uint16_t flags, uint32_t error,
                              const char *msg);

/* NBD_REPLY_TYPE_ERROR_OFFSET: as above, plus the absolute offset at
 * which the error occurred. */
size_t nbd_chunk_error_offset_encode(void *buf, bool extended,
                                     const NBDRequest *req, uint16_t flags,
                                     uint32_t error, const char *msg,
                                     uint64_t error_offset);

/*
 * NBD_REPLY_TYPE_BLOCK_STATUS header: chunk header plus the context id;
 * `count` (>= 1) 8-byte descriptors, filled with nbd_extent_encode(),
 * follow from the caller's array.  Returns header + 4, or 0 if count
 * is 0 or the payload does not fit the compact header.
 */
size_t nbd_chunk_block_status_encode(void *buf, bool extended,
                                     const NBDRequest *req, uint16_t flags,
                                     uint32_t context_id, uint32_t count);

/*
 * NBD_REPLY_TYPE_BLOCK_STATUS_EXT header (extended headers only):
 * extended chunk header plus context id and descriptor count; `count`
 * (>= 1) 16-byte descriptors, filled with nbd_extent_ext_encode(),
 * follow.  Returns 40, or 0 if count is 0.
 */
size_t nbd_chunk_block_status_ext_encode(void *buf, const NBDRequest *req,
                                         uint16_t flags, uint32_t context_id,
                                         uint32_t count);

/* Fills one 8-byte block status descriptor (length must be nonzero). */
static inline void nbd_extent_encode(void *desc, uint32_t length,
                                     uint32_t flags)
{
    NBDWireExtent w = { .length = htobe32(length), .flags = htobe32(flags) };
    memcpy(desc, &w, sizeof(w));
}

/* Fills one 16-byte extended block status descriptor. */
static inline void nbd_extent_ext_encode(void *desc, uint64_t length,
                                         uint64_t flags)
{
    NBDWireExtentExt w = {
        .length = htobe64(length),
        .flags = htobe64(flags),
    };
    memcpy(desc, &w, sizeof(w));
}

/* Length of msg once truncated to NBD_MAX_ERR_MSG bytes without
 * splitting a UTF-8 sequence (NULL gives 0). */
size_t nbd_err_msg_len(const char *msg);

#endif /* RAWNBD_PROTO_NBD_PROTO_H */
