/*
 * test-options.c: option payload parsers (EXPORT_NAME, INFO/GO,
 * LIST/SET_META_CONTEXT) and metadata context matching.
 */
#include <errno.h>

#include "test-proto.h"

/* Builders for payloads too large to write out by hand. */
static void put32(GByteArray *a, uint32_t v)
{
    uint8_t b[4] = { v >> 24, v >> 16, v >> 8, v };
    g_byte_array_append(a, b, 4);
}

static void put16(GByteArray *a, uint16_t v)
{
    uint8_t b[2] = { v >> 8, v };
    g_byte_array_append(a, b, 2);
}

static void put_str(GByteArray *a, const char *s, size_t len)
{
    put32(a, len);
    g_byte_array_append(a, (const uint8_t *)s, len);
}

/* Copies p[0..len) into a fresh heap block of exactly len bytes, so
 * that ASan catches any read past len. */
static uint8_t *exact_copy(const void *p, size_t len)
{
    return g_memdup2(p, len ? len : 1);
}

/* ------------------------------------------------------------------ */
/* NBD_OPT_EXPORT_NAME                                                  */
/* ------------------------------------------------------------------ */

static void test_export_name(void)
{
    char big[NBD_MAX_STRING + 1];
    NBDString name = { NULL, 99 };

    g_assert_cmpint(nbd_opt_export_name_parse("disk", 4, &name), ==, 0);
    g_assert_cmpmem(name.ptr, name.len, "disk", 4);
    g_assert_cmpint(nbd_opt_export_name_parse(NULL, 0, &name), ==, 0);
    g_assert_cmpuint(name.len, ==, 0);

    memset(big, 'e', sizeof(big));
    g_assert_cmpint(nbd_opt_export_name_parse(big, 4096, &name), ==, 0);
    g_assert_cmpuint(name.len, ==, 4096);
    g_assert_true(name.ptr == big);
    g_assert_cmpint(nbd_opt_export_name_parse(big, 4097, &name), ==,
                    -EINVAL);
    g_assert_cmpint(nbd_opt_export_name_parse("di\0sk", 5, &name), ==,
                    -EINVAL);
    g_assert_cmpint(nbd_opt_export_name_parse("disk\0", 5, &name), ==,
                    -EINVAL);
}

/* ------------------------------------------------------------------ */
/* NBD_OPT_INFO / NBD_OPT_GO                                            */
/* ------------------------------------------------------------------ */

static int go_parse(const uint8_t *p, uint32_t len, NBDOptGo *go)
{
    uint8_t *copy = exact_copy(p, len);
    int ret = nbd_opt_go_parse(copy, len, go);
    g_free(copy);
    return ret;
}

static void test_go_valid(void)
{
    static const uint8_t payload[] = {
        0x00, 0x00, 0x00, 0x04, 'd', 'i', 's', 'k',
        0x00, 0x02,
        0x00, 0x03, 0x00, 0x01,
    };
    static const uint8_t minimal[] = { 0, 0, 0, 0, 0, 0 };
    NBDOptGo go;

    g_assert_cmpint(nbd_opt_go_parse(payload, sizeof(payload), &go), ==, 0);
    g_assert_cmpmem(go.name.ptr, go.name.len, "disk", 4);
    g_assert_cmpuint(go.ninfo, ==, 2);
    g_assert_cmpuint(nbd_opt_go_info(&go, 0), ==, NBD_INFO_BLOCK_SIZE);
    g_assert_cmpuint(nbd_opt_go_info(&go, 1), ==, NBD_INFO_NAME);
    g_assert_true(nbd_opt_go_requested(&go, NBD_INFO_BLOCK_SIZE));
    g_assert_true(nbd_opt_go_requested(&go, NBD_INFO_NAME));
    g_assert_false(nbd_opt_go_requested(&go, NBD_INFO_EXPORT));
    g_assert_false(nbd_opt_go_requested(&go, NBD_INFO_DESCRIPTION));

    g_assert_cmpint(go_parse(minimal, sizeof(minimal), &go), ==, 0);
    g_assert_cmpuint(go.name.len, ==, 0);
    g_assert_cmpuint(go.ninfo, ==, 0);
    g_assert_false(nbd_opt_go_requested(&go, NBD_INFO_EXPORT));
}

