/*
 * nbd-wire.h: NBD protocol constants and on-the-wire message layouts.
 *
 * Everything here follows the NBD protocol specification (doc/proto.md
 * of the NetworkBlockDevice project, including the extended-headers
 * extension).  Every multi-byte field of every NBD* wire struct is
 * big-endian ("network byte order") on the wire; the structs are packed
 * so that sizeof() equals the wire size, which is asserted below.  Use
 * the nbd_get_be*() / nbd_put_be*() helpers or htobe*() / be*toh() to
 * convert, and memcpy() whole structs to and from buffers (never take
 * the address of a packed member).
 *
 * This header depends on libc only.
 */
#ifndef RAWNBD_PROTO_NBD_WIRE_H
#define RAWNBD_PROTO_NBD_WIRE_H

#include <endian.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Magic numbers                                                       */
/* ------------------------------------------------------------------ */

/* "NBDMAGIC": first 8 bytes the server sends. */
#define NBD_MAGIC                   UINT64_C(0x4e42444d41474943)
/* "IHAVEOPT": second 8 bytes of the newstyle greeting, and the first
 * 8 bytes of every option request. */
#define NBD_OPTS_MAGIC              UINT64_C(0x49484156454f5054)
/* Oldstyle negotiation magic (not supported by rawnbd; for logs). */
#define NBD_OLDSTYLE_MAGIC          UINT64_C(0x00420281861253)
/* First 8 bytes of every option reply. */
#define NBD_OPT_REPLY_MAGIC         UINT64_C(0x0003e889045565a9)
/* Compact (28-byte) transmission request. */
#define NBD_REQUEST_MAGIC           UINT32_C(0x25609513)
/* Extended (32-byte) transmission request. */
#define NBD_EXTENDED_REQUEST_MAGIC  UINT32_C(0x21e41c71)
/* Simple (16-byte) reply. */
#define NBD_SIMPLE_REPLY_MAGIC      UINT32_C(0x67446698)
/* Structured reply chunk (20-byte header). */
#define NBD_STRUCTURED_REPLY_MAGIC  UINT32_C(0x668e33ef)
/* Extended reply chunk (32-byte header). */
#define NBD_EXTENDED_REPLY_MAGIC    UINT32_C(0x6e8a278c)

/* ------------------------------------------------------------------ */
/* Handshake                                                           */
/* ------------------------------------------------------------------ */

/* Handshake flags (16 bits, server -> client, in the greeting). */
#define NBD_FLAG_FIXED_NEWSTYLE     (1u << 0) /* fixed newstyle supported */
#define NBD_FLAG_NO_ZEROES          (1u << 1) /* may omit 124 zero bytes */

/* Client flags (32 bits, client -> server, after the greeting). */
#define NBD_FLAG_C_FIXED_NEWSTYLE   (1u << 0) /* client speaks fixed newstyle */
#define NBD_FLAG_C_NO_ZEROES        (1u << 1) /* omit the 124 zero bytes */
/* Every client flag the spec defines; any other bit is unknown. */
#define NBD_FLAG_C_KNOWN \
    (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)

/* Option codes (NBD_OPT_*), client -> server. */
#define NBD_OPT_EXPORT_NAME         1u  /* pick export, enter transmission */
#define NBD_OPT_ABORT               2u  /* soft disconnect */
#define NBD_OPT_LIST                3u  /* list exports */
#define NBD_OPT_PEEK_EXPORT         4u  /* withdrawn extension; unused */
#define NBD_OPT_STARTTLS            5u  /* upgrade to TLS */
#define NBD_OPT_INFO                6u  /* describe an export */
#define NBD_OPT_GO                  7u  /* describe and enter transmission */
#define NBD_OPT_STRUCTURED_REPLY    8u  /* enable structured replies */
#define NBD_OPT_LIST_META_CONTEXT   9u  /* list metadata contexts */
#define NBD_OPT_SET_META_CONTEXT    10u /* select metadata contexts */
#define NBD_OPT_EXTENDED_HEADERS    11u /* enable 32-byte headers */

