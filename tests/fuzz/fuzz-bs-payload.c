/*
 * fuzz-bs-payload.c: the payload of BLOCK_STATUS with PAYLOAD_LEN
 * (extended headers): an effect length and context ids.
 *
 * Input: a 16-byte session (fuzz-session.h), the request's offset (8
 * bytes), flags (1 byte: REQ_ONE and others), then the payload, copied
 * into a buffer of exactly its size.  Checks:
 *   - decode accepts exactly 8 + 4n bytes with 1 <= n <= the number of
 *     contexts, and its ids lie in the buffer;
 *   - nbd_request_check() on the header announcing this payload agrees
 *     with decode on the length (the server reads the payload only when
 *     the header check passed, then decodes it: the two must not
 *     disagree);
 *   - nbd_bs_payload_check() equals the reference model, and on success
 *     reports only selected contexts.
 */
#include "fuzz-session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzIn in = { data, size };
    NBDSession s;
    NBDRequest req;
    NBDCheck chk;
    NBDBlockStatusPayload p;
    uint8_t *pl;
    size_t len;
    uint32_t err, want = 0, want2 = 0, hdr_err;
    int r, ok_len;

    fuzz_session(&in, &s);
    /* The payload form exists only with extended headers and the flag. */
    s.extended = true;
    s.structured = true;
    s.tflags |= NBD_FLAG_BLOCK_STATUS_PAYLOAD;
    memset(&req, 0, sizeof(req));
    req.type = NBD_CMD_BLOCK_STATUS;
    req.offset = fuzz_take(&in, 8);
    req.flags = NBD_CMD_FLAG_PAYLOAD_LEN |
                ((uint16_t)fuzz_take(&in, 1) & NBD_CMD_FLAG_REQ_ONE);
    len = in.left;
    req.length = len;

    pl = malloc(len ? len : 1);
    FUZZ_CHECK(pl != NULL);
    memcpy(pl, in.p, len);

    ok_len = len >= 12 && (len - 8) % 4 == 0 &&
             (len - 8) / 4 <= NBD_META_NCONTEXTS;
    memset(&p, 0, sizeof(p));
    r = nbd_bs_payload_decode(pl, len, &p);
    FUZZ_CHECK((r == 0) == ok_len);
    FUZZ_CHECK(r == 0 || r == -EINVAL);

    hdr_err = nbd_request_check(&req, &s, &chk);
    FUZZ_CHECK(chk.payload == len && !chk.disconnect);
    FUZZ_CHECK(hdr_err == ref_request_check(&req, &s));
    if (hdr_err == 0) {
        /* The header check let it through: the payload must decode. */
        FUZZ_CHECK(r == 0);
    }
    if (r != 0) {
        free(pl);
        return 0;
    }
    FUZZ_CHECK(p.effect_length == nbd_get_be64(pl));
    FUZZ_CHECK(p.nids >= 1 && 8 + 4 * (size_t)p.nids == len);
    FUZZ_CHECK(p.ids == pl + 8);
    FUZZ_CHECK(fuzz_inside(p.ids, 4 * (size_t)p.nids, pl, len));

    err = nbd_bs_payload_check(&req, &s, &p, &want);
    FUZZ_CHECK(err == ref_bs_check(&req, &s, p.effect_length, p.ids, p.nids,
                                   &want2));
    if (err == 0) {
        FUZZ_CHECK(want == want2 && want != 0 && (want & ~s.meta) == 0);
        FUZZ_CHECK(p.effect_length != 0);
        FUZZ_CHECK(req.offset <= s.size &&
                   p.effect_length <= s.size - req.offset);
    } else {
        FUZZ_CHECK(err == NBD_EINVAL);
    }
    free(pl);
    return 0;
}