static void test_go_malformed(void)
{
    static const uint8_t payload[] = {
        0x00, 0x00, 0x00, 0x04, 'd', 'i', 's', 'k',
        0x00, 0x02,
        0x00, 0x03, 0x00, 0x01,
        0xff, /* one extra byte, outside the payload */
    };
    static const uint8_t name_plus1[] = {
        0x00, 0x00, 0x00, 0x05, 'd', 'i', 's', 'k',
        0x00, 0x02, 0x00, 0x03, 0x00, 0x01,
    };
    static const uint8_t name_minus1[] = {
        0x00, 0x00, 0x00, 0x03, 'd', 'i', 's', 'k',
        0x00, 0x02, 0x00, 0x03, 0x00, 0x01,
    };
    static const uint8_t count_plus1[] = {
        0x00, 0x00, 0x00, 0x04, 'd', 'i', 's', 'k',
        0x00, 0x03, 0x00, 0x03, 0x00, 0x01,
    };
    static const uint8_t count_minus1[] = {
        0x00, 0x00, 0x00, 0x04, 'd', 'i', 's', 'k',
        0x00, 0x01, 0x00, 0x03, 0x00, 0x01,
    };
    /* Name length exactly "option length - 6" is the largest legal. */
    static const uint8_t name_max[] = {
        0x00, 0x00, 0x00, 0x02, 'a', 'b', 0x00, 0x00,
    };
    static const uint8_t name_over[] = {
        0x00, 0x00, 0x00, 0x03, 'a', 'b', 0x00, 0x00,
    };
    static const uint8_t name_huge[] = {
        0xff, 0xff, 0xff, 0xff, 'a', 'b', 0x00, 0x00,
    };
    static const uint8_t name_nul[] = {
        0x00, 0x00, 0x00, 0x03, 'a', 0x00, 'b', 0x00, 0x00,
    };
    const uint32_t len = sizeof(payload) - 1;
    NBDOptGo go;

    g_assert_cmpint(go_parse(payload, len, &go), ==, 0);
    g_assert_cmpint(go_parse(payload, len + 1, &go), ==, -EINVAL);
    for (uint32_t l = 0; l < len; l++) {
        g_assert_cmpint(go_parse(payload, l, &go), ==, -EINVAL);
    }
    g_assert_cmpint(go_parse(name_plus1, sizeof(name_plus1), &go), ==,
                    -EINVAL);
    g_assert_cmpint(go_parse(name_minus1, sizeof(name_minus1), &go), ==,
                    -EINVAL);
    g_assert_cmpint(go_parse(count_plus1, sizeof(count_plus1), &go), ==,
                    -EINVAL);
    g_assert_cmpint(go_parse(count_minus1, sizeof(count_minus1), &go), ==,
                    -EINVAL);
    g_assert_cmpint(go_parse(name_max, sizeof(name_max), &go), ==, 0);
    g_assert_cmpint(nbd_opt_go_parse(name_max, sizeof(name_max), &go), ==,
                    0);
    g_assert_cmpmem(go.name.ptr, go.name.len, "ab", 2);
    g_assert_cmpuint(go.ninfo, ==, 0);
    g_assert_cmpint(go_parse(name_over, sizeof(name_over), &go), ==,
                    -EINVAL);
    g_assert_cmpint(go_parse(name_huge, sizeof(name_huge), &go), ==,
                    -EINVAL);
    g_assert_cmpint(go_parse(name_nul, sizeof(name_nul), &go), ==,
                    -EINVAL);
}

static void test_go_long_name(void)
{
    char name[NBD_MAX_STRING + 1];
    GByteArray *a;
    NBDOptGo go;

    memset(name, 'n', sizeof(name));
    for (size_t len = NBD_MAX_STRING - 1; len <= NBD_MAX_STRING + 1; len++) {
        a = g_byte_array_new();
        put_str(a, name, len);
        put16(a, 1);
        put16(a, NBD_INFO_EXPORT);
        g_assert_cmpint(go_parse(a->data, a->len, &go), ==,
                        len <= NBD_MAX_STRING ? 0 : -EINVAL);
        g_byte_array_unref(a);
    }
}

/* ------------------------------------------------------------------ */
/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT                 */
/* ------------------------------------------------------------------ */

static int meta_parse(const uint8_t *p, uint32_t len, NBDOptMeta *meta)
{
    uint8_t *copy = exact_copy(p, len);
    int ret = nbd_opt_meta_parse(copy, len, meta);

    /* Matching and iterating must stay inside the copy too. */
    if (ret == 0) {
        NBDMetaIter it;
        NBDString q;
        uint32_t n = 0;
        nbd_meta_iter_init(&it, meta);
        while (nbd_meta_iter_next(&it, &q)) {
            n++;
        }
        g_assert_cmpuint(n, ==, meta->nqueries);
        nbd_meta_match(meta, true);
        nbd_meta_match(meta, false);
    }
    g_free(copy);
    return ret;
}