/* Option reply types (NBD_REP_*), server -> client. */
#define NBD_REP_ACK                 1u  /* success / end of list */
#define NBD_REP_SERVER              2u  /* one export (reply to LIST) */
#define NBD_REP_INFO                3u  /* one NBD_INFO_* item */
#define NBD_REP_META_CONTEXT        4u  /* one metadata context */

/* Error replies have bit 31 set and may carry a message string. */
#define NBD_REP_FLAG_ERROR          (1u << 31)
#define NBD_REP_ERR(n)              (NBD_REP_FLAG_ERROR | (n))
#define NBD_REP_IS_ERR(t)           (((t) & NBD_REP_FLAG_ERROR) != 0)
#define NBD_REP_ERR_UNSUP           NBD_REP_ERR(1u)  /* unknown option */
#define NBD_REP_ERR_POLICY          NBD_REP_ERR(2u)  /* forbidden by policy */
#define NBD_REP_ERR_INVALID         NBD_REP_ERR(3u)  /* malformed option */
#define NBD_REP_ERR_PLATFORM        NBD_REP_ERR(4u)  /* not on this platform */
#define NBD_REP_ERR_TLS_REQD        NBD_REP_ERR(5u)  /* start TLS first */
#define NBD_REP_ERR_UNKNOWN         NBD_REP_ERR(6u)  /* no such export */
#define NBD_REP_ERR_SHUTDOWN        NBD_REP_ERR(7u)  /* server shutting down */
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR(8u)  /* ask for BLOCK_SIZE */
#define NBD_REP_ERR_TOO_BIG         NBD_REP_ERR(9u)  /* request too large */
#define NBD_REP_ERR_EXT_HEADER_REQD NBD_REP_ERR(10u) /* need ext. headers */

/* Information types carried by NBD_REP_INFO (and requested by
 * NBD_OPT_INFO / NBD_OPT_GO). */
#define NBD_INFO_EXPORT             0u /* size + transmission flags */
#define NBD_INFO_NAME               1u /* canonical export name */
#define NBD_INFO_DESCRIPTION        2u /* human-readable description */
#define NBD_INFO_BLOCK_SIZE         3u /* min / preferred / max block size */

/* Transmission flags (16 bits, server -> client, end of handshake). */
#define NBD_FLAG_HAS_FLAGS          (1u << 0)  /* always set */
#define NBD_FLAG_READ_ONLY          (1u << 1)  /* export is read-only */
#define NBD_FLAG_SEND_FLUSH         (1u << 2)  /* NBD_CMD_FLUSH supported */
#define NBD_FLAG_SEND_FUA           (1u << 3)  /* NBD_CMD_FLAG_FUA supported */
#define NBD_FLAG_ROTATIONAL         (1u << 4)  /* seek-sensitive medium */
#define NBD_FLAG_SEND_TRIM          (1u << 5)  /* NBD_CMD_TRIM supported */
#define NBD_FLAG_SEND_WRITE_ZEROES  (1u << 6)  /* WRITE_ZEROES + NO_HOLE */
#define NBD_FLAG_SEND_DF            (1u << 7)  /* NBD_CMD_FLAG_DF supported */
#define NBD_FLAG_CAN_MULTI_CONN     (1u << 8)  /* safe across connections */
#define NBD_FLAG_SEND_RESIZE        (1u << 9)  /* NBD_CMD_RESIZE (experim.) */
#define NBD_FLAG_SEND_CACHE         (1u << 10) /* NBD_CMD_CACHE supported */
#define NBD_FLAG_SEND_FAST_ZERO     (1u << 11) /* NBD_CMD_FLAG_FAST_ZERO */
#define NBD_FLAG_BLOCK_STATUS_PAYLOAD (1u << 12) /* BLOCK_STATUS payload form */

