/* Request ids (kept when sane, generated otherwise) and the termination
 * codes of the access log. */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/reqid.h"
#include "switchyard/termination.h"

START_TEST(test_valid) {
  static const char *const good[] = {"a",
                                     "0f8fad5b-d9cb-469f-a165-70867728950e",
                                     "Root=1-5759e988-bd862e3fe1be46a994272793",
                                     "abc+/def==",
                                     "svc:req@42",
                                     "x!#$%&'*+-.^_`|~"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    ck_assert_msg(sy_reqid_valid(good[i], strlen(good[i])), "%s", good[i]);
  static const char *const bad[] = {
      "", "a b", "a\"b", "a,b", "a;b", "a\\b", "caf\xc3\xa9", "a\tb", "a\r\nX-Evil: 1", "(x)"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(!sy_reqid_valid(bad[i], strlen(bad[i])), "%s", bad[i]);
  ck_assert(!sy_reqid_valid(NULL, 0));
  ck_assert(!sy_reqid_valid("a\0b", 3));
  char longid[SY_REQID_MAX + 2];
  memset(longid, 'x', sizeof(longid));
  ck_assert(sy_reqid_valid(longid, SY_REQID_MAX));
  ck_assert(!sy_reqid_valid(longid, SY_REQID_MAX + 1));
}
END_TEST

static int is_hex_id(const char *s) {
  if (strlen(s) != SY_REQID_GEN_LEN) return 0;
  for (const char *p = s; *p; p++)
    if (!strchr("0123456789abcdef", *p)) return 0;
  return 1;
}

START_TEST(test_pick) {
  char out[SY_REQID_MAX + 1];
  int gen = -1;
  const char *mine = "0f8fad5b-d9cb-469f-a165-70867728950e";
  ck_assert_uint_eq(sy_reqid_pick(mine, strlen(mine), out, &gen), strlen(mine));
  ck_assert_str_eq(out, mine);
  ck_assert_int_eq(gen, 0);
  /* only the given span counts, not what follows it */
  ck_assert_uint_eq(sy_reqid_pick("abcdef", 3, out, &gen), 3);
  ck_assert_str_eq(out, "abc");
  ck_assert_uint_eq(sy_reqid_pick("bad id", 6, out, &gen), SY_REQID_GEN_LEN);
  ck_assert_int_eq(gen, 1);
  ck_assert_msg(is_hex_id(out), "%s", out);
  ck_assert_uint_eq(sy_reqid_pick(NULL, 0, out, NULL), SY_REQID_GEN_LEN);
  ck_assert_msg(is_hex_id(out), "%s", out);
  char longid[SY_REQID_MAX + 1];
  memset(longid, 'y', sizeof(longid));
  ck_assert_uint_eq(sy_reqid_pick(longid, sizeof(longid), out, &gen), SY_REQID_GEN_LEN);
  ck_assert_int_eq(gen, 1);
}
END_TEST

static int cmp_id(const void *a, const void *b) {
  return memcmp(a, b, SY_REQID_GEN_LEN + 1);
}

#define N_IDS 20000

/* Fills a block of ids from the calling thread. */
static void *fill(void *arg) {
  char(*ids)[SY_REQID_GEN_LEN + 1] = arg;
  for (int i = 0; i < N_IDS; i++)
    sy_reqid_generate(ids[i]);
  return NULL;
}

START_TEST(test_generated_unique_across_threads) {
  char(*ids)[SY_REQID_GEN_LEN + 1] = calloc(2 * N_IDS, SY_REQID_GEN_LEN + 1);
  ck_assert_ptr_nonnull(ids);
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, fill, ids + N_IDS), 0);
  fill(ids);
  pthread_join(t, NULL);
  /* every hex digit shows up in every position over this many ids: not a
   * counter, not a constant */
  for (int pos = 0; pos < SY_REQID_GEN_LEN; pos++) {
    int seen = 0;
    for (int i = 0; i < 2 * N_IDS; i++)
      seen |= 1 << (strchr("0123456789abcdef", ids[i][pos]) - "0123456789abcdef");
    ck_assert_int_eq(seen, 0xffff);
  }
  qsort(ids, 2 * N_IDS, SY_REQID_GEN_LEN + 1, cmp_id);
  for (int i = 1; i < 2 * N_IDS; i++)
    ck_assert_msg(memcmp(ids[i - 1], ids[i], SY_REQID_GEN_LEN) != 0, "repeated id %s", ids[i]);
  for (int i = 0; i < 2 * N_IDS; i++)
    ck_assert(is_hex_id(ids[i]));
  free(ids);
}
END_TEST

START_TEST(test_termination_names) {
  ck_assert_str_eq(sy_term_name(SY_TERM_OK), "ok");
  ck_assert_str_eq(sy_term_name(SY_TERM_UPSTREAM_CLOSED), "upstream_closed");
  ck_assert_str_eq(sy_term_name(SY_TERM_COUNT), "unknown");
  ck_assert_str_eq(sy_term_name((enum sy_term) - 1), "unknown");
  /* every code has a distinct snake_case name that parses back */
  for (int i = 0; i < SY_TERM_COUNT; i++) {
    const char *n = sy_term_name((enum sy_term)i);
    ck_assert_msg(n && *n && strcmp(n, "unknown") != 0, "code %d has no name", i);
    for (const char *p = n; *p; p++)
      ck_assert_msg((*p >= 'a' && *p <= 'z') || *p == '_', "%s", n);
    ck_assert_int_eq(sy_term_parse(n), i);
  }
  ck_assert_int_eq(sy_term_parse("nope"), -1);
  ck_assert_int_eq(sy_term_parse(NULL), -1);
}
END_TEST

static Suite *reqid_suite(void) {
  Suite *s = suite_create("reqid");
  TCase *tc = tcase_create("reqid");
  tcase_add_test(tc, test_valid);
  tcase_add_test(tc, test_pick);
  tcase_add_test(tc, test_generated_unique_across_threads);
  tcase_add_test(tc, test_termination_names);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(reqid_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
