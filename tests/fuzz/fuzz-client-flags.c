/*
 * fuzz-client-flags.c: the first bytes of a handshake, and the small
 * helpers around it.
 *
 * Input: the server's handshake flags (2 bytes), the client's flags (4
 * bytes), then a 16-bit command flag word, a 32-bit value (both also
 * make up an export size) and a buffer size for the name/format
 * helpers.  Checks:
 *   - nbd_client_flags_decode() accepts exactly the known flags, and
 *     NO_ZEROES only when the server offered it;
 *   - the greeting and the EXPORT_NAME reply have their documented
 *     layout;
 *   - nbd_cmd_flags_format() behaves like snprintf in an exactly sized
 *     buffer and names every bit;
 *   - the name functions never return NULL; errno <-> NBD error maps
 *     are consistent.
 */
#include "fuzz.h"

#include "proto/nbd-proto.h"

static void check_flags_format(uint16_t flags, size_t size)
{
    char full[NBD_CMD_FLAGS_STRLEN];
    char *buf = malloc(size ? size : 1);
    size_t need, need2;

    FUZZ_CHECK(buf != NULL);
    need = nbd_cmd_flags_format(flags, full, sizeof(full));
    FUZZ_CHECK(need < sizeof(full));
    FUZZ_CHECK(strlen(full) == need);
    if (flags == 0) {
        FUZZ_CHECK(strcmp(full, "0") == 0);
    }
    if (flags & NBD_CMD_FLAG_FUA) {
        FUZZ_CHECK(strstr(full, "FUA") != NULL);
    }
    if (flags & ~NBD_CMD_FLAG_KNOWN) {
        FUZZ_CHECK(strstr(full, "0x") != NULL);
    }
    need2 = nbd_cmd_flags_format(flags, buf, size);
    FUZZ_CHECK(need2 == need);
    if (size) {
        size_t len = strnlen(buf, size);

        FUZZ_CHECK(len < size);
        FUZZ_CHECK(len == (need < size ? need : size - 1));
        FUZZ_CHECK(memcmp(buf, full, len) == 0);
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzIn in = { data, size };
    uint16_t hflags = (uint16_t)fuzz_take(&in, 2);
    uint8_t cbuf[4];
    uint8_t out[NBD_EXPORT_NAME_REPLY_SIZE + 8];
    uint32_t raw, cflags = 0x12345678, v;
    uint16_t cmdflags;
    int r, ok, e;
    size_t n;

    if (size < 6) {
        return 0;
    }
    memcpy(cbuf, data + 2, 4);
    in.p += 4;
    in.left -= 4;
    raw = nbd_get_be32(cbuf);
    r = nbd_client_flags_decode(cbuf, hflags, &cflags);
    ok = !(raw & ~(uint32_t)NBD_FLAG_C_KNOWN) &&
         (!(raw & NBD_FLAG_C_NO_ZEROES) || (hflags & NBD_FLAG_NO_ZEROES));
    FUZZ_CHECK((r == 0) == ok);
    if (ok) {
        FUZZ_CHECK(cflags == raw);
    } else {
        FUZZ_CHECK(r == -EPROTO && cflags == 0x12345678);
    }

    FUZZ_CHECK(nbd_greeting_encode(out, hflags) == NBD_GREETING_SIZE);
    FUZZ_CHECK(nbd_get_be64(out) == NBD_MAGIC);
    FUZZ_CHECK(nbd_get_be64(out + 8) == NBD_OPTS_MAGIC);
    FUZZ_CHECK(nbd_get_be16(out + 16) == hflags);

    cmdflags = (uint16_t)fuzz_take(&in, 2);
    v = (uint32_t)fuzz_take(&in, 4);
    memset(out, 0xee, sizeof(out));
    n = nbd_export_name_reply_encode(out, (uint64_t)v << 20 | cmdflags,
                                     hflags, raw & NBD_FLAG_C_NO_ZEROES);
    FUZZ_CHECK(n == (raw & NBD_FLAG_C_NO_ZEROES ? 10u : 134u));
    FUZZ_CHECK(nbd_get_be64(out) == ((uint64_t)v << 20 | cmdflags));
    FUZZ_CHECK(nbd_get_be16(out + 8) == hflags);
    for (size_t i = 10; i < sizeof(out); i++) {
        FUZZ_CHECK(out[i] == (i < n ? 0 : 0xee));
    }

    check_flags_format(cmdflags, (size_t)fuzz_take(&in, 1) % 80);

    FUZZ_CHECK(nbd_opt_name(v) && nbd_rep_name(v) && nbd_info_name(v));
    FUZZ_CHECK(nbd_cmd_name(v) && nbd_reply_type_name(v) && nbd_err_name(v));
    FUZZ_CHECK(strcmp(nbd_err_name(0), "success") == 0);

    /* errno -> NBD -> errno: the NBD side is always one we can send. */
    e = (int)(v % 200) * (v & 0x80000000u ? -1 : 1);
    {
        uint32_t ne = nbd_errno_to_nbd(e);
        int back = nbd_err_to_errno(ne);

        FUZZ_CHECK((ne == 0) == (e == 0));
        FUZZ_CHECK(ne == 0 || strcmp(nbd_err_name(ne), "unknown") != 0);
        FUZZ_CHECK(nbd_errno_to_nbd(back) == ne);
    }
    /* NBD -> errno: never 0 for an error, EINVAL for unknown values. */
    {
        int back = nbd_err_to_errno(v);

        FUZZ_CHECK((back == 0) == (v == 0));
        FUZZ_CHECK(back >= 0);
    }
    return 0;
}
