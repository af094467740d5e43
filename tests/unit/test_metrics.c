/* Metrics: the family registry, label values (UTF-8, escapes, cuts), the
 * bounded table and its drop counter, histograms, and the exposition text
 * (checked with promtool when it is installed). */
#include "switchyard/metrics.h"

#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The rendered label text (without the trailing NUL). */
static char *label(const char *value, size_t len) {
  static char out[4096];
  sy_buf b = {0};
  sy_metrics_label(&b, "l", value, len);
  ck_assert_uint_lt(b.len, sizeof(out));
  memcpy(out, b.p, b.len);
  out[b.len] = 0;
  sy_buf_free(&b);
  return out;
}

/* Strict UTF-8 check (no overlongs, surrogates or code points past U+10FFFF). */
static int valid_utf8(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    unsigned char c = p[i];
    size_t len = c < 0x80                 ? 1
                 : c >= 0xC2 && c <= 0xDF ? 2
                 : c >= 0xE0 && c <= 0xEF ? 3
                 : c >= 0xF0 && c <= 0xF4 ? 4
                                          : 0;
    if (!len || i + len > n) return 0;
    for (size_t k = 1; k < len; k++)
      if ((p[i + k] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && p[i + 1] < 0xA0) return 0;
    if (c == 0xED && p[i + 1] > 0x9F) return 0;
    if (c == 0xF0 && p[i + 1] < 0x90) return 0;
    if (c == 0xF4 && p[i + 1] > 0x8F) return 0;
    i += len;
  }
  return 1;
}

START_TEST(test_registry_sorted_complete_and_well_named) {
  size_t n;
  const sy_metric_family *f = sy_metrics_families(&n);
  ck_assert_uint_ge(n, 30);
  for (size_t i = 0; i < n; i++) {
    if (i)
      ck_assert_msg(strcmp(f[i - 1].name, f[i].name) < 0, "%s before %s", f[i - 1].name, f[i].name);
    ck_assert_ptr_eq(sy_metrics_family(f[i].name), &f[i]);
    ck_assert_msg(strncmp(f[i].name, "switchyard_", 11) == 0, "%s", f[i].name);
    ck_assert_msg(f[i].help && strlen(f[i].help) > 10 && !strchr(f[i].help, '\n') &&
                      !strchr(f[i].help, '\\'),
                  "%s: help", f[i].name);
    size_t len = strlen(f[i].name);
    int total = len > 6 && strcmp(f[i].name + len - 6, "_total") == 0;
    ck_assert_msg(total == (f[i].type == SY_METRIC_COUNTER), "%s: _total iff counter", f[i].name);
    if (f[i].type == SY_METRIC_HISTOGRAM) {
      ck_assert_msg(strcmp(f[i].name + len - 8, "_seconds") == 0, "%s: base unit", f[i].name);
      const sy_metric_buckets *b = f[i].buckets;
      ck_assert_ptr_nonnull(b);
      ck_assert(b->n > 5 && b->n <= SY_HIST_MAX_BUCKETS);
      for (size_t k = 0; k < b->n; k++) {
        if (k) ck_assert_uint_lt(b->ns[k - 1], b->ns[k]);
        /* the rendered bound is the same number of seconds */
        ck_assert_uint_eq((uint64_t)(strtod(b->le[k], NULL) * 1e9 + 0.5), b->ns[k]);
      }
    } else {
      ck_assert_ptr_null(f[i].buckets);
    }
  }
  ck_assert_ptr_null(sy_metrics_family("switchyard_nope"));
  ck_assert_ptr_null(sy_metrics_family("switchyard_requests_tota"));
  ck_assert_ptr_null(sy_metrics_family("switchyard_requests_total_x"));
  /* the families the brief fixes */
  static const char *const fixed[] = {"switchyard_request_duration_seconds",
                                      "switchyard_upstream_connect_seconds",
                                      "switchyard_upstream_first_byte_seconds",
                                      "switchyard_upgrade_duration_seconds",
                                      "switchyard_tunnel_duration_seconds",
                                      "switchyard_upstream_requests_total",
                                      "switchyard_upstream_connect_failures_total",
                                      "switchyard_upstream_retries_total",
                                      "switchyard_upstream_ejections_total",
                                      "switchyard_metrics_series_dropped_total",
                                      "switchyard_build_info",
                                      "switchyard_open_fds",
                                      "switchyard_max_fds",
                                      "switchyard_start_time_seconds",
                                      "switchyard_config_last_reload_success_timestamp_seconds",
                                      "switchyard_tunnel_bytes_total"};
  for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
    ck_assert_msg(sy_metrics_family(fixed[i]) != NULL, "%s", fixed[i]);
  ck_assert_int_eq(sy_metrics_family("switchyard_tunnel_duration_seconds")->type,
                   SY_METRIC_HISTOGRAM);
}
END_TEST

