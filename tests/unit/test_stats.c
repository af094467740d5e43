/* Request, server and tunnel counting: labels from the configuration only
 * (made-up upgrade tokens are "other"), the series each event adds to, and
 * the cached path giving the same series as the first (uncached) call. */
#include "switchyard/stats.h"
#include "switchyard/upstream.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char yaml[] =
    "listeners: [{address: \"127.0.0.1:8080\"}]\n"
    "upstreams:\n"
    "  api: {servers: [{address: \"127.0.0.1:9001\"}, {address: \"127.0.0.1:9002\"}]}\n"
    "  ws: {servers: [{address: \"127.0.0.1:9003\"}]}\n"
    "routes:\n"
    "  - {name: api, match: {path_prefix: /api}, upstream: api, allow_upgrades: []}\n"
    "  - {name: chat, match: {path_prefix: /chat}, upstream: ws,\n"
    "     allow_upgrades: [WebSocket, TLS/1.2]}\n"
    "  - {match: {path_prefix: /}, upstream: ws}\n";

static sy_config *load(const char *text) {
  sy_config_error err;
  sy_config *cfg = sy_config_load_string("t.yaml", text, strlen(text), &err);
  ck_assert_msg(cfg != NULL, "%s", err.msg);
  return cfg;
}

static int64_t get(sy_metrics *m, const char *name, const char *labels) {
  return sy_metrics_get(&m, 1, name, labels);
}

static size_t nseries(sy_metrics *m) {
  sy_buf out = {0};
  sy_metrics_render(&m, 1, &out);
  size_t n = 0;
  for (size_t i = 0; i < out.len; i++)
    n += out.p[i] == '\n' && i + 1 < out.len && out.p[i + 1] != '#';
  sy_buf_free(&out);
  return n;
}

START_TEST(test_protocol_label_comes_from_the_config) {
  sy_config *cfg = load(yaml);
  const sy_route_cfg *api = &cfg->routes[0], *chat = &cfg->routes[1], *any = &cfg->routes[2];
  /* listed: the entry as written, whatever the client's case or version */
  ck_assert_str_eq(sy_stats_protocol(chat, "websocket", 9), "WebSocket");
  ck_assert_str_eq(sy_stats_protocol(chat, "WEBSOCKET", 9), "WebSocket");
  ck_assert_str_eq(sy_stats_protocol(chat, "websocket/13", 12), "WebSocket");
  ck_assert_str_eq(sy_stats_protocol(chat, "tls/1.2", 7), "TLS/1.2");
  ck_assert_str_eq(sy_stats_protocol(chat, "TLS/1.3", 7), "other");
  ck_assert_str_eq(sy_stats_protocol(chat, "h2c", 3), "other");
  /* allow_upgrades: [] allows nothing */
  ck_assert_str_eq(sy_stats_protocol(api, "websocket", 9), "other");
  /* "*" (the default): well-known names only, in their usual spelling */
  ck_assert_str_eq(sy_stats_protocol(any, "WebSocket", 9), "websocket");
  ck_assert_str_eq(sy_stats_protocol(any, "tls/1.3", 7), "TLS/1.3");
  ck_assert_str_eq(sy_stats_protocol(any, "connect-UDP", 11), "connect-udp");
  ck_assert_str_eq(sy_stats_protocol(any, "tok-1", 5), "other");
  ck_assert_str_eq(sy_stats_protocol(any, "h2c", 3), "other"); /* never under "*" */
  ck_assert_str_eq(sy_stats_protocol(any, "\xff", 1), "other");
  ck_assert_str_eq(sy_stats_protocol(any, "", 0), "other");
  ck_assert_str_eq(sy_stats_protocol(NULL, "websocket", 9), "other");
  sy_config_unref(cfg);
}
END_TEST

/* Thousands of made-up tokens (and the bytes of hostile ones) add one series. */
START_TEST(test_made_up_tokens_add_no_series) {
  sy_config *cfg = load(yaml);
  sy_metrics *m = sy_metrics_new(sy_metrics_capacity(cfg));
  sy_buf lb = {0};
  sy_stats_upgrade(m, &lb, cfg, &cfg->routes[2], "websocket", 9, "switched");
  size_t before = nseries(m);
  char tok[64];
  for (int i = 0; i < 5000; i++) {
    int n = snprintf(tok, sizeof(tok), "tok-%d\xff\"\n", i);
    sy_stats_upgrade(m, &lb, cfg, &cfg->routes[i % 3], tok, (size_t)n, "rejected");
  }
  ck_assert_uint_eq(nseries(m), before + 1);
  ck_assert_int_eq(get(m, "switchyard_upgrades_total", "protocol=\"other\",outcome=\"rejected\""),
                   5000);
  ck_assert_int_eq(
      get(m, "switchyard_upgrades_total", "protocol=\"websocket\",outcome=\"switched\""), 1);
  ck_assert_int_eq(sy_metrics_dropped(&m, 1), 0);
  sy_buf_free(&lb);
  sy_metrics_free(m);
  sy_config_unref(cfg);
}
END_TEST