/* ------------------------------------------------------------------ */
/* Transmission                                                        */
/* ------------------------------------------------------------------ */

/* Request types (NBD_CMD_*). */
#define NBD_CMD_READ                0u
#define NBD_CMD_WRITE               1u
#define NBD_CMD_DISC                2u /* disconnect; no reply */
#define NBD_CMD_FLUSH               3u
#define NBD_CMD_TRIM                4u
#define NBD_CMD_CACHE               5u
#define NBD_CMD_WRITE_ZEROES        6u
#define NBD_CMD_BLOCK_STATUS        7u
#define NBD_CMD_RESIZE              8u /* experimental RESIZE extension */

/* Command flags (16 bits, client -> server, in every request). */
#define NBD_CMD_FLAG_FUA            (1u << 0) /* persist before replying */
#define NBD_CMD_FLAG_NO_HOLE        (1u << 1) /* WRITE_ZEROES: allocate */
#define NBD_CMD_FLAG_DF             (1u << 2) /* READ: one content chunk */
#define NBD_CMD_FLAG_REQ_ONE        (1u << 3) /* BLOCK_STATUS: one extent */
#define NBD_CMD_FLAG_FAST_ZERO      (1u << 4) /* WRITE_ZEROES: fail if slow */
#define NBD_CMD_FLAG_PAYLOAD_LEN    (1u << 5) /* ext. header: length=payload */
/* Every command flag the spec defines; any other bit is unknown. */
#define NBD_CMD_FLAG_KNOWN \
    (NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF | \
     NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_PAYLOAD_LEN)

/* Structured / extended reply flags (16 bits). */
#define NBD_REPLY_FLAG_DONE         (1u << 0) /* final chunk of the reply */

/* Structured / extended reply chunk types (NBD_REPLY_TYPE_*). */
#define NBD_REPLY_TYPE_NONE             0u /* empty; always with DONE */
#define NBD_REPLY_TYPE_OFFSET_DATA      1u /* offset + data */
#define NBD_REPLY_TYPE_OFFSET_HOLE      2u /* offset + 32-bit hole size */
#define NBD_REPLY_TYPE_BLOCK_STATUS     5u /* id + 32-bit descriptors */
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6u /* id + count + 64-bit descs */
/* Error chunk types have bit 15 set. */
#define NBD_REPLY_TYPE_FLAG_ERROR       (1u << 15)
#define NBD_REPLY_TYPE_IS_ERR(t)        (((t) & NBD_REPLY_TYPE_FLAG_ERROR) != 0)
#define NBD_REPLY_TYPE_ERROR            (NBD_REPLY_TYPE_FLAG_ERROR | 1u)
#define NBD_REPLY_TYPE_ERROR_OFFSET     (NBD_REPLY_TYPE_FLAG_ERROR | 2u)

/* Error values sent in replies.  They equal the Linux errno values of
 * the same name but are a protocol constant, not an errno: convert
 * with nbd_errno_to_nbd() / nbd_err_to_errno(). */
#define NBD_EPERM                   1u
#define NBD_EIO                     5u
#define NBD_ENOMEM                  12u
#define NBD_EINVAL                  22u
#define NBD_ENOSPC                  28u
#define NBD_EOVERFLOW               75u
#define NBD_ENOTSUP                 95u
#define NBD_ESHUTDOWN               108u

/* Status flags of the "base:allocation" metadata context. */
#define NBD_STATE_HOLE              (1u << 0) /* unallocated */
#define NBD_STATE_ZERO              (1u << 1) /* reads as zeroes */

/* ------------------------------------------------------------------ */
/* Protocol limits from the spec                                       */
/* ------------------------------------------------------------------ */

/* Longest string (export name, description, query, message) the spec
 * allows; 256 is its "SHOULD" limit. */
