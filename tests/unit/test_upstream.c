/* Server sets and balancing: the Maglev table of hash(...) (few keys move
 * when a server joins, the same table whatever the servers' order, a down
 * server's keys go only to others, weights), round robin and the set swap. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/config.h"
#include "switchyard/upstream.h"

#define NKEYS 10000

typedef struct fleet {
  sy_server_cfg s[SY_MAX_SERVERS];
  size_t n;
} fleet;

/* Servers 10.0.0.<first+i>:9000 with their own runtime state. */
static void fleet_init(fleet *f, size_t n, unsigned first) {
  memset(f, 0, sizeof(*f));
  f->n = n;
  for (size_t i = 0; i < n; i++) {
    char text[32];
    snprintf(text, sizeof text, "10.0.0.%u:9000", first + (unsigned)i);
    f->s[i].addr.text = strdup(text);
    f->s[i].weight = 1;
    f->s[i].rt = calloc(1, sizeof(sy_server_rt));
    f->s[i].rt->refs = 1;
  }
}

static void fleet_free(fleet *f) {
  for (size_t i = 0; i < f->n; i++) {
    free(f->s[i].addr.text);
    sy_server_rt_unref(f->s[i].rt);
  }
}

static sy_upstream_cfg hash_up = {.name = "u", .balance = SY_BALANCE_HASH};

static uint64_t key(int i) {
  char k[32];
  int n = snprintf(k, sizeof k, "user-%d", i);
  return sy_hash_bytes(k, (size_t)n);
}

/* The address text each key lands on. */
static const char *owner(sy_server_set *set, int k, uint64_t tried) {
  int i = sy_upstream_pick_set(&hash_up, set, tried, key(k), 0);
  ck_assert_int_ge(i, 0);
  return set->servers[i].addr.text;
}

START_TEST(test_add_one_of_ten_moves_few) {
  fleet ten, eleven;
  fleet_init(&ten, 10, 1);
  fleet_init(&eleven, 11, 1);
  sy_server_set *a = sy_server_set_new(ten.s, ten.n, 0, 1);
  sy_server_set *b = sy_server_set_new(eleven.s, eleven.n, 0, 1);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  int moved = 0, moved_elsewhere = 0;
  for (int k = 0; k < NKEYS; k++) {
    const char *x = owner(a, k, 0), *y = owner(b, k, 0);
    if (strcmp(x, y) == 0) continue;
    moved++;
    moved_elsewhere += strcmp(y, "10.0.0.11:9000") != 0;
  }
  /* Ideal: 1/11 (9.1%); modulo hashing would move ~91%. */
  ck_assert_msg(moved <= NKEYS * 15 / 100, "%d of %d keys moved", moved, NKEYS);
  ck_assert_msg(moved >= NKEYS * 5 / 100, "only %d keys moved to the new server", moved);
  /* Maglev moves a few keys between old servers too; very few. */
  ck_assert_msg(moved_elsewhere <= NKEYS * 3 / 100, "%d keys moved between old servers",
                moved_elsewhere);
  sy_server_set_unref(a);
  sy_server_set_unref(b);
  fleet_free(&ten);
  fleet_free(&eleven);
}
END_TEST

START_TEST(test_order_does_not_matter) {
  fleet f, g;
  fleet_init(&f, 12, 20);
  fleet_init(&g, 12, 20);
  /* g: the same servers, reversed then rotated (as DNS may answer). */
  for (size_t i = 0; i < g.n / 2; i++) {
    sy_server_cfg t = g.s[i];
    g.s[i] = g.s[g.n - 1 - i];
    g.s[g.n - 1 - i] = t;
  }
  sy_server_cfg first = g.s[0];
  memmove(&g.s[0], &g.s[1], (g.n - 1) * sizeof(g.s[0]));
  g.s[g.n - 1] = first;
  sy_server_set *a = sy_server_set_new(f.s, f.n, 0, 1);
  sy_server_set *b = sy_server_set_new(g.s, g.n, 0, 1);
  for (int k = 0; k < NKEYS; k++)
    ck_assert_str_eq(owner(a, k, 0), owner(b, k, 0));
  sy_server_set_unref(a);
  sy_server_set_unref(b);
  fleet_free(&f);
  fleet_free(&g);
}
END_TEST