/* name "disk", queries "base:allocation" and "base:". */
static const uint8_t meta_payload[] = {
    0x00, 0x00, 0x00, 0x04, 'd', 'i', 's', 'k',
    0x00, 0x00, 0x00, 0x02,
    0x00, 0x00, 0x00, 0x0f,
    'b', 'a', 's', 'e', ':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o', 'n',
    0x00, 0x00, 0x00, 0x05, 'b', 'a', 's', 'e', ':',
    0xff, /* one extra byte, outside the payload */
};
#define META_LEN ((uint32_t)sizeof(meta_payload) - 1)

static void test_meta_valid(void)
{
    static const uint8_t minimal[] = { 0, 0, 0, 0, 0, 0, 0, 0 };
    NBDOptMeta meta;
    NBDMetaIter it;
    NBDString q;

    g_assert_cmpint(meta_parse(meta_payload, META_LEN, &meta), ==, 0);
    g_assert_cmpint(nbd_opt_meta_parse(meta_payload, META_LEN, &meta), ==,
                    0);
    g_assert_cmpmem(meta.name.ptr, meta.name.len, "disk", 4);
    g_assert_cmpuint(meta.nqueries, ==, 2);
    nbd_meta_iter_init(&it, &meta);
    g_assert_true(nbd_meta_iter_next(&it, &q));
    g_assert_cmpmem(q.ptr, q.len, "base:allocation", 15);
    g_assert_true(nbd_meta_iter_next(&it, &q));
    g_assert_cmpmem(q.ptr, q.len, "base:", 5);
    g_assert_false(nbd_meta_iter_next(&it, &q));
    g_assert_false(nbd_meta_iter_next(&it, &q));

    g_assert_cmpint(meta_parse(minimal, sizeof(minimal), &meta), ==, 0);
    g_assert_cmpuint(meta.name.len, ==, 0);
    g_assert_cmpuint(meta.nqueries, ==, 0);
    g_assert_cmpint(nbd_opt_meta_parse(minimal, sizeof(minimal), &meta), ==,
                    0);
    nbd_meta_iter_init(&it, &meta);
    g_assert_false(nbd_meta_iter_next(&it, &q));
}

/* Copies meta_payload, overwrites the 32-bit field at `at` with v, and
 * parses META_LEN bytes. */
static int meta_parse_patched(size_t at, uint32_t v)
{
    uint8_t p[sizeof(meta_payload)];
    NBDOptMeta meta;

    memcpy(p, meta_payload, sizeof(p));
    nbd_put_be32(p + at, v);
    return meta_parse(p, META_LEN, &meta);
}

static void test_meta_malformed(void)
{
    NBDOptMeta meta;

    /* Truncated anywhere, or one byte too long. */
    for (uint32_t l = 0; l < META_LEN; l++) {
        g_assert_cmpint(meta_parse(meta_payload, l, &meta), ==, -EINVAL);
    }
    g_assert_cmpint(meta_parse(meta_payload, META_LEN + 1, &meta), ==,
                    -EINVAL);

    /* Every length field off by one in each direction. */
    g_assert_cmpint(meta_parse_patched(0, 4), ==, 0);
    g_assert_cmpint(meta_parse_patched(0, 5), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(0, 3), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(8, 2), ==, 0);
    g_assert_cmpint(meta_parse_patched(8, 3), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(8, 1), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(12, 15), ==, 0);
    g_assert_cmpint(meta_parse_patched(12, 16), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(12, 14), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(31, 5), ==, 0);
    g_assert_cmpint(meta_parse_patched(31, 6), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(31, 4), ==, -EINVAL);

    /* Absurd lengths and counts. */
    g_assert_cmpint(meta_parse_patched(0, UINT32_MAX), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(0, META_LEN - 8), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(8, UINT32_MAX), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(8, 0x40000000), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(12, UINT32_MAX), ==, -EINVAL);
    g_assert_cmpint(meta_parse_patched(31, UINT32_MAX), ==, -EINVAL);
}

static void test_meta_count_fits(void)
{
    /* 8 bytes after the count: two empty queries would fit by length
     * alone, three cannot (rejected before walking). */
    static const uint8_t three[] = {
        0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 'a', ':', 0, 0,
    };
    static const uint8_t one[] = {
        0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 'a', ':', 'b', 'c',
    };
    NBDOptMeta meta;

    g_assert_cmpint(meta_parse(three, sizeof(three), &meta), ==, -EINVAL);
    g_assert_cmpint(meta_parse(one, sizeof(one), &meta), ==, 0);
}

