/* Router: every match rule, first-match-wins, and allow_upgrades semantics.
 * Routes come from real YAML so the tests also cover what the loader stores. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/config.h"
#include "switchyard/router.h"

#define S(lit) ((sy_str){(lit), sizeof(lit) - 1})
#define HDR(n, v) ((sy_header){S(n), S(v)})

static sy_config *cfg;

static void load(const char *routes) {
  static const char head[] = "listeners: [{address: 127.0.0.1:8080}]\n"
                             "upstreams: {a: {servers: [{address: 127.0.0.1:9000}]}}\n"
                             "routes:\n";
  char buf[4096];
  snprintf(buf, sizeof buf, "%s%s", head, routes);
  sy_config_error err;
  cfg = sy_config_load_string("t.yaml", buf, strlen(buf), &err);
  ck_assert_msg(cfg != NULL, "%s", err.msg);
}

static void teardown(void) {
  sy_config_unref(cfg);
  cfg = NULL;
}

/* Name of the matched route, or "-" for none: one string compare per check. */
static const char *match(sy_request_view *req) {
  const sy_route_cfg *r = sy_route_match(cfg, req);
  return r ? (r->name ? r->name : "?") : "-";
}

static sy_request_view get(sy_str host, sy_str path) {
  return (sy_request_view){.method = S("GET"), .host = host, .path = path};
}

START_TEST(test_host) {
  load("  - {name: exact, match: {host: Example.COM}, upstream: a}\n"
       "  - {name: wild, match: {host: '*.example.org'}, upstream: a}\n"
       "  - {name: v6, match: {host: '[::1]'}, upstream: a}\n");
  sy_request_view r = get(S("example.com"), S("/"));
  ck_assert_str_eq(match(&r), "exact");
  r.host = S("EXAMPLE.com:8080");
  ck_assert_str_eq(match(&r), "exact");
  r.host = S("example.com.");
  ck_assert_str_eq(match(&r), "exact");
  r.host = S("www.example.com");
  ck_assert_str_eq(match(&r), "-");
  r.host = S("example.comx");
  ck_assert_str_eq(match(&r), "-");
  r.host = S("a.example.org");
  ck_assert_str_eq(match(&r), "wild");
  r.host = S("a.b.Example.ORG:443");
  ck_assert_str_eq(match(&r), "wild");
  r.host = S("example.org");
  ck_assert_str_eq(match(&r), "-");
  r.host = S(".example.org");
  ck_assert_str_eq(match(&r), "-"); /* no label before the suffix */
  r.host = S("xexample.org");
  ck_assert_str_eq(match(&r), "-");
  r.host = S("[::1]:8080");
  ck_assert_str_eq(match(&r), "v6");
  r.host = S("[::1]");
  ck_assert_str_eq(match(&r), "v6");
  r.host = (sy_str){NULL, 0};
  ck_assert_str_eq(match(&r), "-");
  r.host = S("");
  ck_assert_str_eq(match(&r), "-");
}
END_TEST

START_TEST(test_any_host) {
  load("  - {name: any, upstream: a}\n");
  sy_request_view r = get((sy_str){NULL, 0}, S("/"));
  ck_assert_str_eq(match(&r), "any");
  r.host = S("whatever:1");
  ck_assert_str_eq(match(&r), "any");
}
END_TEST

START_TEST(test_paths) {
  load("  - {name: exact, match: {path: /status}, upstream: a}\n"
       "  - {name: prefix, match: {path_prefix: /api/}, upstream: a}\n"
       "  - {name: both, match: {path_prefix: /x, path: /x/y}, upstream: a}\n");
  sy_request_view r = get(S("h"), S("/status"));
  ck_assert_str_eq(match(&r), "exact");
  r.path = S("/status/");
  ck_assert_str_eq(match(&r), "-");
  r.path = S("/statu");
  ck_assert_str_eq(match(&r), "-");
  r.path = S("/api/v1");
  ck_assert_str_eq(match(&r), "prefix");
  r.path = S("/api/");
  ck_assert_str_eq(match(&r), "prefix");
  r.path = S("/api");
  ck_assert_str_eq(match(&r), "-");
  r.path = S("/API/v1");
  ck_assert_str_eq(match(&r), "-");
  r.path = S("/x/y");
  ck_assert_str_eq(match(&r), "both");
  r.path = S("/x/yz");
  ck_assert_str_eq(match(&r), "-");
  r.path = S("");
  ck_assert_str_eq(match(&r), "-");
}
END_TEST