START_TEST(test_down_server_keys_go_to_others) {
  fleet f;
  fleet_init(&f, 10, 1);
  sy_server_set *set = sy_server_set_new(f.s, f.n, 0, 1);
  const char *before[NKEYS];
  for (int k = 0; k < NKEYS; k++)
    before[k] = owner(set, k, 0);
  f.s[3].rt->down = 1; /* ejected, resting for a long time */
  f.s[3].rt->down_until_ms = UINT64_MAX;
  int moved = 0;
  int per_server[10] = {0};
  for (int k = 0; k < NKEYS; k++) {
    const char *now = owner(set, k, 0);
    ck_assert_str_ne(now, "10.0.0.4:9000");
    if (strcmp(before[k], "10.0.0.4:9000") != 0) {
      ck_assert_str_eq(now, before[k]); /* an up server keeps its keys */
    } else {
      moved++;
      per_server[atoi(now + 7) - 1]++;
    }
  }
  ck_assert_int_gt(moved, 0);
  /* The down server's keys spread over the others, not onto one neighbour. */
  int receivers = 0;
  for (int i = 0; i < 10; i++)
    receivers += per_server[i] > 0;
  ck_assert_int_ge(receivers, 7);
  /* A server already tried for this request is skipped the same way. */
  f.s[3].rt->down = 0;
  for (int k = 0; k < 200; k++) {
    int i = sy_upstream_pick_set(&hash_up, set, 0, key(k), 0);
    int j = sy_upstream_pick_set(&hash_up, set, 1ull << i, key(k), 0);
    ck_assert_int_ge(j, 0);
    ck_assert_int_ne(i, j);
  }
  sy_server_set_unref(set);
  fleet_free(&f);
}
END_TEST

START_TEST(test_spread_and_weights) {
  fleet f;
  fleet_init(&f, 4, 1);
  f.s[0].weight = 3; /* 3 / 6 of the keys */
  sy_server_set *set = sy_server_set_new(f.s, f.n, 0, 1);
  int count[4] = {0};
  for (int k = 0; k < NKEYS; k++)
    count[atoi(owner(set, k, 0) + 7) - 1]++;
  ck_assert_msg(count[0] > NKEYS * 45 / 100 && count[0] < NKEYS * 55 / 100, "weight 3: %d",
                count[0]);
  for (int i = 1; i < 4; i++)
    ck_assert_msg(count[i] > NKEYS * 13 / 100 && count[i] < NKEYS * 20 / 100, "weight 1: %d",
                  count[i]);
  sy_server_set_unref(set);
  fleet_free(&f);
}
END_TEST

START_TEST(test_round_robin_and_empty) {
  fleet f;
  fleet_init(&f, 3, 1);
  f.s[1].weight = 2;
  sy_upstream_cfg up = {.name = "rr"};
  sy_server_set *set = sy_server_set_new(f.s, f.n, 0, 0);
  ck_assert_ptr_null(set->table);
  int count[3] = {0};
  for (int k = 0; k < 400; k++)
    count[sy_upstream_pick_set(&up, set, 0, 0, 0)]++;
  ck_assert_int_eq(count[0], 100);
  ck_assert_int_eq(count[1], 200);
  ck_assert_int_eq(count[2], 100);
  ck_assert_int_eq(sy_upstream_pick_set(&up, set, 7, 0, 0), SY_PICK_NONE_LEFT);
  sy_server_set *none = sy_server_set_new(NULL, 0, 0, 1);
  ck_assert_ptr_nonnull(none);
  ck_assert_int_eq(sy_upstream_pick_set(&hash_up, none, 0, 1, 0), SY_PICK_ALL_DOWN);
  ck_assert_int_eq(sy_upstream_pick_set(&up, NULL, 0, 1, 0), SY_PICK_ALL_DOWN);
  sy_server_set_unref(none);
  sy_server_set_unref(set);
  fleet_free(&f);
}
END_TEST

/* A set published while a request holds the previous one: the holder keeps
 * a valid set, the next acquire sees the new one. */