/* Parses a payload with export name "" and the given queries. */
static int meta_parse_queries(const char *const *queries, size_t n,
                              NBDOptMeta *meta, GByteArray **keep)
{
    GByteArray *a = g_byte_array_new();
    int ret;

    put32(a, 0);
    put32(a, n);
    for (size_t i = 0; i < n; i++) {
        put_str(a, queries[i], strlen(queries[i]));
    }
    ret = meta_parse(a->data, a->len, meta);
    if (keep) {
        *keep = a;
        ret = nbd_opt_meta_parse(a->data, a->len, meta);
    } else {
        g_byte_array_unref(a);
    }
    return ret;
}

static void test_meta_query_syntax(void)
{
    static const struct {
        const char *query;
        int ret;
    } cases[] = {
        { "base:allocation", 0 },
        { "base:", 0 },
        { "a:", 0 },
        { "x-foo:bar:baz", 0 },
        { "qemu:dirty-bitmap:", 0 },
        /* No colon: the spec makes the namespace and colon mandatory. */
        { "base", -EINVAL },
        { "allocation", -EINVAL },
        { "", -EINVAL },
        /* Empty namespace. */
        { ":", -EINVAL },
        { ":allocation", -EINVAL },
    };
    NBDOptMeta meta;

    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_assert_cmpint(meta_parse_queries(&cases[i].query, 1, &meta, NULL),
                        ==, cases[i].ret);
    }
}

static void test_meta_query_nul(void)
{
    static const uint8_t nul_query[] = {
        0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 6, 'b', 'a', 's', 'e', ':', 0,
    };
    static const uint8_t nul_name[] = {
        0, 0, 0, 1, 0, 0, 0, 0, 0,
    };
    NBDOptMeta meta;

    g_assert_cmpint(meta_parse(nul_query, sizeof(nul_query), &meta), ==,
                    -EINVAL);
    g_assert_cmpint(meta_parse(nul_name, sizeof(nul_name), &meta), ==,
                    -EINVAL);
}

static void test_meta_long_strings(void)
{
    char *q = g_malloc(NBD_MAX_STRING + 2);
    GByteArray *a;
    NBDOptMeta meta;

    memset(q, 'q', NBD_MAX_STRING + 1);
    memcpy(q, "base:", 5);
    q[NBD_MAX_STRING + 1] = '\0';
    for (size_t len = NBD_MAX_STRING - 1; len <= NBD_MAX_STRING + 1; len++) {
        int want = len <= NBD_MAX_STRING ? 0 : -EINVAL;

        /* As a query. */
        a = g_byte_array_new();
        put32(a, 0);
        put32(a, 1);
        put_str(a, q, len);
        g_assert_cmpint(meta_parse(a->data, a->len, &meta), ==, want);
        g_byte_array_unref(a);

        /* As the export name. */
        a = g_byte_array_new();
        put_str(a, q, len);
        put32(a, 0);
        g_assert_cmpint(meta_parse(a->data, a->len, &meta), ==, want);
        g_byte_array_unref(a);
    }
    g_free(q);
}

static void test_meta_too_many(void)
{
    const char *queries[NBD_MAX_META_QUERIES + 1];
    NBDOptMeta meta;

    for (size_t i = 0; i < G_N_ELEMENTS(queries); i++) {
        queries[i] = "base:allocation";
    }
    g_assert_cmpint(meta_parse_queries(queries, NBD_MAX_META_QUERIES, &meta,
                                       NULL),
                    ==, 0);
    g_assert_cmpint(meta_parse_queries(queries, NBD_MAX_META_QUERIES + 1,
                                       &meta, NULL),
                    ==, -E2BIG);
    /* A syntax error is reported as such even with too many queries. */
    queries[NBD_MAX_META_QUERIES] = "nocolon";
    g_assert_cmpint(meta_parse_queries(queries, NBD_MAX_META_QUERIES + 1,
                                       &meta, NULL),
                    ==, -EINVAL);
}

static void test_meta_iter_misuse(void)
{
    /* An iterator over a list that claims more than it holds stops at
     * the end instead of reading past it. */
    static const uint8_t list[] = { 0, 0, 0, 9, 'a', ':', 'b' };
    NBDOptMeta meta = { { "", 0 }, 1, list, sizeof(list) };
    NBDMetaIter it;
    NBDString q;

    nbd_meta_iter_init(&it, &meta);
    g_assert_false(nbd_meta_iter_next(&it, &q));
    g_assert_false(nbd_meta_iter_next(&it, &q));
    meta.queries_len = 3;
    nbd_meta_iter_init(&it, &meta);
    g_assert_false(nbd_meta_iter_next(&it, &q));
}

