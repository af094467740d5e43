/* Passive ejection and its rest: a server ejected after failed connects
 * comes back after SY_PASSIVE_REST_MS unless active checks are there to
 * revive it — and TLS upstreams have none (probes are cleartext). */
#include <check.h>

#include "switchyard/upstream.h"

typedef struct one {
  sy_server_rt rt;
  sy_server_cfg s;
  sy_upstream_cfg up;
} one;

static void make(one *o, int health, int tls) {
  *o = (one){0};
  o->rt.refs = 1;
  o->s.rt = &o->rt;
  o->s.addr.text = "127.0.0.1:1";
  o->up.name = "u";
  o->up.servers = &o->s;
  o->up.nservers = 1;
  o->up.health.enabled = health;
  o->up.health.unhealthy = 2;
  o->up.tls.enabled = tls;
}

static void eject(one *o, uint64_t now) {
  sy_upstream_report(&o->up, &o->s, 0, now);
  ck_assert_int_eq(sy_upstream_pick(&o->up, 0, 0, now), 0); /* one failure: still up */
  sy_upstream_report(&o->up, &o->s, 0, now);
  ck_assert_int_eq(sy_upstream_pick(&o->up, 0, 0, now), SY_PICK_ALL_DOWN);
}

START_TEST(passive_rest_without_health) {
  one o;
  make(&o, 0, 0);
  o.up.health.unhealthy = 0; /* no health block: the fixed threshold of 3 */
  sy_upstream_report(&o.up, &o.s, 0, 1000);
  sy_upstream_report(&o.up, &o.s, 0, 1000);
  ck_assert_int_eq(sy_upstream_pick(&o.up, 0, 0, 1000), 0);
  sy_upstream_report(&o.up, &o.s, 0, 1000);
  ck_assert_int_eq(sy_upstream_pick(&o.up, 0, 0, 1000), SY_PICK_ALL_DOWN);
  ck_assert_int_eq(sy_upstream_pick(&o.up, 0, 0, 1000 + SY_PASSIVE_REST_MS - 1), SY_PICK_ALL_DOWN);
  ck_assert_int_eq(sy_upstream_pick(&o.up, 0, 0, 1000 + SY_PASSIVE_REST_MS), 0);
  sy_upstream_report(&o.up, &o.s, 1, 1000 + SY_PASSIVE_REST_MS);
  ck_assert_int_eq(o.rt.down, 0);
}
END_TEST

START_TEST(active_checks_revive_cleartext) {
  one o;
  make(&o, 1, 0);
  eject(&o, 1000);
  /* only a health check brings it back */
  ck_assert_int_eq(sy_upstream_pick(&o.up, 0, 0, 1000 + 100 * SY_PASSIVE_REST_MS),
                   SY_PICK_ALL_DOWN);
}
END_TEST

START_TEST(tls_upstream_with_health_keeps_the_rest) {
  one o;
  make(&o, 1, 1);
  eject(&o, 1000);
  ck_assert_int_eq(sy_upstream_pick(&o.up, 0, 0, 1000 + SY_PASSIVE_REST_MS), 0);
  sy_upstream_report(&o.up, &o.s, 1, 1000 + SY_PASSIVE_REST_MS);
  ck_assert_int_eq(o.rt.down, 0);
  ck_assert_int_eq(o.rt.fails, 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("upstream");
  TCase *tc = tcase_create("ejection");
  tcase_add_test(tc, passive_rest_without_health);
  tcase_add_test(tc, active_checks_revive_cleartext);
  tcase_add_test(tc, tls_upstream_with_health_keeps_the_rest);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