/* Every family the proxy can emit is documented in docs/OPERATIONS.md. */
START_TEST(test_every_family_is_documented) {
  const char *src = getenv("SY_SOURCE_DIR");
  ck_assert_msg(src != NULL, "SY_SOURCE_DIR is not set (ctest sets it)");
  char path[4096];
  snprintf(path, sizeof(path), "%s/docs/OPERATIONS.md", src);
  FILE *fp = fopen(path, "rb");
  ck_assert_msg(fp != NULL, "%s", path);
  static char doc[1 << 20];
  size_t len = fread(doc, 1, sizeof(doc) - 1, fp);
  fclose(fp);
  doc[len] = 0;
  size_t n;
  const sy_metric_family *f = sy_metrics_families(&n);
  for (size_t i = 0; i < n; i++) {
    char want[256];
    snprintf(want, sizeof(want), "`%s`", f[i].name); /* as a table cell writes it */
    ck_assert_msg(strstr(doc, want) != NULL, "%s is not documented in docs/OPERATIONS.md",
                  f[i].name);
  }
}
END_TEST

/* Every metric name the sources spell out ("switchyard_..." in a string) is
 * in the registry, so a family added to the code without its help text fails
 * here, not at the scrape. Walks src/ (subdirectories too). */
static int scan_dir(const char *dir, char *missing, size_t cap) {
  int files = 0;
  DIR *d = opendir(dir);
  ck_assert_msg(d != NULL, "%s", dir);
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    struct stat st;
    if (stat(path, &st) < 0) continue;
    if (S_ISDIR(st.st_mode)) {
      files += scan_dir(path, missing, cap);
      continue;
    }
    size_t n = strlen(e->d_name);
    if (n < 3 || strcmp(e->d_name + n - 2, ".c") != 0) continue;
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    static char text[1 << 20];
    size_t len = fread(text, 1, sizeof(text) - 1, fp);
    fclose(fp);
    text[len] = 0;
    files++;
    for (char *p = text; (p = strstr(p, "\"switchyard_"));) {
      p++;
      char name[128];
      size_t k = 0;
      while (k + 1 < sizeof(name) &&
             ((p[k] >= 'a' && p[k] <= 'z') || (p[k] >= '0' && p[k] <= '9') || p[k] == '_'))
        name[k] = p[k], k++;
      name[k] = 0;
      p += k;
      /* A histogram's series (_bucket, _sum, _count) belong to its family. */
      char family[128];
      snprintf(family, sizeof(family), "%s", name);
      static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
      for (size_t i = 0; i < 3; i++) {
        size_t fl = strlen(family), sl = strlen(suffixes[i]);
        if (fl > sl && strcmp(family + fl - sl, suffixes[i]) == 0) {
          family[fl - sl] = 0;
          if (!sy_metrics_family(family)) snprintf(family, sizeof(family), "%s", name);
          break;
        }
      }
      if (!sy_metrics_family(family) && strlen(missing) + k + 3 < cap) {
        strcat(missing, " ");
        strcat(missing, name);
      }
    }
  }
  closedir(d);
  return files;
}

START_TEST(test_every_name_in_the_sources_is_registered) {
  const char *src = getenv("SY_SOURCE_DIR");
  ck_assert_msg(src != NULL, "SY_SOURCE_DIR is not set (ctest sets it)");
  char dir[4096], missing[4096] = "";
  snprintf(dir, sizeof(dir), "%s/src", src);
  ck_assert_int_ge(scan_dir(dir, missing, sizeof(missing)), 10);
  ck_assert_msg(missing[0] == 0, "metric names used in src/ but not registered:%s", missing);
}
END_TEST

