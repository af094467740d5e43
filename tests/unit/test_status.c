/* The status page's data: Prometheus text read back (labels with escapes,
 * histograms), the 1-second ring turned into rates, /status.json's tables. */
#include <check.h>

#include "switchyard/upstream.h"
#include <stdlib.h>
#include <string.h>

#include "switchyard/config.h"
#include "switchyard/status.h"

static const char metrics[] =
    "# HELP switchyard_requests_total Responses.\n"
    "# TYPE switchyard_requests_total counter\n"
    "switchyard_requests_total{route=\"web\",class=\"2xx\"} 90\n"
    "switchyard_requests_total{route=\"web\",class=\"5xx\"} 10\n"
    "switchyard_requests_total{route=\"we\\\"ird}\\\\\",class=\"2xx\"} 1\n"
    "switchyard_requests_total{route=\"\",class=\"4xx\"} 2\n"
    "switchyard_connections_open 3\n"
    "switchyard_tunnels_open{route=\"ws\",protocol=\"websocket\"} 2\n"
    "switchyard_tunnels_total{route=\"ws\",protocol=\"websocket\"} 5\n"
    "switchyard_tunnel_bytes_total{route=\"ws\",direction=\"to_client\"} 1000\n"
    "switchyard_tunnel_bytes_total{route=\"ws\",direction=\"to_upstream\"} 24\n"
    "switchyard_request_duration_seconds_bucket{route=\"web\",le=\"0.001\"} 0\n"
    "switchyard_request_duration_seconds_bucket{route=\"web\",le=\"0.01\"} 50\n"
    "switchyard_request_duration_seconds_bucket{route=\"web\",le=\"0.1\"} 100\n"
    "switchyard_request_duration_seconds_bucket{route=\"web\",le=\"+Inf\"} 100\n"
    "switchyard_request_duration_seconds_sum{route=\"web\"} 2.5\n"
    "switchyard_request_duration_seconds_count{route=\"web\"} 100\n"
    "switchyard_upstream_requests_total{upstream=\"app\",server=\"127.0.0.1:9000\",class=\"5xx\"} "
    "4\n"
    "switchyard_upstream_requests_total{upstream=\"app\",server=\"127.0.0.1:9000\",class=\"2xx\"} "
    "96\n"
    "switchyard_upstream_requests_total{upstream=\"gone\",server=\"10.0.0.1:1\",class=\"2xx\"} 7\n"
    "switchyard_pipes{state=\"in_use\"} 1\n"
    "not a sample line\n"
    "switchyard_broken{route=\"x\" 5\n";

struct seen {
  int n;
  double sum;
  char weird[64];
};

static void count(const char *name, size_t nlen, const char *labels, size_t llen, double v,
                  void *arg) {
  struct seen *s = arg;
  s->n++;
  s->sum += v;
  char route[64];
  if (sy_status_label(labels, llen, "route", route, sizeof(route)) > 0 && route[0] == 'w' &&
      route[1] == 'e' && route[2] == '"')
    memcpy(s->weird, route, strlen(route) + 1);
}

START_TEST(test_scrape_and_labels) {
  struct seen s = {0};
  sy_status_scrape(metrics, sizeof(metrics) - 1, count, &s);
  ck_assert_int_eq(s.n, 19); /* comments, the bad line and the unclosed brace skipped */
  ck_assert_str_eq(s.weird, "we\"ird}\\");
  char v[8];
  const char *l = "a=\"1\",bb=\"hello world\"";
  ck_assert_int_eq(sy_status_label(l, strlen(l), "bb", v, sizeof(v)), 7); /* cut to fit */
  ck_assert_str_eq(v, "hello w");
  ck_assert_int_eq(sy_status_label(l, strlen(l), "b", v, sizeof(v)), -1);
  ck_assert_int_eq(sy_status_label(l, strlen(l), "a", v, sizeof(v)), 1);
}
END_TEST