START_TEST(test_publish_keeps_held_set) {
  fleet f;
  fleet_init(&f, 2, 1);
  sy_upstream_cfg up = {.name = "p", .dynamic = 1};
  up.set = sy_server_set_new(f.s, 1, 0, 0);
  sy_server_set *held = sy_upstream_acquire(&up);
  ck_assert_ptr_eq(held, up.set);
  ck_assert_int_eq(held->refs, 2);
  sy_upstream_publish(&up, sy_server_set_new(f.s, 2, 0, 0));
  ck_assert_int_eq(held->refs, 1);
  ck_assert_uint_eq(held->nservers, 1);
  sy_server_set *now = sy_upstream_acquire(&up);
  ck_assert_uint_eq(now->nservers, 2);
  sy_server_set_unref(now);
  sy_server_set_unref(held);
  sy_upstream_free_set(&up);
  ck_assert_ptr_null(up.set);
  fleet_free(&f);
}
END_TEST

/* Workers acquire and drop sets while the main thread publishes new ones:
 * each acquired set must stay whole until dropped (under the sanitizer build
 * a set freed early is a use after free) and the counts must balance. The
 * publisher's grace wait itself guards a window of a few instructions, too
 * narrow for a test to hit on purpose. */
typedef struct race {
  sy_upstream_cfg *up;
  int stop;
  unsigned long reads;
} race;

static void *reader(void *arg) {
  race *r = arg;
  while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
    sy_server_set *set = sy_upstream_acquire(r->up);
    ck_assert_uint_eq(set->nservers, 1);
    ck_assert_int_eq(strncmp(set->servers[0].addr.text, "10.", 3), 0);
    int i = sy_upstream_pick_set(r->up, set, 0, r->reads, 0);
    ck_assert_int_eq(i, 0);
    sy_server_set_unref(set);
    r->reads++;
  }
  return NULL;
}

static sy_server_set *owned_set(unsigned i) {
  sy_server_cfg *s = calloc(1, sizeof(*s));
  char text[32];
  snprintf(text, sizeof text, "10.1.%u.%u:80", (i >> 8) & 255, i & 255);
  s->addr.text = strdup(text);
  s->addr.host = strdup("10.1.0.0");
  s->rt = calloc(1, sizeof(sy_server_rt));
  s->rt->refs = 1;
  return sy_server_set_new(s, 1, 1, 1);
}