#define NBD_MAX_STRING              4096u
#define NBD_SHOULD_MAX_STRING       256u
/* Largest minimum block size the spec allows (a power of two). */
#define NBD_MAX_MIN_BLOCK           65536u
/* Payload size every server should accept without calling it a denial
 * of service, and the default maximum block size a portable client
 * assumes for READ and WRITE. */
#define NBD_PORTABLE_MAX_PAYLOAD    (32u << 20)

/* ------------------------------------------------------------------ */
/* Server-side limits chosen by rawnbd                                 */
/* ------------------------------------------------------------------ */

/*
 * Largest option payload (the 32-bit length after the option code) the
 * server reads into memory.  The largest well-formed payload we act on
 * is a SET/LIST_META_CONTEXT with a 4096-byte name and a handful of
 * queries, or an INFO/GO with a 4096-byte name and a few info requests;
 * 64 KiB covers those with a wide margin while keeping the per-client
 * handshake buffer small.  NBD_OPT_EXPORT_NAME is further limited to
 * NBD_MAX_STRING since its whole payload is a name.
 */
#define NBD_MAX_OPT_PAYLOAD         (64u * 1024)

/*
 * Most queries one LIST/SET_META_CONTEXT may carry.  More is answered
 * with NBD_REP_ERR_TOO_BIG (the spec allows that for too many queries).
 * Real clients send one per context they want: a few at most.
 */
#define NBD_MAX_META_QUERIES        128u

/*
 * Default maximum payload (maximum block size for READ and WRITE) the
 * server advertises in NBD_INFO_BLOCK_SIZE and enforces.  64 MiB is
 * twice the 32 MiB the spec says clients may portably assume and every
 * server should accept, so no compliant client is ever refused; it is
 * a multiple of every legal minimum block size; and it bounds the
 * buffer one in-flight request can pin to 64 MiB.  Larger effect
 * lengths remain fine for commands without a payload (TRIM,
 * WRITE_ZEROES, CACHE, BLOCK_STATUS).
 */
#define NBD_DEFAULT_MAX_PAYLOAD     (64u << 20)

/* ------------------------------------------------------------------ */
/* Wire structures (packed, big-endian fields)                         */
/* ------------------------------------------------------------------ */

#define NBD_PACKED __attribute__((__packed__))

/* Server greeting of the newstyle handshake. */
typedef struct NBD_PACKED NBDWireGreeting {
    uint64_t nbdmagic;      /* NBD_MAGIC */
    uint64_t optsmagic;     /* NBD_OPTS_MAGIC */
    uint16_t hflags;        /* NBD_FLAG_FIXED_NEWSTYLE, ... */
} NBDWireGreeting;
_Static_assert(sizeof(NBDWireGreeting) == 18, "greeting is 18 bytes");

/* Client flags, the client's answer to the greeting. */
typedef struct NBD_PACKED NBDWireClientFlags {
    uint32_t cflags;        /* NBD_FLAG_C_* */
} NBDWireClientFlags;
_Static_assert(sizeof(NBDWireClientFlags) == 4, "client flags: 4 bytes");

/* Option request header; `len` bytes of payload follow. */
typedef struct NBD_PACKED NBDWireOptHeader {
    uint64_t magic;         /* NBD_OPTS_MAGIC */
    uint32_t option;        /* NBD_OPT_* */
    uint32_t len;           /* payload length */
} NBDWireOptHeader;
_Static_assert(sizeof(NBDWireOptHeader) == 16, "option header: 16 bytes");

/* Option reply header; `len` bytes of payload follow. */
typedef struct NBD_PACKED NBDWireOptReply {
    uint64_t magic;         /* NBD_OPT_REPLY_MAGIC */
    uint32_t option;        /* the option being answered */
    uint32_t type;          /* NBD_REP_* */
    uint32_t len;           /* payload length */
} NBDWireOptReply;
_Static_assert(sizeof(NBDWireOptReply) == 20, "option reply: 20 bytes");

/* Reply to NBD_OPT_EXPORT_NAME; `zeroes` is omitted when the client
 * set NBD_FLAG_C_NO_ZEROES (then only the first 10 bytes are sent). */
