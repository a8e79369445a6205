/*
 * fuzz-meta.c: metadata context queries of LIST/SET_META_CONTEXT.
 *
 * Input: one control byte (bit 0: LIST rather than SET), then an option
 * payload.  Checks:
 *   - the parser: accepted queries lie in the buffer, are NUL-free, at
 *     most 4096 bytes, and have a non-empty namespace before a ':';
 *   - the iterator yields exactly nqueries queries, also when misused
 *     over raw bytes (it must stay inside the buffer and stop);
 *   - nbd_meta_match() equals a reference matcher written here from the
 *     rules in nbd-proto.h, and nbd_meta_query_matches() agrees with it
 *     on raw (unparsed) query strings too;
 *   - context ids and indexes round-trip.
 */
#include "fuzz.h"

#include "proto/nbd-proto.h"

/* Reference: does query q select the context called `name`? */
static int ref_matches(const char *q, size_t qlen, const char *name,
                       int list)
{
    size_t nlen = strlen(name);
    const char *colon;

    if (qlen == nlen && memcmp(q, name, nlen) == 0) {
        return 1;
    }
    if (!list || qlen == 0) {
        return 0;
    }
    /* "namespace:" with an empty leaf, only in LIST. */
    colon = memchr(q, ':', qlen);
    if (colon != q + qlen - 1) {
        return 0;
    }
    return qlen <= nlen && memcmp(q, name, qlen) == 0;
}

static uint32_t ref_mask(const char *q, size_t qlen, int list)
{
    uint32_t mask = 0;

    for (unsigned i = 0; i < NBD_META_NCONTEXTS; i++) {
        if (ref_matches(q, qlen, nbd_meta_context_name(i), list)) {
            mask |= 1u << i;
        }
    }
    return mask;
}

static void check_contexts(void)
{
    static int done;

    if (done) {
        return;
    }
    done = 1;
    for (unsigned i = 0; i < NBD_META_NCONTEXTS; i++) {
        const char *name = nbd_meta_context_name(i);
        uint32_t id = nbd_meta_context_id(i);

        FUZZ_CHECK(name != NULL && strchr(name, ':') != NULL);
        FUZZ_CHECK(id != 0);
        FUZZ_CHECK(nbd_meta_context_index(id) == (int)i);
    }
    FUZZ_CHECK(nbd_meta_context_name(NBD_META_NCONTEXTS) == NULL);
    FUZZ_CHECK(nbd_meta_context_index(0) == -1);
    FUZZ_CHECK(nbd_meta_context_index(NBD_META_NCONTEXTS + 1) == -1);
}

/* The iterator over arbitrary bytes: bounded and inside the buffer. */
static void check_raw_iter(const uint8_t *d, size_t n)
{
    NBDOptMeta fake = { .queries = d, .queries_len = (uint32_t)n };
    NBDMetaIter it;
    NBDString q;
    size_t steps = 0;

    nbd_meta_iter_init(&it, &fake);
    while (nbd_meta_iter_next(&it, &q)) {
        FUZZ_CHECK(fuzz_inside(q.ptr - 4, 4 + (size_t)q.len, d, n));
        FUZZ_CHECK(++steps <= n / 4);
    }
    /* Once finished it stays finished. */
    FUZZ_CHECK(!nbd_meta_iter_next(&it, &q));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    NBDOptMeta meta;
    NBDMetaIter it;
    NBDString q;
    const uint8_t *d;
    uint32_t n, count = 0, mask = 0;
    int list, r;

    check_contexts();
    if (size < 1) {
        return 0;
    }
    list = data[0] & 1;
    d = data + 1;
    n = (uint32_t)(size - 1);

    /* Raw strings straight into the matcher, whatever they contain. */
    for (unsigned i = 0; i <= NBD_META_NCONTEXTS; i++) {
        NBDString raw = { (const char *)d, n };
        int want = i < NBD_META_NCONTEXTS &&
                   ref_matches(raw.ptr, raw.len, nbd_meta_context_name(i),
                               list);

        FUZZ_CHECK(nbd_meta_query_matches(raw, i, list) == want);
    }
    check_raw_iter(d, n);

    r = nbd_opt_meta_parse(d, n, &meta);
    if (r == -E2BIG) {
        FUZZ_CHECK(meta.nqueries > NBD_MAX_META_QUERIES);
        return 0;
    }
    if (r < 0) {
        FUZZ_CHECK(r == -EINVAL);
        return 0;
    }
    FUZZ_CHECK(r == 0);
    FUZZ_CHECK(fuzz_inside(meta.name.ptr, meta.name.len, d, n));
    FUZZ_CHECK((const uint8_t *)meta.name.ptr == d + 4);
    FUZZ_CHECK(nbd_get_be32(d) == meta.name.len);
    FUZZ_CHECK(meta.name.len <= NBD_MAX_STRING);
    FUZZ_CHECK(meta.name.len == 0 || !memchr(meta.name.ptr, 0, meta.name.len));
    FUZZ_CHECK(nbd_get_be32(d + 4 + meta.name.len) == meta.nqueries);
    FUZZ_CHECK(meta.queries == d + 8 + meta.name.len);
    FUZZ_CHECK(meta.queries + meta.queries_len == d + n);

    nbd_meta_iter_init(&it, &meta);
    while (nbd_meta_iter_next(&it, &q)) {
        const char *colon;

        FUZZ_CHECK(fuzz_inside(q.ptr, q.len, d, n));
        FUZZ_CHECK(q.len <= NBD_MAX_STRING);
        FUZZ_CHECK(!memchr(q.ptr, 0, q.len));
        colon = memchr(q.ptr, ':', q.len);
        FUZZ_CHECK(colon != NULL && colon != q.ptr);
        for (unsigned i = 0; i < NBD_META_NCONTEXTS; i++) {
            FUZZ_CHECK(nbd_meta_query_matches(q, i, list) ==
                       ref_matches(q.ptr, q.len, nbd_meta_context_name(i),
                                   list));
        }
        mask |= ref_mask(q.ptr, q.len, list);
        count++;
    }
    FUZZ_CHECK(count == meta.nqueries);
    if (count == 0) {
        mask = list ? NBD_META_ALL : 0;
    }
    FUZZ_CHECK(nbd_meta_match(&meta, list) == mask);
    FUZZ_CHECK((mask & ~NBD_META_ALL) == 0);
    return 0;
}