START_TEST(test_publish_while_acquiring) {
  sy_upstream_cfg up = {.name = "race", .dynamic = 1, .balance = SY_BALANCE_HASH};
  up.set = owned_set(0);
  race r[2] = {{.up = &up}, {.up = &up}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(pthread_create(&t[i], NULL, reader, &r[i]), 0);
  for (unsigned i = 1; i <= 300; i++)
    sy_upstream_publish(&up, owned_set(i));
  for (int i = 0; i < 2; i++) {
    __atomic_store_n(&r[i].stop, 1, __ATOMIC_RELEASE);
    pthread_join(t[i], NULL);
    ck_assert_uint_gt(r[i].reads, 0);
  }
  ck_assert_int_eq(up.set->refs, 1); /* every reader's reference was dropped */
  sy_upstream_free_set(&up);
}
END_TEST

static sy_config *load(const char *yaml) {
  sy_config_error err;
  sy_config *cfg = sy_config_load_string("t.yaml", yaml, strlen(yaml), &err);
  ck_assert_msg(cfg != NULL, "%s", err.msg);
  ck_assert_int_eq(sy_upstream_prepare(cfg), 0); /* as main does */
  return cfg;
}

/* Loading never waits for DNS: names are kept for the resolver; the set
 * starts with the IP-address servers only. */
START_TEST(test_config_names) {
  sy_config *cfg = load("listeners: [{address: 127.0.0.1:8080}]\n"
                        "resolver: {nameservers: ['127.0.0.1:5353', '[::1]:53'], min_ttl: 2s, "
                        "max_ttl: 1m}\n"
                        "upstreams:\n"
                        "  ip: {servers: [{address: 127.0.0.1:9000}, {address: 127.0.0.2:9000}]}\n"
                        "  dns: {balance: hash(client), servers: [{address: "
                        "chat.default.svc.cluster.local:9000, weight: 3}]}\n"
                        "  mixed: {servers: [{address: 127.0.0.1:9001}, {address: "
                        "nonexistent.invalid:80}]}\n"
                        "routes: [{upstream: ip}]\n");
  ck_assert_uint_eq(cfg->resolver.nnameservers, 2);
  ck_assert_str_eq(cfg->resolver.nameservers[1], "[::1]:53");
  ck_assert_uint_eq(cfg->resolver.min_ttl, 2000);
  ck_assert_uint_eq(cfg->resolver.max_ttl, 60000);
  sy_upstream_cfg *ip = &cfg->upstreams[0], *dns = &cfg->upstreams[1], *mixed = &cfg->upstreams[2];
  ck_assert_int_eq(ip->dynamic, 0);
  ck_assert_ptr_eq(ip->set->servers, ip->servers);
  /* A static upstream's set is pinned: acquiring it writes nothing shared. */
  int refs = ip->set->refs;
  sy_server_set *held = sy_upstream_acquire(ip);
  ck_assert_ptr_eq(held, ip->set);
  ck_assert_int_eq(held->refs, refs);
  sy_server_set_unref(held);
  ck_assert_int_eq(ip->set->refs, refs);
  ck_assert_int_ge(sy_upstream_pick(ip, 0, 0, 0), 0);
  ck_assert_int_eq(dns->dynamic, 1);
  ck_assert_int_eq(dns->servers[0].dns, 1);
  ck_assert_str_eq(dns->servers[0].addr.host, "chat.default.svc.cluster.local");
  ck_assert_uint_eq(dns->servers[0].addr.port, 9000);
  ck_assert_uint_eq(dns->set->nservers, 0);
  ck_assert_int_eq(sy_upstream_pick(dns, 0, 0, 0), SY_PICK_ALL_DOWN);
  ck_assert_int_eq(mixed->dynamic, 1);
  ck_assert_uint_eq(mixed->set->nservers, 1);
  ck_assert_str_eq(mixed->set->servers[0].addr.text, "127.0.0.1:9001");
  ck_assert_ptr_eq(mixed->set->servers[0].rt, mixed->servers[0].rt);
  sy_config_unref(cfg);
}
END_TEST

static void load_fails(const char *yaml, const char *want) {
  sy_config_error err;
  sy_config *cfg = sy_config_load_string("t.yaml", yaml, strlen(yaml), &err);
  ck_assert_ptr_null(cfg);
  ck_assert_msg(strstr(err.msg, want) != NULL, "got \"%s\", want \"%s\"", err.msg, want);
}

START_TEST(test_config_bad) {
  load_fails("listeners: [{address: 127.0.0.1:8080}]\n"
             "upstreams: {a: {servers: [{address: 'bad_name!:80'}]}}\n",
             "is neither an IP address nor a valid host name");
  load_fails("listeners: [{address: 127.0.0.1:8080}]\n"
             "upstreams: {a: {servers: [{address: 'a..b:80'}]}}\n",
             "valid host name");
  load_fails("listeners: [{address: 127.0.0.1:8080}]\n"
             "resolver: {nameservers: ['dns.example:53']}\n",
             "resolver.nameservers[0]: \"dns.example:53\" is not an IP address");
  load_fails("listeners: [{address: 127.0.0.1:8080}]\n"
             "resolver: {nameservers: ['10.0.0.1']}\n",
             "missing port");
  load_fails("listeners: [{address: 127.0.0.1:8080}]\n"
             "resolver: {min_ttl: 10m, max_ttl: 1m}\n",
             "min_ttl must not be more than max_ttl");
  load_fails("listeners: [{address: 127.0.0.1:8080}]\n"
             "resolver: {ttl: 1s}\n",
             "ttl");
}
END_TEST

int main(void) {
  Suite *s = suite_create("upstream");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_add_one_of_ten_moves_few);
  tcase_add_test(tc, test_order_does_not_matter);
  tcase_add_test(tc, test_down_server_keys_go_to_others);
  tcase_add_test(tc, test_spread_and_weights);
  tcase_add_test(tc, test_round_robin_and_empty);
  tcase_add_test(tc, test_publish_keeps_held_set);
  tcase_add_test(tc, test_publish_while_acquiring);
  tcase_add_test(tc, test_config_names);
  tcase_add_test(tc, test_config_bad);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