START_TEST(test_methods) {
  load("  - {name: rw, match: {methods: [GET, POST]}, upstream: a}\n");
  sy_request_view r = get(S("h"), S("/"));
  ck_assert_str_eq(match(&r), "rw");
  r.method = S("POST");
  ck_assert_str_eq(match(&r), "rw");
  r.method = S("get");
  ck_assert_str_eq(match(&r), "-");
  r.method = S("GETX");
  ck_assert_str_eq(match(&r), "-");
  r.method = S("GE");
  ck_assert_str_eq(match(&r), "-");
  r.method = S("DELETE");
  ck_assert_str_eq(match(&r), "-");
}
END_TEST

START_TEST(test_headers) {
  load("  - name: canary\n"
       "    match: {headers: [{name: X-Env, value: canary}, {name: X-Debug}]}\n"
       "    upstream: a\n"
       "  - {name: empty, match: {headers: [{name: X-Flag, value: ''}]}, upstream: a}\n");
  sy_request_view r = get(S("h"), S("/"));
  ck_assert_str_eq(match(&r), "-");

  sy_header h1[] = {HDR("x-env", "canary"), HDR("X-DEBUG", "")};
  r.headers = h1;
  r.nheaders = 2;
  ck_assert_str_eq(match(&r), "canary");

  sy_header h2[] = {HDR("X-Env", " \tcanary \t"), HDR("X-Debug", "1")};
  r.headers = h2;
  ck_assert_str_eq(match(&r), "canary");

  sy_header h3[] = {HDR("X-Env", "Canary"), HDR("X-Debug", "1")};
  r.headers = h3;
  ck_assert_str_eq(match(&r), "-");

  sy_header h4[] = {HDR("X-Env", "prod"), HDR("X-Debug", "1"), HDR("X-Env", "canary")};
  r.headers = h4;
  r.nheaders = 3;
  ck_assert_str_eq(match(&r), "canary");

  sy_header h5[] = {HDR("X-Env", "canary")};
  r.headers = h5;
  r.nheaders = 1;
  ck_assert_str_eq(match(&r), "-");

  sy_header h6[] = {HDR("X-Env", "canary, x"), HDR("X-Debug", "")};
  r.headers = h6;
  r.nheaders = 2;
  ck_assert_str_eq(match(&r), "-");

  sy_header h7[] = {HDR("X-Flag", "  ")};
  r.headers = h7;
  r.nheaders = 1;
  ck_assert_str_eq(match(&r), "empty");
}
END_TEST

START_TEST(test_match_upgrade) {
  load("  - {name: ws, match: {path_prefix: /ws, upgrade: [websocket]}, upstream: a}\n"
       "  - {name: tls12, match: {upgrade: [TLS/1.2]}, upstream: a}\n"
       "  - {name: plain, match: {path_prefix: /ws}, upstream: a}\n");
  sy_request_view r = get(S("h"), S("/ws/chat"));
  ck_assert_str_eq(match(&r), "plain");

  sy_str up1[] = {S("WebSocket")};
  r.upgrades = up1;
  r.nupgrades = 1;
  ck_assert_str_eq(match(&r), "ws");

  sy_str up2[] = {S("foo"), S("websocket/13")};
  r.upgrades = up2;
  r.nupgrades = 2;
  ck_assert_str_eq(match(&r), "ws");

  sy_str up3[] = {S("websockets")};
  r.upgrades = up3;
  r.nupgrades = 1;
  ck_assert_str_eq(match(&r), "plain");

  sy_str up4[] = {S("tls/1.2")};
  r.upgrades = up4;
  r.path = S("/other");
  ck_assert_str_eq(match(&r), "tls12");
  sy_str up5[] = {S("TLS/1.0")};
  r.upgrades = up5;
  ck_assert_str_eq(match(&r), "-");
  sy_str up6[] = {S("TLS")};
  r.upgrades = up6;
  ck_assert_str_eq(match(&r), "-");
}
END_TEST

START_TEST(test_first_match_wins) {
  load("  - {name: one, match: {path_prefix: /a}, upstream: a}\n"
       "  - {name: two, match: {path_prefix: /a/b}, upstream: a}\n"
       "  - {name: three, match: {host: h, path_prefix: /}, upstream: a}\n");
  sy_request_view r = get(S("h"), S("/a/b"));
  ck_assert_str_eq(match(&r), "one");
  ck_assert_ptr_eq(sy_route_match(cfg, &r), &cfg->routes[0]);
  r.path = S("/b");
  ck_assert_str_eq(match(&r), "three");
  ck_assert_ptr_eq(sy_route_match(cfg, &r)->upstream, &cfg->upstreams[0]);
  r.host = S("other");
  ck_assert_ptr_null(sy_route_match(cfg, &r));
}
END_TEST