/* Tunnels open and total by route and protocol, through the key cache: the
 * same series each time, the gauge back to what it was after the closes. */
START_TEST(test_tunnel_counts) {
  sy_config *cfg = load(yaml);
  sy_metrics *m = sy_metrics_new(sy_metrics_capacity(cfg));
  sy_buf lb = {0};
  const sy_route_cfg *any = &cfg->routes[2];
  for (int i = 0; i < 3; i++)
    sy_stats_tunnel_count(m, &lb, cfg, any, "WebSocket", 1);
  sy_stats_tunnel_count(m, &lb, cfg, any, "WebSocket", -1);
  sy_stats_tunnel_count(m, &lb, cfg, any, "made-up", 1);
  sy_stats_upgrade(m, &lb, cfg, any, "websocket", 9, "switched");
  sy_stats_upgrade(m, &lb, cfg, any, "websocket", 9, "switched");
  sy_stats_upgrade(m, &lb, cfg, any, "websocket", 9, "refused");
  ck_assert_int_eq(get(m, "switchyard_tunnels_open", "route=\"#2\",protocol=\"websocket\""), 2);
  ck_assert_int_eq(get(m, "switchyard_tunnels_total", "route=\"#2\",protocol=\"websocket\""), 3);
  ck_assert_int_eq(get(m, "switchyard_tunnels_open", "route=\"#2\",protocol=\"other\""), 1);
  ck_assert_int_eq(
      get(m, "switchyard_upgrades_total", "protocol=\"websocket\",outcome=\"switched\""), 2);
  ck_assert_int_eq(
      get(m, "switchyard_upgrades_total", "protocol=\"websocket\",outcome=\"refused\""), 1);
  sy_buf_free(&lb);
  sy_metrics_free(m);
  sy_config_unref(cfg);
}
END_TEST

START_TEST(test_response_counts_route_class_server_and_latency) {
  sy_config *cfg = load(yaml);
  sy_metrics *m = sy_metrics_new(sy_metrics_capacity(cfg));
  sy_buf lb = {0};
  const sy_route_cfg *api = &cfg->routes[0], *any = &cfg->routes[2];
  const sy_server_cfg *s2 = &api->upstream->servers[1];
  for (int i = 0; i < 3; i++) /* the first is a miss, the others hit the cache */
    sy_stats_response(m, &lb, cfg, api, s2, 200, 2000000);
  sy_stats_response(m, &lb, cfg, api, NULL, 502, 1000000); /* the proxy's own answer */
  sy_stats_response(m, &lb, cfg, NULL, NULL, 404, 50000);  /* no route */
  sy_stats_response(m, &lb, cfg, any, &any->upstream->servers[0], 101, 3000000);
  sy_stats_response(m, &lb, cfg, api, s2, 999, 1);
  ck_assert_int_eq(get(m, "switchyard_requests_total", "route=\"api\",class=\"2xx\""), 3);
  ck_assert_int_eq(get(m, "switchyard_requests_total", "route=\"api\",class=\"5xx\""), 1);
  ck_assert_int_eq(get(m, "switchyard_requests_total", "route=\"api\",class=\"other\""), 1);
  ck_assert_int_eq(get(m, "switchyard_requests_total", "route=\"\",class=\"4xx\""), 1);
  ck_assert_int_eq(get(m, "switchyard_requests_total", "route=\"#2\",class=\"1xx\""), 1);
  ck_assert_int_eq(get(m, "switchyard_upstream_requests_total",
                       "upstream=\"api\",server=\"127.0.0.1:9002\",class=\"2xx\""),
                   3);
  ck_assert_int_eq(get(m, "switchyard_upstream_requests_total",
                       "upstream=\"ws\",server=\"127.0.0.1:9003\",class=\"1xx\""),
                   1);
  /* the 502 was not the server's */
  ck_assert_int_eq(get(m, "switchyard_upstream_requests_total",
                       "upstream=\"api\",server=\"127.0.0.1:9002\",class=\"5xx\""),
                   0);
  /* histograms: requests by route, the 101 as an upgrade */
  ck_assert_int_eq(get(m, "switchyard_request_duration_seconds", "route=\"api\""), 5);
  ck_assert_int_eq(get(m, "switchyard_request_duration_seconds", "route=\"\""), 1);
  ck_assert_int_eq(get(m, "switchyard_request_duration_seconds", "route=\"#2\""), 0);
  ck_assert_int_eq(get(m, "switchyard_upgrade_duration_seconds", "route=\"#2\""), 1);
  sy_buf out = {0};
  sy_metrics_render(&m, 1, &out);
  sy_buf_append(&out, "", 1);
  ck_assert(
      strstr(out.p, "switchyard_request_duration_seconds_bucket{route=\"api\",le=\"0.001\"} 2\n"));
  ck_assert(
      strstr(out.p, "switchyard_request_duration_seconds_bucket{route=\"api\",le=\"0.0025\"} 5\n"));
  ck_assert(strstr(out.p, "switchyard_request_duration_seconds_sum{route=\"api\"} 0.007000\n"));
  sy_buf_free(&out);
  sy_buf_free(&lb);
  sy_metrics_free(m);
  sy_config_unref(cfg);
}
END_TEST