/* ------------------------------------------------------------------ */
/* Metadata context matching                                           */
/* ------------------------------------------------------------------ */

static void test_meta_table(void)
{
    g_assert_cmpint(NBD_META_NCONTEXTS, ==, 1);
    g_assert_cmpuint(NBD_META_ALL, ==, 1);
    g_assert_cmpstr(nbd_meta_context_name(NBD_META_BASE_ALLOCATION), ==,
                    "base:allocation");
    g_assert_null(nbd_meta_context_name(1));
    g_assert_null(nbd_meta_context_name(~0u));
    g_assert_cmpuint(nbd_meta_context_id(NBD_META_BASE_ALLOCATION), ==, 1);
    g_assert_cmpint(nbd_meta_context_index(1), ==, 0);
    g_assert_cmpint(nbd_meta_context_index(0), ==, -1);
    g_assert_cmpint(nbd_meta_context_index(2), ==, -1);
    g_assert_cmpint(nbd_meta_context_index(UINT32_MAX), ==, -1);
}

static void test_meta_query_matches(void)
{
    static const struct {
        const char *query;
        bool set, list;
    } cases[] = {
        { "base:allocation", true, true },
        /* Namespace wildcard: LIST only. */
        { "base:", false, true },
        /* Unknown leaves and namespaces are ignored. */
        { "base:alloc", false, false },
        { "base:allocationX", false, false },
        { "base:allocation:", false, false },
        { "base:foo", false, false },
        { "BASE:allocation", false, false },
        { "qemu:dirty-bitmap:sda", false, false },
        { "qemu:", false, false },
        { "x-base:", false, false },
        { "bas:", false, false },
        { "base", false, false },
        { "", false, false },
        { ":", false, false },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        NBDString q = nbd_str(cases[i].query);
        g_assert_cmpint(nbd_meta_query_matches(q, 0, false), ==,
                        cases[i].set);
        g_assert_cmpint(nbd_meta_query_matches(q, 0, true), ==,
                        cases[i].list);
        g_assert_false(nbd_meta_query_matches(q, 1, true));
        g_assert_false(nbd_meta_query_matches(q, 1, false));
    }
}

static void test_meta_match(void)
{
    static const struct {
        const char *queries[3];
        size_t n;
        uint32_t set, list;
    } cases[] = {
        /* No queries: SET selects nothing, LIST lists everything. */
        { { NULL }, 0, 0, 1 },
        { { "base:allocation" }, 1, 1, 1 },
        { { "base:" }, 1, 0, 1 },
        { { "qemu:dirty-bitmap:x" }, 1, 0, 0 },
        { { "base:nope" }, 1, 0, 0 },
        { { "qemu:x", "base:allocation" }, 2, 1, 1 },
        { { "base:allocation", "base:allocation" }, 2, 1, 1 },
        { { "base:", "base:allocation", "x-y:z" }, 3, 1, 1 },
        { { "x-y:", "qemu:" }, 2, 0, 0 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        NBDOptMeta meta;
        GByteArray *a;

        g_assert_cmpint(meta_parse_queries(cases[i].queries, cases[i].n,
                                           &meta, &a),
                        ==, 0);
        g_assert_cmpuint(nbd_meta_match(&meta, false), ==, cases[i].set);
        g_assert_cmpuint(nbd_meta_match(&meta, true), ==, cases[i].list);
        g_byte_array_unref(a);
    }
}

void register_options_tests(void)
{
    g_test_add_func("/options/export-name", test_export_name);
    g_test_add_func("/options/go/valid", test_go_valid);
    g_test_add_func("/options/go/malformed", test_go_malformed);
    g_test_add_func("/options/go/long-name", test_go_long_name);
    g_test_add_func("/options/meta/valid", test_meta_valid);
    g_test_add_func("/options/meta/malformed", test_meta_malformed);
    g_test_add_func("/options/meta/count-fits", test_meta_count_fits);
    g_test_add_func("/options/meta/query-syntax", test_meta_query_syntax);
    g_test_add_func("/options/meta/nul", test_meta_query_nul);
    g_test_add_func("/options/meta/long-strings", test_meta_long_strings);
    g_test_add_func("/options/meta/too-many", test_meta_too_many);
    g_test_add_func("/options/meta/iter-misuse", test_meta_iter_misuse);
    g_test_add_func("/meta/table", test_meta_table);
    g_test_add_func("/meta/query-matches", test_meta_query_matches);
    g_test_add_func("/meta/match", test_meta_match);
}