START_TEST(test_no_routes) {
  load("  []\n");
  sy_request_view r = get(S("h"), S("/"));
  ck_assert_ptr_null(sy_route_match(cfg, &r));
}
END_TEST

START_TEST(test_allows_default) {
  load("  - {name: r, upstream: a}\n");
  const sy_route_cfg *rt = &cfg->routes[0];
  ck_assert_int_eq(sy_route_allows_upgrade(rt, S("websocket")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(rt, S("TLS/1.0")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(rt, S("anything")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(rt, S("h2c")), 0);
  ck_assert_int_eq(sy_route_allows_upgrade(rt, S("H2C")), 0);
}
END_TEST

START_TEST(test_allows_star) {
  load("  - {name: star, upstream: a, allow_upgrades: ['*']}\n"
       "  - {name: star_h2c, upstream: a, allow_upgrades: ['*', H2C]}\n"
       "  - {name: none, upstream: a, allow_upgrades: []}\n");
  const sy_route_cfg *star = &cfg->routes[0], *star_h2c = &cfg->routes[1], *none = &cfg->routes[2];
  ck_assert_int_eq(sy_route_allows_upgrade(star, S("websocket")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(star, S("h2c")), 0);
  ck_assert_int_eq(sy_route_allows_upgrade(star_h2c, S("h2c")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(star_h2c, S("websocket")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(none, S("websocket")), 0);
  ck_assert_int_eq(sy_route_allows_upgrade(none, S("h2c")), 0);
}
END_TEST

START_TEST(test_allows_list) {
  load("  - {name: list, upstream: a, allow_upgrades: [websocket, TLS/1.2]}\n"
       "  - {name: h2c, upstream: a, allow_upgrades: [h2c]}\n");
  const sy_route_cfg *list = &cfg->routes[0], *h2c = &cfg->routes[1];
  ck_assert_int_eq(sy_route_allows_upgrade(list, S("websocket")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(list, S("WebSocket")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(list, S("websocket/13")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(list, S("websockets")), 0);
  ck_assert_int_eq(sy_route_allows_upgrade(list, S("tls/1.2")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(list, S("TLS/1.0")), 0);
  ck_assert_int_eq(sy_route_allows_upgrade(list, S("TLS")), 0);
  ck_assert_int_eq(sy_route_allows_upgrade(list, S("h2c")), 0);
  ck_assert_int_eq(sy_route_allows_upgrade(list, S("")), 0);
  ck_assert_int_eq(sy_route_allows_upgrade(h2c, S("h2c")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(h2c, S("H2c")), 1);
  ck_assert_int_eq(sy_route_allows_upgrade(h2c, S("websocket")), 0);
}
END_TEST

START_TEST(test_shipped_config_routes) {
  const char *dir = getenv("SY_SOURCE_DIR");
  ck_assert_msg(dir != NULL, "SY_SOURCE_DIR is not set (ctest sets it)");
  char path[4096];
  snprintf(path, sizeof path, "%s/config/switchyard.yaml", dir);
  sy_config_error err;
  cfg = sy_config_load(path, &err);
  ck_assert_msg(cfg != NULL, "%s", err.msg);
  sy_str ws[] = {S("websocket")};
  sy_request_view r = get(S("127.0.0.1:8080"), S("/ws/echo"));
  ck_assert_str_eq(match(&r), "default");
  r.upgrades = ws;
  r.nupgrades = 1;
  ck_assert_str_eq(match(&r), "ws");
  r.path = S("/");
  ck_assert_str_eq(match(&r), "default");
}
END_TEST

static Suite *router_suite(void) {
  Suite *s = suite_create("router");
  TCase *tc = tcase_create("match");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_add_test(tc, test_host);
  tcase_add_test(tc, test_any_host);
  tcase_add_test(tc, test_paths);
  tcase_add_test(tc, test_methods);
  tcase_add_test(tc, test_headers);
  tcase_add_test(tc, test_match_upgrade);
  tcase_add_test(tc, test_first_match_wins);
  tcase_add_test(tc, test_no_routes);
  tcase_add_test(tc, test_shipped_config_routes);
  suite_add_tcase(s, tc);
  tc = tcase_create("allow_upgrades");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_add_test(tc, test_allows_default);
  tcase_add_test(tc, test_allows_star);
  tcase_add_test(tc, test_allows_list);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(router_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