START_TEST(test_json_tables_and_history) {
  static const char yaml[] = "listeners: [{address: 127.0.0.1:8080}]\n"
                             "upstreams:\n  app: {servers: [{address: 127.0.0.1:9000}]}\n"
                             "routes:\n  - {name: web, upstream: app}\n"
                             "  - {name: quiet, upstream: app}\n  - {upstream: app}\n";
  sy_config_error err;
  sy_config *cfg = sy_config_load_string("t.yaml", yaml, strlen(yaml), &err);
  ck_assert_msg(cfg != NULL, "%s", err.msg);
  ck_assert_int_eq(sy_upstream_prepare(cfg), 0); /* as main does */
  sy_admin_state st = {.cfg = cfg, .generation = 2, .started = 1000};
  sy_status_history *h = calloc(1, sizeof(*h));
  /* 0 requests, then 100, then a counter that went down: rates 100 and 0 */
  sy_status_record(h, "", 0);
  sy_status_record(h, metrics, sizeof(metrics) - 1);
  sy_status_record(h, "switchyard_requests_total{route=\"web\",class=\"2xx\"} 50\n", 55);
  sy_buf b = {0};
  sy_status_json(&b, &st, h, metrics, sizeof(metrics) - 1);
  sy_buf_append(&b, "", 1);
  const char *want[] = {
      "\"generation\":2,",
      "\"connections_open\":3,\"requests\":103,\"tunnels_open\":2,\"pipes_in_use\":1,",
      "\"requests_per_s\":[103,0]",
      "\"errors_per_s\":[10,0]",
      "\"tunnel_bytes_per_s\":[1024,0]",
      "\"tunnels_open\":[0,2,0]",
      /* avg 25 ms; p95 between 10 and 100 ms: 10 + 90 * (95 - 50) / 50 */
      "{\"route\":\"web\",\"requests\":100,\"errors_5xx\":10,\"latency_avg_ms\":25.000,"
      "\"latency_p95_ms\":91.000,\"tunnels_open\":0,\"tunnel_bytes\":null}",
      "{\"route\":\"quiet\",\"requests\":0,\"errors_5xx\":0,\"latency_avg_ms\":null,"
      "\"latency_p95_ms\":null,\"tunnels_open\":0,\"tunnel_bytes\":null}",
      "{\"route\":\"#2\",\"requests\":0",
      "{\"route\":\"ws\",\"requests\":0,\"errors_5xx\":0,\"latency_avg_ms\":null,"
      "\"latency_p95_ms\":null,\"tunnels_open\":2,\"tunnel_bytes\":1024}",
      "{\"route\":\"\",\"requests\":2",
      "{\"route\":\"we\\\"ird}\\\\\",\"requests\":1",
      "\"servers\":[{\"upstream\":\"app\",\"server\":\"127.0.0.1:9000\",\"up\":true,\"active\":0,"
      "\"requests\":100,\"errors_5xx\":4,\"connect_failures\":null}]",
      "\"tunnels\":[{\"route\":\"ws\",\"protocol\":\"websocket\",\"open\":2,\"total\":5}]",
      "\"last_reload\":{\"time\":null,\"ok\":null,\"error\":null}",
  };
  for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
    ck_assert_msg(strstr(b.p, want[i]) != NULL, "missing %s in\n%s", want[i], b.p);
  ck_assert_msg(strstr(b.p, "gone") == NULL, "a server not in the config: %s", b.p);
  /* routes from the file come first, in file order */
  ck_assert(strstr(b.p, "\"route\":\"web\"") < strstr(b.p, "\"route\":\"quiet\""));
  ck_assert(strstr(b.p, "\"route\":\"#2\"") < strstr(b.p, "\"route\":\"ws\""));
  sy_buf_free(&b);

  /* a failed reload shows with its message; the ring keeps the last 300 */
  st.last_reload_time = 2000;
  st.last_reload_ok = 0;
  snprintf(st.last_reload_error, sizeof(st.last_reload_error), "t.yaml:1:1: bad \"x\"");
  for (int i = 0; i < 400; i++)
    sy_status_record(h, "", 0);
  b = (sy_buf){0};
  sy_status_json(&b, &st, h, "", 0);
  sy_buf_append(&b, "", 1);
  ck_assert_msg(strstr(b.p, "\"last_reload\":{\"time\":2000,\"ok\":false,"
                            "\"error\":\"t.yaml:1:1: bad \\\"x\\\"\"}") != NULL,
                "%s", b.p);
  const char *t = strstr(b.p, "\"tunnels_open\":[");
  ck_assert_ptr_nonnull(t);
  int n = 0;
  for (t += 16; *t != ']'; t++)
    n += *t == '0';
  ck_assert_int_eq(n, SY_STATUS_HISTORY);
  sy_buf_free(&b);
  free(h);
  sy_config_unref(cfg);
}
END_TEST

START_TEST(test_page_is_self_contained) {
  size_t n;
  const char *p = sy_status_page(&n);
  ck_assert_uint_eq(strlen(p), n);
  ck_assert_ptr_null(strstr(p, "src="));   /* no external script or image */
  ck_assert_ptr_null(strstr(p, "://cdn")); /* nothing from elsewhere */
  ck_assert_ptr_null(strstr(p, "innerHTML=s"));
  ck_assert_ptr_nonnull(strstr(p, "id=\"tunnels_open\""));
}
END_TEST

static Suite *status_suite(void) {
  Suite *s = suite_create("status");
  TCase *tc = tcase_create("status");
  tcase_add_test(tc, test_scrape_and_labels);
  tcase_add_test(tc, test_json_tables_and_history);
  tcase_add_test(tc, test_page_is_self_contained);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(status_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
