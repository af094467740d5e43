/* Passive ejection and its rest: a server ejected after failed connects
 * comes back after SY_PASSIVE_REST_MS unless a probe watches it (the rt's
 * `probed`, which the health checks set and clear) to revive it — and TLS
 * upstreams have none (probes are cleartext). */
#include <check.h>
#include <string.h>

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
  o->rt.probed = health && !tls; /* as sy_health_start marks what it probes */
  ck_assert_int_eq(sy_upstream_init_set(&o->up), 0);
}

/* The set sy_upstream_init_set made for the one-server upstream. */
static void unmake(one *o) {
  sy_upstream_free_set(&o->up);
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
  unmake(&o);
}
END_TEST

START_TEST(active_checks_revive_cleartext) {
  one o;
  make(&o, 1, 0);
  eject(&o, 1000);
  /* only a health check brings it back */
  ck_assert_int_eq(sy_upstream_pick(&o.up, 0, 0, 1000 + 100 * SY_PASSIVE_REST_MS),
                   SY_PICK_ALL_DOWN);
  unmake(&o);
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
  unmake(&o);
}
END_TEST

/* A reload that removes the checks (or adds tls:) must not leave a server
 * they ejected down for good: nothing would ever probe it again. */
START_TEST(checks_gone_release_their_ejection) {
  one o;
  make(&o, 1, 0);
  ck_assert_int_eq(sy_server_eject(&o.rt), 1); /* a probe's verdict */
  ck_assert_int_eq(sy_upstream_pick(&o.up, 0, 0, 5000), SY_PICK_ALL_DOWN);
  o.rt.probed = 0; /* sy_health_stop, and the new file has no health: */
  ck_assert_int_eq(sy_upstream_pick(&o.up, 0, 0, 5000), 0);
  unmake(&o);
}
END_TEST

/* A passive rest that ended leaves its time behind; a probe's ejection after
 * checks were turned on must not be read as a rest that is over. */
START_TEST(probe_ejection_after_a_passive_recovery) {
  one o;
  make(&o, 0, 0);
  eject(&o, 1000);
  sy_upstream_report(&o.up, &o.s, 1, 1000 + SY_PASSIVE_REST_MS);
  ck_assert_int_eq(o.rt.down, 0);
  o.rt.probed = 1; /* a reload turned checks on */
  ck_assert_int_eq(sy_server_eject(&o.rt), 1);
  ck_assert_int_eq(sy_upstream_pick(&o.up, 0, 0, 1000 + 2 * SY_PASSIVE_REST_MS), SY_PICK_ALL_DOWN);
  unmake(&o);
}
END_TEST

static uint64_t key_of(one *o, const char *hash_key, const char *raw) {
  o->up.balance = SY_BALANCE_HASH;
  o->up.hash_key = (char *)hash_key;
  sy_head h;
  sy_head_init(&h, 1, 32);
  /* A hand-made head: fields "Name: value" separated by CRLF, spans into raw. */
  const char *p = raw;
  while (*p) {
    const char *colon = strchr(p, ':'), *eol = strstr(p, "\r\n");
    sy_head_on_field(&h, (uint32_t)(p - raw), (uint32_t)(colon - p));
    const char *v = colon + 1;
    while (*v == ' ')
      v++;
    sy_head_on_value(&h, (uint32_t)(v - raw), (uint32_t)(eol - v));
    p = eol + 2;
  }
  uint64_t k = sy_upstream_key(&o->up, &h, raw, "127.0.0.9");
  sy_head_free(&h);
  return k;
}

/* Moved out of the connection code: what a hash balancer hashes. */
START_TEST(balance_key) {
  one o;
  make(&o, 0, 0);
  const char *raw = "X-User: alice\r\nCookie: a=1; sid=s42\r\n";
  ck_assert_uint_eq(key_of(&o, "header:x-user", raw), sy_hash_bytes("alice", 5));
  ck_assert_uint_eq(key_of(&o, "cookie:sid", raw), sy_hash_bytes("s42", 3));
  ck_assert_uint_eq(key_of(&o, "client", raw), sy_hash_bytes("127.0.0.9", 9));
  ck_assert_uint_eq(key_of(&o, "header:x-missing", raw), 0);
  ck_assert_uint_eq(key_of(&o, "cookie:nope", raw), 0);
  o.up.balance = SY_BALANCE_ROUND_ROBIN;
  ck_assert_uint_eq(sy_upstream_key(&o.up, NULL, raw, "127.0.0.9"), 0);
  unmake(&o);
}
END_TEST

/* least_conn's count moves with connections and tunnels. */
START_TEST(active_count) {
  one o;
  make(&o, 0, 0);
  sy_upstream_active_add(&o.s, 1);
  sy_upstream_active_add(&o.s, 1);
  ck_assert_int_eq(o.rt.active, 2);
  sy_upstream_active_add(&o.s, -1);
  ck_assert_int_eq(o.rt.active, 1);
  unmake(&o);
}
END_TEST

int main(void) {
  Suite *s = suite_create("upstream_health");
  TCase *tc = tcase_create("ejection");
  tcase_add_test(tc, passive_rest_without_health);
  tcase_add_test(tc, active_checks_revive_cleartext);
  tcase_add_test(tc, tls_upstream_with_health_keeps_the_rest);
  tcase_add_test(tc, checks_gone_release_their_ejection);
  tcase_add_test(tc, probe_ejection_after_a_passive_recovery);
  tcase_add_test(tc, balance_key);
  tcase_add_test(tc, active_count);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