START_TEST(test_server_events_connect_and_first_byte) {
  sy_config *cfg = load(yaml);
  sy_metrics *m = sy_metrics_new(sy_metrics_capacity(cfg));
  sy_buf lb = {0};
  const sy_route_cfg *api = &cfg->routes[0];
  const sy_server_cfg *s1 = &api->upstream->servers[0];
  for (int i = 0; i < 3; i++) {
    sy_stats_server(m, &lb, cfg, api, s1, SY_STATS_CONNECT_FAILURE);
    sy_stats_server(m, &lb, cfg, api, s1, SY_STATS_RETRY);
  }
  sy_stats_server(m, &lb, cfg, api, &api->upstream->servers[1], SY_STATS_RETRY);
  sy_stats_server(m, &lb, cfg, NULL, s1, SY_STATS_RETRY); /* no route: nothing to name */
  ck_assert_int_eq(get(m, "switchyard_upstream_connect_failures_total",
                       "upstream=\"api\",server=\"127.0.0.1:9001\""),
                   3);
  ck_assert_int_eq(
      get(m, "switchyard_upstream_retries_total", "upstream=\"api\",server=\"127.0.0.1:9001\""), 3);
  ck_assert_int_eq(
      get(m, "switchyard_upstream_retries_total", "upstream=\"api\",server=\"127.0.0.1:9002\""), 1);
  sy_stats_connect(m, &lb, cfg, api, 300000);
  sy_stats_connect(m, &lb, cfg, &cfg->routes[1], 300000);
  sy_stats_first_byte(m, &lb, cfg, api, 800000);
  sy_stats_first_byte(m, &lb, cfg, api, 900000);
  ck_assert_int_eq(get(m, "switchyard_upstream_connect_seconds", "upstream=\"api\""), 1);
  ck_assert_int_eq(get(m, "switchyard_upstream_connect_seconds", "upstream=\"ws\""), 1);
  ck_assert_int_eq(get(m, "switchyard_upstream_first_byte_seconds", "upstream=\"api\""), 2);
  sy_buf_free(&lb);
  sy_metrics_free(m);
  sy_config_unref(cfg);
}
END_TEST

/* A set found by DNS is an array of its own, which a later set may reuse:
 * the series must follow the server in the set, not the memory. */
START_TEST(test_server_series_follow_the_set_not_the_memory) {
  sy_config *cfg = load(yaml);
  sy_metrics *m = sy_metrics_new(sy_metrics_capacity(cfg));
  sy_buf lb = {0};
  const sy_route_cfg *api = &cfg->routes[0];
  sy_server_rt rt = {.refs = 1};
  sy_server_cfg found[1] = {{.addr.text = "10.0.0.1:9001", .weight = 1, .rt = &rt}};
  sy_server_set *set = sy_server_set_new(found, 1, 0, 0);
  for (int i = 0; i < 2; i++) /* the second one from the cache */
    sy_stats_server(m, &lb, cfg, api, &set->servers[0], SY_STATS_RETRY);
  sy_server_set_unref(set);
  found[0].addr.text = "10.0.0.2:9001"; /* the next answer, in the same memory */
  set = sy_server_set_new(found, 1, 0, 0);
  sy_stats_server(m, &lb, cfg, api, &set->servers[0], SY_STATS_RETRY);
  sy_stats_response(m, &lb, cfg, api, &set->servers[0], 200, 1000);
  sy_server_set_unref(set);
  ck_assert_int_eq(
      get(m, "switchyard_upstream_retries_total", "upstream=\"api\",server=\"10.0.0.1:9001\""), 2);
  ck_assert_int_eq(
      get(m, "switchyard_upstream_retries_total", "upstream=\"api\",server=\"10.0.0.2:9001\""), 1);
  ck_assert_int_eq(get(m, "switchyard_upstream_requests_total",
                       "upstream=\"api\",server=\"10.0.0.2:9001\",class=\"2xx\""),
                   1);
  sy_buf_free(&lb);
  sy_metrics_free(m);
  sy_config_unref(cfg);
}
END_TEST

