/* Request ids (kept when sane, generated otherwise) and the termination
 * codes of the access log. */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/http.h"
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
  ck_assert_int_eq(sy_term_for_tunnel("client", "eof"), SY_TERM_CLIENT_CLOSED);
  ck_assert_int_eq(sy_term_for_tunnel("upstream", "eof"), SY_TERM_UPSTREAM_CLOSED);
  ck_assert_int_eq(sy_term_for_tunnel("client", "reset"), SY_TERM_CLIENT_RESET);
  ck_assert_int_eq(sy_term_for_tunnel("upstream", "error"), SY_TERM_UPSTREAM_RESET);
  ck_assert_int_eq(sy_term_for_tunnel("proxy", "idle_timeout"), SY_TERM_IDLE_TIMEOUT);
  ck_assert_int_eq(sy_term_for_tunnel("client", "fin_timeout"), SY_TERM_FIN_TIMEOUT);
  ck_assert_int_eq(sy_term_for_tunnel("proxy", "shutdown"), SY_TERM_SHUTDOWN);
  ck_assert_int_eq(sy_term_for_tunnel("proxy", "error"), SY_TERM_INTERNAL);
  ck_assert_int_eq(sy_term_for_tunnel(NULL, NULL), SY_TERM_INTERNAL);
  ck_assert_int_eq(sy_term_parse(NULL), -1);
}
END_TEST

/* A head from "START\r\nName: value\r\n...\r\n" without llhttp: spans by hand. */
static void mkhead(sy_head *h, const char *raw, int request) {
  sy_head_init(h, request, 100);
  const char *eol = strstr(raw, "\r\n");
  if (request) {
    const char *sp = strchr(raw, ' ');
    h->method = (sy_span){0, (uint32_t)(sp - raw)};
    const char *sp2 = strchr(sp + 1, ' ');
    h->target = (sy_span){(uint32_t)(sp + 1 - raw), (uint32_t)(sp2 - sp - 1)};
  } else {
    h->status = atoi(raw + 9);
    h->reason = (sy_span){13, (uint32_t)(eol - raw - 13)};
  }
  h->major = h->minor = 1;
  for (const char *p = eol + 2; strncmp(p, "\r\n", 2) != 0; p = strstr(p, "\r\n") + 2) {
    const char *colon = strchr(p, ':'), *end = strstr(p, "\r\n"), *v = colon + 1;
    while (*v == ' ')
      v++;
    ck_assert_int_eq(sy_head_on_field(h, (uint32_t)(p - raw), (uint32_t)(colon - p)), 0);
    ck_assert_int_eq(sy_head_on_value(h, (uint32_t)(v - raw), (uint32_t)(end - v)), 0);
  }
}

START_TEST(test_from_head) {
  char id[SY_REQID_MAX + 1];
  int gen = -1;
  sy_head h;
  const char *one = "GET / HTTP/1.1\r\nHost: a\r\nx-request-ID: id-1\r\n\r\n";
  mkhead(&h, one, 1);
  ck_assert_uint_eq(sy_reqid_from_head(&h, one, "X-Request-Id", id), 4);
  ck_assert_str_eq(id, "id-1");
  ck_assert_uint_eq(sy_reqid_for_head(&h, one, "X-Request-Id", id, &gen), 4);
  ck_assert_int_eq(gen, 0);
  ck_assert_uint_eq(sy_reqid_from_head(&h, one, "X-Trace", id), 0);
  ck_assert_uint_eq(sy_reqid_for_head(&h, one, "X-Trace", id, &gen), SY_REQID_GEN_LEN);
  ck_assert_int_eq(gen, 1);
  sy_head_free(&h);
  const char *two = "GET / HTTP/1.1\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n\r\n";
  mkhead(&h, two, 1);
  ck_assert_uint_eq(sy_reqid_from_head(&h, two, "X-Request-Id", id), 0);
  sy_head_free(&h);
  const char *bad = "GET / HTTP/1.1\r\nX-Request-Id: has space\r\n\r\n";
  mkhead(&h, bad, 1);
  ck_assert_uint_eq(sy_reqid_from_head(&h, bad, "X-Request-Id", id), 0);
  sy_head_free(&h);
}
END_TEST

static char *built(int request, const char *raw, const char *name, const char *id) {
  sy_head h;
  mkhead(&h, raw, request);
  sy_buf b = {0};
  if (request) {
    sy_fwd_opts o = {.request_id_name = name, .request_id = id};
    ck_assert_int_eq(sy_http_build_request(&b, &h, raw, &o), 0);
  } else {
    sy_resp_opts o = {.request_id_name = name, .request_id = id};
    ck_assert_int_eq(sy_http_build_response(&b, &h, raw, &o), 0);
  }
  sy_buf_append(&b, "", 1);
  sy_head_free(&h);
  return b.p;
}

START_TEST(test_forwarded_and_returned) {
  /* upstream: the client's fields of that name replaced by the request's id */
  char *s =
      built(1, "GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: evil id\r\nx-request-id: 2\r\n\r\n",
            "X-Request-Id", "0123abcd");
  ck_assert_str_eq(s, "GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: 0123abcd\r\n\r\n");
  free(s);
  /* off: untouched */
  s = built(1, "GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: mine\r\n\r\n", NULL, NULL);
  ck_assert_str_eq(s, "GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: mine\r\n\r\n");
  free(s);
  /* client: added to a response without one, the upstream's own kept */
  s = built(0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "X-Trace-Id", "abc");
  ck_assert_str_eq(s, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Trace-Id: abc\r\n\r\n");
  free(s);
  s = built(0, "HTTP/1.1 200 OK\r\nx-trace-id: theirs\r\n\r\n", "X-Trace-Id", "abc");
  ck_assert_str_eq(s, "HTTP/1.1 200 OK\r\nx-trace-id: theirs\r\n\r\n");
  free(s);
}
END_TEST

static Suite *reqid_suite(void) {
  Suite *s = suite_create("reqid");
  TCase *tc = tcase_create("reqid");
  tcase_add_test(tc, test_valid);
  tcase_add_test(tc, test_pick);
  tcase_add_test(tc, test_generated_unique_across_threads);
  tcase_add_test(tc, test_termination_names);
  tcase_add_test(tc, test_from_head);
  tcase_add_test(tc, test_forwarded_and_returned);
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
