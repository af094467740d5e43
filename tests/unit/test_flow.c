/* The flow pool's buffers: a TLS relay's large buffers are capped per worker,
 * so that stalled readers cannot pin 256 KiB per direction without bound; and
 * what is lent and kept is counted. */
#include "switchyard/flow.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#define N (SY_FLOW_RELAY_MAX + 3)

START_TEST(test_relays_past_the_cap_get_the_usual_buffer) {
  sy_flow_pool p;
  sy_flow_pool_init(&p);
  static sy_flow f[N];
  memset(f, 0, sizeof f);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(sy_flow_alloc(&f[i], &p, SY_RELAY_BUF), 0);
    ck_assert_int_eq(f[i].cap, i < SY_FLOW_RELAY_MAX ? SY_RELAY_BUF : SY_FLOW_BUF);
    f[i].buf[f[i].cap - 1] = 'x'; /* the buffer is as large as it says */
  }
  ck_assert_uint_eq(p.relay_out, SY_FLOW_RELAY_MAX);
  /* One large buffer back: the next relay gets one again, and only one. */
  sy_flow_free(&f[0], &p);
  ck_assert_uint_eq(p.relay_out, SY_FLOW_RELAY_MAX - 1);
  ck_assert_int_eq(sy_flow_alloc(&f[0], &p, SY_RELAY_BUF), 0);
  ck_assert_int_eq(f[0].cap, SY_RELAY_BUF);
  sy_flow g;
  memset(&g, 0, sizeof g);
  ck_assert_int_eq(sy_flow_alloc(&g, &p, SY_RELAY_BUF), 0);
  ck_assert_int_eq(g.cap, SY_FLOW_BUF);
  sy_flow_free(&g, &p);
  /* A small buffer given back does not count as a large one. */
  ck_assert_uint_eq(p.relay_out, SY_FLOW_RELAY_MAX);
  for (int i = 0; i < N; i++)
    sy_flow_free(&f[i], &p);
  ck_assert_uint_eq(p.relay_out, 0);
  sy_flow_pool_trim(&p);
}
END_TEST

START_TEST(test_an_idle_relay_gives_its_buffer_back) {
  sy_flow_pool p;
  sy_flow_pool_init(&p);
  sy_flow f;
  memset(&f, 0, sizeof f);
  ck_assert_int_eq(sy_flow_alloc(&f, &p, SY_RELAY_BUF), 0);
  ck_assert_uint_eq(p.relay_out, 1);
  f.len = f.pos = 100; /* everything read was written */
  sy_flow_release_if_idle(&f, &p);
  ck_assert_ptr_null(f.buf);
  ck_assert_uint_eq(p.relay_out, 0);
  /* Kept for the next relay, not freed. */
  ck_assert_uint_eq(p.nrelay, 1);
  sy_flow_free(&f, &p); /* no buffer: nothing to count */
  ck_assert_uint_eq(p.relay_out, 0);
  sy_flow_pool_trim(&p);
  ck_assert_uint_eq(p.nrelay, 0);
}
END_TEST

static void assert_bytes(const sy_flow_pool *p, uint64_t in_use, uint64_t idle) {
  uint64_t u, d;
  sy_flow_pool_bytes(p, &u, &d);
  ck_assert_uint_eq(u, in_use);
  ck_assert_uint_eq(d, idle);
}

/* switchyard_buffer_bytes: every buffer the pool lends or keeps is counted
 * once, whichever way it comes back. */
START_TEST(test_the_pool_counts_its_bytes) {
  sy_flow_pool p;
  sy_flow_pool_init(&p);
  sy_flow a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  ck_assert_int_eq(sy_flow_alloc(&a, &p, SY_RELAY_BUF), 0);
  ck_assert_int_eq(sy_flow_alloc(&b, &p, SY_FLOW_BUF), 0);
  char *blk = sy_flow_block_get(&p);
  ck_assert_ptr_nonnull(blk);
  assert_bytes(&p, SY_RELAY_BUF + SY_FLOW_BUF + SY_CIPHER_BLOCK, 0);
  sy_flow_block_put(&p, blk);
  sy_flow_release_if_idle(&a, &p); /* empty: back to the cache */
  assert_bytes(&p, SY_FLOW_BUF, SY_RELAY_BUF + SY_CIPHER_BLOCK);
  ck_assert_int_eq(sy_flow_alloc(&a, &p, SY_RELAY_BUF), 0); /* from the cache */
  assert_bytes(&p, SY_RELAY_BUF + SY_FLOW_BUF, SY_CIPHER_BLOCK);
  /* An odd size (a large max_header_bytes) is lent and freed, never kept. */
  sy_flow c;
  memset(&c, 0, sizeof c);
  ck_assert_int_eq(sy_flow_alloc(&c, &p, 100000), 0);
  assert_bytes(&p, SY_RELAY_BUF + SY_FLOW_BUF + 100000, SY_CIPHER_BLOCK);
  sy_flow_free(&c, &p);
  sy_flow_free(&a, &p);
  sy_flow_free(&b, &p);
  assert_bytes(&p, 0, SY_RELAY_BUF + SY_FLOW_BUF + SY_CIPHER_BLOCK);
  sy_flow_pool_trim(&p);
  assert_bytes(&p, 0, 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("flow");
  TCase *tc = tcase_create("pool");
  tcase_add_test(tc, test_relays_past_the_cap_get_the_usual_buffer);
  tcase_add_test(tc, test_an_idle_relay_gives_its_buffer_back);
  tcase_add_test(tc, test_the_pool_counts_its_bytes);
  suite_add_tcase(s, tc);
  SRunner *r = srunner_create(s);
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