START_TEST(test_label_escapes_and_keeps_utf8) {
  ck_assert_str_eq(label("plain", 5), "l=\"plain\"");
  ck_assert_str_eq(label("a\"b", 3), "l=\"a\\\"b\"");
  ck_assert_str_eq(label("a\\b", 3), "l=\"a\\\\b\"");
  ck_assert_str_eq(label("a\nb", 3), "l=\"a\\nb\"");
  ck_assert_str_eq(label("\"\\\n", 3), "l=\"\\\"\\\\\\n\"");
  ck_assert_str_eq(label("tab\there", 8), "l=\"tab\there\"");
  ck_assert_str_eq(label("", 0), "l=\"\"");
  /* valid UTF-8 is kept as it is: é, €, 😀 */
  ck_assert_str_eq(label("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14),
                   "l=\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  /* a comma between labels, none before the first */
  sy_buf b = {0};
  sy_metrics_label(&b, "a", "1", 1);
  sy_metrics_label(&b, "b", "2", 1);
  ck_assert_int_eq((int)b.len, 11);
  ck_assert(memcmp(b.p, "a=\"1\",b=\"2\"", 11) == 0);
  sy_buf_free(&b);
}
END_TEST

START_TEST(test_label_replaces_invalid_bytes) {
  ck_assert_str_eq(label("\xff", 1), "l=\"\xef\xbf\xbd\"");
  ck_assert_str_eq(label("a\xffz", 3), "l=\"a\xef\xbf\xbdz\"");
  /* a multi-byte character cut short (the 31-byte cut of a token did this) */
  ck_assert_str_eq(label("ab\xc3", 3), "l=\"ab\xef\xbf\xbd\"");
  ck_assert_str_eq(label("\xe2\x82", 2), "l=\"\xef\xbf\xbd\xef\xbf\xbd\"");
  /* a continuation byte alone, an overlong '/', a surrogate, past U+10FFFF */
  ck_assert_str_eq(label("\x80", 1), "l=\"\xef\xbf\xbd\"");
  ck_assert_str_eq(label("\xc0\xaf", 2), "l=\"\xef\xbf\xbd\xef\xbf\xbd\"");
  ck_assert(valid_utf8(label("\xed\xa0\x80", 3), strlen(label("\xed\xa0\x80", 3))));
  ck_assert(strstr(label("\xed\xa0\x80", 3), "\xed\xa0") == NULL);
  ck_assert(strstr(label("\xf4\x90\x80\x80", 4), "\xf4\x90") == NULL);
  /* NUL would end the series key early */
  ck_assert_str_eq(label("a\0b", 3), "l=\"a\xef\xbf\xbd"
                                     "b\"");
  /* every byte value, in every position: always valid UTF-8, quotes balanced */
  for (int c = 0; c < 256; c++)
    for (int pos = 0; pos < 3; pos++) {
      char v[4] = "xyz";
      v[pos] = (char)c;
      char *out = label(v, 3);
      size_t n = strlen(out);
      ck_assert_msg(valid_utf8(out, n), "byte %#x at %d", c, pos);
      ck_assert(out[n - 1] == '"' && !strchr(out, '\n'));
    }
}
END_TEST

START_TEST(test_label_cut_on_character_boundary) {
  char v[SY_METRIC_VALUE_MAX + 8];
  memset(v, 'a', sizeof(v));
  /* 255 ASCII bytes then é (2 bytes): é does not fit, and is not split */
  memcpy(v + SY_METRIC_VALUE_MAX - 1, "\xc3\xa9", 2);
  char *out = label(v, SY_METRIC_VALUE_MAX + 1);
  ck_assert_uint_eq(strlen(out), 4 + SY_METRIC_VALUE_MAX - 1);
  ck_assert(valid_utf8(out, strlen(out)));
  /* exactly the limit: kept whole */
  memset(v, 'b', sizeof(v));
  out = label(v, SY_METRIC_VALUE_MAX);
  ck_assert_uint_eq(strlen(out), 4 + SY_METRIC_VALUE_MAX);
  /* escapes count as the character they stand for */
  memset(v, '"', sizeof(v));
  out = label(v, sizeof(v));
  ck_assert_uint_eq(strlen(out), 4 + 2 * SY_METRIC_VALUE_MAX);

  ck_assert_uint_eq(sy_utf8_cut("abc", 3, 10), 3);
  ck_assert_uint_eq(sy_utf8_cut("abcdef", 6, 4), 4);
  ck_assert_uint_eq(sy_utf8_cut("a\xc3\xa9", 3, 2), 1);     /* é would be split */
  ck_assert_uint_eq(sy_utf8_cut("a\xe2\x82\xac", 4, 3), 1); /* € */
  ck_assert_uint_eq(sy_utf8_cut("a\xe2\x82\xac", 4, 2), 1);
  ck_assert_uint_eq(sy_utf8_cut("a\xf0\x9f\x98\x80z", 6, 4), 1); /* 😀 */
  ck_assert_uint_eq(sy_utf8_cut("a\xf0\x9f\x98\x80z", 6, 5), 5);
}
END_TEST

static int64_t get1(sy_metrics *m, const char *name, const char *labels) {
  return sy_metrics_get(&m, 1, name, labels);
}

START_TEST(test_table_full_counts_drops_and_keeps_old_series) {
  sy_metrics *m = sy_metrics_new(300);
  ck_assert_ptr_nonnull(m);
  size_t cap = sy_metrics_size(m);
  ck_assert_uint_ge(cap, 300);
  char l[64];
  /* stderr to a file, to count the log lines */
  char path[] = "/tmp/sy-metrics-log-XXXXXX";
  int fd = mkstemp(path), saved = dup(2);
  ck_assert(fd >= 0 && saved >= 0);
  ck_assert_int_eq(dup2(fd, 2), 2);
  for (int i = 0; i < 3000; i++) {
    snprintf(l, sizeof(l), "protocol=\"made-up-%d\"", i);
    sy_metrics_add(m, "switchyard_upgrades_total", l, 1);
  }
  ck_assert_int_eq(dup2(saved, 2), 2);
  close(saved);
  char log[8192];
  ssize_t n = pread(fd, log, sizeof(log) - 1, 0);
  close(fd);
  unlink(path);
  ck_assert_int_gt(n, 0);
  log[n] = 0;
  /* said, but not once per drop: at most one line a second */
  int lines = 0;
  for (char *p = log; (p = strstr(p, "metrics: table full")); p++)
    lines++;
  ck_assert_int_ge(lines, 1);
  ck_assert_int_le(lines, 2);
  ck_assert(strstr(log, "switchyard_upgrades_total{protocol=\"made-up-") != NULL);
  ck_assert_int_eq(sy_metrics_dropped(&m, 1), 3000 - (int64_t)cap);
  /* series that made it still count; a full table refuses only new ones */
  sy_metrics_add(m, "switchyard_upgrades_total", "protocol=\"made-up-0\"", 5);
  ck_assert_int_eq(get1(m, "switchyard_upgrades_total", "protocol=\"made-up-0\""), 6);
  int64_t *cell = NULL;
  sy_metrics_add_cell(m, &cell, "switchyard_connections_open", NULL, 1);
  ck_assert_ptr_null(cell);
  ck_assert_ptr_null(sy_metrics_hist(m, "switchyard_request_duration_seconds", "route=\"r\""));
  ck_assert_int_eq(sy_metrics_dropped(&m, 1), 3000 - (int64_t)cap + 2);
  sy_buf out = {0};
  sy_metrics_render(&m, 1, &out);
  sy_buf_append(&out, "", 1);
  char want[128];
  snprintf(want, sizeof(want), "\nswitchyard_metrics_series_dropped_total %lld\n",
           (long long)(3000 - cap + 2));
  ck_assert_msg(strstr(out.p, want) != NULL, "%s", want);
  sy_buf_free(&out);
  sy_metrics_free(m);
}
END_TEST

/* A table sized by sy_metrics_capacity holds every label set a
 * configuration can produce, twice over (a reload's worth). */
START_TEST(test_capacity_fits_every_label_set_of_the_config) {
  sy_config cfg;
  memset(&cfg, 0, sizeof(cfg));
  sy_route_cfg routes[12];
  memset(routes, 0, sizeof(routes));
  char *tokens[] = {"websocket", "h2c", "connect-udp"};
  for (int i = 0; i < 12; i++) {
    routes[i].allow_any_upgrade = i % 2;
    routes[i].allow_upgrades = tokens;
    routes[i].nallow_upgrades = i % 2 ? 0 : 3;
  }
  sy_server_cfg servers[5];
  memset(servers, 0, sizeof(servers));
  sy_upstream_cfg ups[3];
  memset(ups, 0, sizeof(ups));
  for (int u = 0; u < 3; u++) {
    ups[u].servers = servers;
    ups[u].nservers = 5;
  }
  cfg.routes = routes;
  cfg.nroutes = 12;
  cfg.upstreams = ups;
  cfg.nupstreams = 3;
  size_t cap = sy_metrics_capacity(&cfg);
  sy_metrics *m = sy_metrics_new(cap);
  static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"};
  static const char *const outcomes[] = {"switched", "refused", "rejected"};
  static const char *const protos[] = {"websocket", "h2c", "connect-udp", "other"};
  char l[256];
  for (int pass = 0; pass < 2; pass++) /* the second: a reload renamed everything */
    for (int r = 0; r < 13; r++) {     /* 12 routes and "no route" */
      for (int c = 0; c < 6; c++) {
        snprintf(l, sizeof(l), "route=\"r%d-%d\",class=\"%s\"", pass, r, classes[c]);
        sy_metrics_add(m, "switchyard_requests_total", l, 1);
      }
      for (int p = 0; p < 4; p++) {
        for (int o = 0; o < 3; o++) {
          snprintf(l, sizeof(l), "route=\"r%d-%d\",protocol=\"%s\",outcome=\"%s\"", pass, r,
                   protos[p], outcomes[o]);
          sy_metrics_add(m, "switchyard_upgrades_total", l, 1);
        }
        snprintf(l, sizeof(l), "route=\"r%d-%d\",protocol=\"%s\"", pass, r, protos[p]);
        sy_metrics_add(m, "switchyard_tunnels_open", l, 1);
        sy_metrics_add(m, "switchyard_tunnels_total", l, 1);
      }
      for (int d = 0; d < 2; d++) {
        snprintf(l, sizeof(l), "route=\"r%d-%d\",direction=\"%s\"", pass, r,
                 d ? "to_client" : "to_upstream");
        sy_metrics_add(m, "switchyard_tunnel_bytes_total", l, 1);
      }
      snprintf(l, sizeof(l), "route=\"r%d-%d\"", pass, r);
      sy_metrics_observe(sy_metrics_hist(m, "switchyard_request_duration_seconds", l), 1);
      sy_metrics_observe(sy_metrics_hist(m, "switchyard_upgrade_duration_seconds", l), 1);
      sy_metrics_observe(sy_metrics_hist(m, "switchyard_tunnel_duration_seconds", l), 1);
    }
  for (int pass = 0; pass < 2; pass++)
    for (int u = 0; u < 3; u++) {
      snprintf(l, sizeof(l), "upstream=\"u%d-%d\"", pass, u);
      sy_metrics_observe(sy_metrics_hist(m, "switchyard_upstream_connect_seconds", l), 1);
      sy_metrics_observe(sy_metrics_hist(m, "switchyard_upstream_first_byte_seconds", l), 1);
      for (int s = 0; s < 5; s++) {
        for (int c = 0; c < 6; c++) {
          snprintf(l, sizeof(l), "upstream=\"u%d-%d\",server=\"s%d\",class=\"%s\"", pass, u, s,
                   classes[c]);
          sy_metrics_add(m, "switchyard_upstream_requests_total", l, 1);
        }
        snprintf(l, sizeof(l), "upstream=\"u%d-%d\",server=\"s%d\"", pass, u, s);
        sy_metrics_add(m, "switchyard_upstream_connect_failures_total", l, 1);
        sy_metrics_add(m, "switchyard_upstream_retries_total", l, 1);
      }
    }
  ck_assert_int_eq(sy_metrics_dropped(&m, 1), 0);
  sy_metrics_free(m);
}
END_TEST

static const char *render(sy_metrics **ms, size_t n) {
  static char text[1 << 16];
  sy_buf out = {0};
  sy_metrics_render(ms, n, &out);
  ck_assert_uint_lt(out.len, sizeof(text));
  memcpy(text, out.p, out.len);
  text[out.len] = 0;
  sy_buf_free(&out);
  return text;
}

START_TEST(test_histogram_buckets_sum_count_over_tables) {
  sy_metrics *ms[2] = {sy_metrics_new(0), sy_metrics_new(0)};
  const char *name = "switchyard_request_duration_seconds";
  sy_hist *a = sy_metrics_hist(ms[0], name, "route=\"r\"");
  sy_hist *again = sy_metrics_hist(ms[0], name, "route=\"r\"");
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_eq(a, again);
  sy_hist *cell = NULL;
  sy_metrics_observe(a, 50000);        /* 50 us: the first bucket */
  sy_metrics_observe(a, 100000);       /* exactly 0.0001: le is inclusive */
  sy_metrics_observe(a, 3000000);      /* 3 ms: le 0.005 */
  sy_metrics_observe(a, 120000000000); /* 2 min: +Inf only */
  sy_metrics_observe_cell(ms[1], &cell, name, "route=\"r\"", 700000000); /* 0.7 s: le 1 */
  ck_assert_ptr_nonnull(cell);
  sy_metrics_observe_cell(ms[1], &cell, name, "route=\"r\"", 700000000);
  sy_metrics_observe(NULL, 1); /* a dropped series: no-op */
  /* not a histogram, or not registered: no series */
  ck_assert_ptr_null(sy_metrics_hist(ms[0], "switchyard_requests_total", NULL));
  ck_assert_ptr_null(sy_metrics_hist(ms[0], "switchyard_nope_seconds", NULL));
  /* counters and histograms do not mix under one name */
  sy_metrics_add(ms[0], name, "route=\"r\"", 1);
  ck_assert_int_eq(sy_metrics_get(ms, 2, name, "route=\"r\""), 6);

  const char *t = render(ms, 2);
  ck_assert(strstr(t, "# HELP switchyard_request_duration_seconds ") != NULL);
  ck_assert(strstr(t, "# TYPE switchyard_request_duration_seconds histogram\n") != NULL);
  static const char *const lines[] = {
      "switchyard_request_duration_seconds_bucket{route=\"r\",le=\"0.0001\"} 2\n",
      "switchyard_request_duration_seconds_bucket{route=\"r\",le=\"0.0025\"} 2\n",
      "switchyard_request_duration_seconds_bucket{route=\"r\",le=\"0.005\"} 3\n",
      "switchyard_request_duration_seconds_bucket{route=\"r\",le=\"0.5\"} 3\n",
      "switchyard_request_duration_seconds_bucket{route=\"r\",le=\"1\"} 5\n",
      "switchyard_request_duration_seconds_bucket{route=\"r\",le=\"60\"} 5\n",
      "switchyard_request_duration_seconds_bucket{route=\"r\",le=\"+Inf\"} 6\n",
      "switchyard_request_duration_seconds_sum{route=\"r\"} 121.403150\n",
      "switchyard_request_duration_seconds_count{route=\"r\"} 6\n"};
  for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
    ck_assert_msg(strstr(t, lines[i]) != NULL, "missing %s in\n%s", lines[i], t);
  /* one family header, one set of buckets: the two tables were summed */
  ck_assert_ptr_null(strstr(strstr(t, "# TYPE switchyard_request_duration") + 1,
                            "# TYPE switchyard_request_duration"));
  ck_assert_ptr_null(strstr(strstr(t, "le=\"+Inf\"") + 1, "le=\"+Inf\""));
  /* tunnel lifetimes go up to a day */
  sy_metrics_observe(sy_metrics_hist(ms[0], "switchyard_tunnel_duration_seconds", ""),
                     2 * 3600 * 1000000000ull);
  t = render(ms, 2);
  ck_assert(strstr(t, "switchyard_tunnel_duration_seconds_bucket{le=\"3600\"} 0\n") != NULL);
  ck_assert(strstr(t, "switchyard_tunnel_duration_seconds_bucket{le=\"7200\"} 1\n") != NULL);
  ck_assert(strstr(t, "switchyard_tunnel_duration_seconds_sum 7200.000000\n") != NULL);
  sy_metrics_free(ms[0]);
  sy_metrics_free(ms[1]);
}
END_TEST

START_TEST(test_render_help_type_once_and_sums) {
  sy_metrics *ms[2] = {sy_metrics_new(0), sy_metrics_new(0)};
  sy_metrics_add(ms[0], "switchyard_requests_total", "route=\"a\",class=\"2xx\"", 2);
  sy_metrics_add(ms[1], "switchyard_requests_total", "route=\"a\",class=\"2xx\"", 3);
  sy_metrics_add(ms[1], "switchyard_requests_total", "route=\"b\",class=\"5xx\"", 1);
  sy_metrics_add(ms[0], "switchyard_connections_open", NULL, 4);
  sy_metrics_add(ms[0], "switchyard_unregistered_thing", NULL, 1);
  const char *t = render(ms, 2);
  ck_assert(strstr(t, "# HELP switchyard_requests_total Responses completed") != NULL);
  ck_assert(strstr(t, "# TYPE switchyard_requests_total counter\n"
                      "switchyard_requests_total{route=\"a\",class=\"2xx\"} 5\n"
                      "switchyard_requests_total{route=\"b\",class=\"5xx\"} 1\n") != NULL);
  ck_assert(strstr(t, "# TYPE switchyard_connections_open gauge\nswitchyard_connections_open 4\n"));
  ck_assert(strstr(t, "# TYPE switchyard_metrics_series_dropped_total counter\n"
                      "switchyard_metrics_series_dropped_total 0\n"));
  /* still valid text, marked so the registry tests can see it */
  ck_assert(strstr(t, "# HELP switchyard_unregistered_thing Switchyard metric (not in the "
                      "registry).\n# TYPE switchyard_unregistered_thing gauge\n"));
  ck_assert_ptr_null(strstr(strstr(t, "# TYPE switchyard_requests_total") + 1,
                            "# TYPE switchyard_requests_total"));
  sy_metrics_free(ms[0]);
  sy_metrics_free(ms[1]);
}
END_TEST

/* promtool (Debian package prometheus, installed by setup.sh --tests) on a
 * rendering full of hostile label values and histograms. */
START_TEST(test_promtool_accepts_rendering) {
  if (system("command -v promtool >/dev/null 2>&1") != 0) {
    printf("promtool not installed (scripts/setup.sh --tests): check skipped\n");
    return;
  }
  sy_metrics *m = sy_metrics_new(0);
  static const char *const nasty[] = {"\xff",      "ab\xc3",      "q\"uote",      "back\\slash",
                                      "new\nline", "caf\xc3\xa9", "\xed\xa0\x80", ""};
  for (size_t i = 0; i < sizeof(nasty) / sizeof(nasty[0]); i++) {
    sy_buf l = {0};
    sy_metrics_label(&l, "route", nasty[i], strlen(nasty[i]));
    sy_metrics_label(&l, "class", "2xx", 3);
    sy_buf_append(&l, "", 1);
    sy_metrics_add(m, "switchyard_requests_total", l.p, 1);
    l.len = 0;
    sy_metrics_label(&l, "route", nasty[i], strlen(nasty[i]));
    sy_buf_append(&l, "", 1);
    sy_metrics_observe(sy_metrics_hist(m, "switchyard_request_duration_seconds", l.p), 1234567);
    sy_metrics_observe(sy_metrics_hist(m, "switchyard_tunnel_duration_seconds", l.p), 1234567);
    sy_buf_free(&l);
  }
  sy_metrics_add(m, "switchyard_connections_open", NULL, 1);
  sy_buf out = {0};
  sy_metrics_render(&m, 1, &out);
  sy_metrics_header(&out, "switchyard_build_info");
  sy_buf_appendf(&out, "switchyard_build_info{version=\"0.1.0\"} 1\n");
  ck_assert(valid_utf8(out.p, out.len));
  char path[] = "/tmp/sy-metrics-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq((int)write(fd, out.p, out.len), (int)out.len);
  close(fd);
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
  int rc = system(cmd);
  unlink(path);
  ck_assert_msg(rc == 0, "promtool check metrics failed on:\n%.*s", (int)out.len, out.p);
  sy_buf_free(&out);
  sy_metrics_free(m);
}
END_TEST

START_TEST(test_cache_names_label_sets_by_number) {
  sy_metrics *m = sy_metrics_new(0);
  uint64_t k1 = sy_metrics_key(7, 1, 3, 0, 2), k2 = sy_metrics_key(7, 1, 3, 0, 3);
  uint64_t k3 = sy_metrics_key(8, 1, 3, 0, 2);
  ck_assert(k1 && k2 && k3 && k1 != k2 && k1 != k3 && k2 != k3);
  /* what does not fit is never cached */
  ck_assert_uint_eq(sy_metrics_key(7, 256, 0, 0, 0), 0);
  ck_assert_uint_eq(sy_metrics_key(7, 1, 4096, 0, 0), 0);
  ck_assert_uint_eq(sy_metrics_key(7, 1, 0, 4096, 0), 0);
  ck_assert_uint_eq(sy_metrics_key(7, 1, 0, 0, 256), 0);
  ck_assert_uint_eq(sy_metrics_key(0, 1, 0, 0, 0), 0);
  ck_assert_ptr_null(sy_metrics_cache_get(m, 0));
  ck_assert_ptr_null(sy_metrics_cache_get(m, k1));
  int64_t *c = NULL;
  sy_metrics_add_cell(m, &c, "switchyard_requests_total", "route=\"a\",class=\"2xx\"", 0);
  sy_metrics_cache_put(m, k1, c);
  sy_metrics_cache_put(m, 0, c);
  ck_assert_ptr_eq(sy_metrics_cache_get(m, k1), c);
  ck_assert_ptr_null(sy_metrics_cache_get(m, k2));
  ck_assert_ptr_null(sy_metrics_cache_get(m, k3));
  ck_assert_ptr_null(sy_metrics_cache_get(m, 0));
  /* many keys: each hit is the cell put under that very key (collisions evict) */
  static int64_t cells[5000];
  for (unsigned i = 0; i < 5000; i++)
    sy_metrics_cache_put(m, sy_metrics_key(9, 2, i % 4096, i / 4096, 0), &cells[i]);
  unsigned hits = 0;
  for (unsigned i = 0; i < 5000; i++) {
    int64_t *got = sy_metrics_cache_get(m, sy_metrics_key(9, 2, i % 4096, i / 4096, 0));
    if (got) {
      ck_assert_ptr_eq(got, &cells[i]);
      hits++;
    }
  }
  ck_assert_uint_gt(hits, 500);
  sy_metrics_free(m);
}
END_TEST

static Suite *metrics_suite(void) {
  Suite *s = suite_create("metrics");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_registry_sorted_complete_and_well_named);
  tcase_add_test(tc, test_every_family_is_documented);
  tcase_add_test(tc, test_every_name_in_the_sources_is_registered);
  tcase_add_test(tc, test_label_escapes_and_keeps_utf8);
  tcase_add_test(tc, test_label_replaces_invalid_bytes);
  tcase_add_test(tc, test_label_cut_on_character_boundary);
  tcase_add_test(tc, test_table_full_counts_drops_and_keeps_old_series);
  tcase_add_test(tc, test_capacity_fits_every_label_set_of_the_config);
  tcase_add_test(tc, test_histogram_buckets_sum_count_over_tables);
  tcase_add_test(tc, test_render_help_type_once_and_sums);
  tcase_add_test(tc, test_promtool_accepts_rendering);
  tcase_add_test(tc, test_cache_names_label_sets_by_number);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(metrics_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
