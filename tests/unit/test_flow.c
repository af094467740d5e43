/* The flow pool's buffers: a TLS relay's large buffers are capped per worker,
 * so that stalled readers cannot pin 256 KiB per direction without bound. */
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

int main(void) {
  Suite *s = suite_create("flow");
  TCase *tc = tcase_create("pool");
  tcase_add_test(tc, test_relays_past_the_cap_get_the_usual_buffer);
  tcase_add_test(tc, test_an_idle_relay_gives_its_buffer_back);
  suite_add_tcase(s, tc);
  SRunner *r = srunner_create(s);
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