START_TEST(test_tunnel_bytes_and_lifetime) {
  sy_config *cfg = load(yaml);
  sy_metrics *m = sy_metrics_new(sy_metrics_capacity(cfg));
  sy_buf lb = {0};
  const sy_route_cfg *chat = &cfg->routes[1];
  sy_tunnel_bytes a = {.c2u = 100, .u2c = 5000, .spliced = 4096, .copied = 1004};
  sy_tunnel_bytes b = {.c2u = 7, .u2c = 0, .spliced = 0, .copied = 7};
  sy_stats_tunnel_bytes(m, &lb, cfg, chat, &a);
  sy_stats_tunnel_bytes(m, &lb, cfg, chat, &b);
  sy_stats_tunnel_bytes(m, &lb, cfg, NULL, &b);
  ck_assert_int_eq(
      get(m, "switchyard_tunnel_bytes_total", "route=\"chat\",direction=\"to_upstream\""), 107);
  ck_assert_int_eq(
      get(m, "switchyard_tunnel_bytes_total", "route=\"chat\",direction=\"to_client\""), 5000);
  ck_assert_int_eq(get(m, "switchyard_tunnel_bytes_total", "route=\"\",direction=\"to_upstream\""),
                   7);
  ck_assert_int_eq(get(m, "switchyard_tunnel_spliced_bytes_total", NULL), 4096);
  ck_assert_int_eq(get(m, "switchyard_tunnel_copied_bytes_total", NULL), 1018);
  sy_stats_tunnel_end(m, &lb, cfg, chat, 3600ull * 1000000000ull);
  ck_assert_int_eq(get(m, "switchyard_tunnel_duration_seconds", "route=\"chat\""), 1);
  sy_buf_free(&lb);
  sy_metrics_free(m);
  sy_config_unref(cfg);
}
END_TEST

/* A reload renames a route: the new snapshot's series carry the new name,
 * the old snapshot's connections keep counting under the old one. */
START_TEST(test_reloaded_snapshot_gets_its_own_series) {
  sy_config *old = load(yaml);
  char text[sizeof(yaml) + 16];
  snprintf(text, sizeof(text), "%s", yaml);
  memcpy(strstr(text, "name: api"), "name: API", 9);
  sy_config *cur = load(text);
  ck_assert_uint_ne(old->serial, cur->serial);
  sy_metrics *m = sy_metrics_new(sy_metrics_capacity(cur));
  sy_buf lb = {0};
  for (int i = 0; i < 2; i++) {
    sy_stats_response(m, &lb, old, &old->routes[0], NULL, 200, 1);
    sy_stats_response(m, &lb, cur, &cur->routes[0], NULL, 200, 1);
  }
  ck_assert_int_eq(get(m, "switchyard_requests_total", "route=\"api\",class=\"2xx\""), 2);
  ck_assert_int_eq(get(m, "switchyard_requests_total", "route=\"API\",class=\"2xx\""), 2);
  sy_buf_free(&lb);
  sy_metrics_free(m);
  sy_config_unref(old);
  sy_config_unref(cur);
}
END_TEST

static Suite *stats_suite(void) {
  Suite *s = suite_create("stats");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_protocol_label_comes_from_the_config);
  tcase_add_test(tc, test_made_up_tokens_add_no_series);
  tcase_add_test(tc, test_tunnel_counts);
  tcase_add_test(tc, test_response_counts_route_class_server_and_latency);
  tcase_add_test(tc, test_server_events_connect_and_first_byte);
  tcase_add_test(tc, test_server_series_follow_the_set_not_the_memory);
  tcase_add_test(tc, test_tunnel_bytes_and_lifetime);
  tcase_add_test(tc, test_reloaded_snapshot_gets_its_own_series);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(stats_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