typedef struct NBD_PACKED NBDWireExportNameReply {
    uint64_t size;          /* export size in bytes */
    uint16_t tflags;        /* transmission flags */
    uint8_t zeroes[124];    /* reserved, zero */
} NBDWireExportNameReply;
_Static_assert(sizeof(NBDWireExportNameReply) == 134,
               "export name reply: 134 bytes");

/* NBD_REP_INFO payload for NBD_INFO_EXPORT. */
typedef struct NBD_PACKED NBDWireInfoExport {
    uint16_t info;          /* NBD_INFO_EXPORT */
    uint64_t size;          /* export size in bytes */
    uint16_t tflags;        /* transmission flags */
} NBDWireInfoExport;
_Static_assert(sizeof(NBDWireInfoExport) == 12, "INFO_EXPORT: 12 bytes");

/* NBD_REP_INFO payload for NBD_INFO_BLOCK_SIZE. */
typedef struct NBD_PACKED NBDWireInfoBlockSize {
    uint16_t info;          /* NBD_INFO_BLOCK_SIZE */
    uint32_t min_block;     /* minimum block size (power of 2) */
    uint32_t pref_block;    /* preferred block size (power of 2) */
    uint32_t max_block;     /* maximum block size (max payload) */
} NBDWireInfoBlockSize;
_Static_assert(sizeof(NBDWireInfoBlockSize) == 14,
               "INFO_BLOCK_SIZE: 14 bytes");

/* Compact transmission request; a WRITE is followed by `length` bytes. */
typedef struct NBD_PACKED NBDWireRequest {
    uint32_t magic;         /* NBD_REQUEST_MAGIC */
    uint16_t flags;         /* NBD_CMD_FLAG_* */
    uint16_t type;          /* NBD_CMD_* */
    uint64_t cookie;        /* opaque, echoed in the reply */
    uint64_t offset;
    uint32_t length;
} NBDWireRequest;
_Static_assert(sizeof(NBDWireRequest) == 28, "compact request: 28 bytes");

/* Extended transmission request; with NBD_CMD_FLAG_PAYLOAD_LEN it is
 * followed by `length` bytes, else `length` is an effect length. */
typedef struct NBD_PACKED NBDWireExtRequest {
    uint32_t magic;         /* NBD_EXTENDED_REQUEST_MAGIC */
    uint16_t flags;         /* NBD_CMD_FLAG_* */
    uint16_t type;          /* NBD_CMD_* */
    uint64_t cookie;
    uint64_t offset;
    uint64_t length;
} NBDWireExtRequest;
_Static_assert(sizeof(NBDWireExtRequest) == 32, "extended request: 32 bytes");

/* Payload of NBD_CMD_BLOCK_STATUS with NBD_CMD_FLAG_PAYLOAD_LEN: this
 * header, then one or more 32-bit metadata context ids. */
typedef struct NBD_PACKED NBDWireBlockStatusPayload {
    uint64_t effect_length;
} NBDWireBlockStatusPayload;
_Static_assert(sizeof(NBDWireBlockStatusPayload) == 8,
               "block status payload header: 8 bytes");

/* Simple reply; a successful READ is followed by its data. */
typedef struct NBD_PACKED NBDWireSimpleReply {
    uint32_t magic;         /* NBD_SIMPLE_REPLY_MAGIC */
    uint32_t error;         /* 0 or NBD_E* */
    uint64_t cookie;
} NBDWireSimpleReply;
_Static_assert(sizeof(NBDWireSimpleReply) == 16, "simple reply: 16 bytes");

/* Structured reply chunk header; `length` bytes of payload follow. */
typedef struct NBD_PACKED NBDWireChunk {
    uint32_t magic;         /* NBD_STRUCTURED_REPLY_MAGIC */
    uint16_t flags;         /* NBD_REPLY_FLAG_* */
    uint16_t type;          /* NBD_REPLY_TYPE_* */
    uint64_t cookie;
    uint32_t length;
} NBDWireChunk;
_Static_assert(sizeof(NBDWireChunk) == 20, "structured chunk: 20 bytes");

/* Extended reply chunk header; `length` bytes of payload follow. */
typedef struct NBD_PACKED NBDWireExtChunk {
    uint32_t magic;         /* NBD_EXTENDED_REPLY_MAGIC */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;        /* the request's offset, echoed */
    uint64_t length;
} NBDWireExtChunk;
_Static_assert(sizeof(NBDWireExtChunk) == 32, "extended chunk: 32 bytes");

/* Payload of NBD_REPLY_TYPE_OFFSET_DATA: this header, then the data. */
typedef struct NBD_PACKED NBDWireOffsetData {
    uint64_t offset;        /* absolute offset of the data */
} NBDWireOffsetData;
_Static_assert(sizeof(NBDWireOffsetData) == 8, "OFFSET_DATA: 8 bytes");

/* Payload of NBD_REPLY_TYPE_OFFSET_HOLE. */
typedef struct NBD_PACKED NBDWireOffsetHole {
    uint64_t offset;        /* absolute offset of the hole */
    uint32_t size;          /* nonzero hole length */
} NBDWireOffsetHole;
_Static_assert(sizeof(NBDWireOffsetHole) == 12, "OFFSET_HOLE: 12 bytes");

/* Start of the payload of every error chunk: then `msglen` bytes of
 * message, then (NBD_REPLY_TYPE_ERROR_OFFSET only) a 64-bit offset. */
typedef struct NBD_PACKED NBDWireError {
    uint32_t error;         /* nonzero NBD_E* */
    uint16_t msglen;        /* message length */
} NBDWireError;
_Static_assert(sizeof(NBDWireError) == 6, "error payload: 6 bytes");

/* One descriptor of NBD_REPLY_TYPE_BLOCK_STATUS (after a 32-bit
 * context id). */
typedef struct NBD_PACKED NBDWireExtent {
    uint32_t length;        /* nonzero extent length */
    uint32_t flags;         /* context-defined, e.g. NBD_STATE_* */
} NBDWireExtent;
_Static_assert(sizeof(NBDWireExtent) == 8, "extent: 8 bytes");

/* Start of the payload of NBD_REPLY_TYPE_BLOCK_STATUS_EXT. */
typedef struct NBD_PACKED NBDWireBlockStatusExt {
    uint32_t context_id;
    uint32_t count;         /* descriptors that follow (0: unspecified) */
} NBDWireBlockStatusExt;
_Static_assert(sizeof(NBDWireBlockStatusExt) == 8,
               "block status ext header: 8 bytes");

/* One descriptor of NBD_REPLY_TYPE_BLOCK_STATUS_EXT.  The status is 64
 * bits wide; contexts defined so far use only the low 32 (the spec
 * also describes the high half as zero padding). */
typedef struct NBD_PACKED NBDWireExtentExt {
    uint64_t length;        /* nonzero extent length */
    uint64_t flags;         /* context-defined status */
} NBDWireExtentExt;
_Static_assert(sizeof(NBDWireExtentExt) == 16, "extended extent: 16 bytes");

/* ------------------------------------------------------------------ */
/* Big-endian load/store on unaligned buffers                          */
/* ------------------------------------------------------------------ */

static inline uint16_t nbd_get_be16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return be16toh(v);
}

static inline uint32_t nbd_get_be32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return be32toh(v);
}

static inline uint64_t nbd_get_be64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return be64toh(v);
}

static inline void nbd_put_be16(void *p, uint16_t v)
{
    v = htobe16(v);
    memcpy(p, &v, sizeof(v));
}

static inline void nbd_put_be32(void *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, sizeof(v));
}

static inline void nbd_put_be64(void *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, sizeof(v));
}

#endif /* RAWNBD_PROTO_NBD_WIRE_H */
