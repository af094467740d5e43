#include "switchyard/status.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/log.h"
#include "switchyard/metrics.h"
#include "switchyard/upstream.h"

/* ---- reading Prometheus text --------------------------------------------------- */

void sy_status_scrape(const char *text, size_t len, sy_status_sample_fn fn, void *arg) {
  const char *p = text, *end = text + len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    const char *q = p;
    while (q < eol && *q != '{' && *q != ' ')
      q++;
    const char *name = p, *labels = "", *lend;
    size_t nlen = (size_t)(q - p), llen = 0;
    if (*p != '#' && nlen && q < eol) {
      if (*q == '{') {
        /* the closing brace is the first one outside a quoted value */
        labels = q + 1;
        int quoted = 0;
        for (lend = labels; lend < eol; lend++) {
          if (quoted && *lend == '\\') {
            lend++;
          } else if (*lend == '"') {
            quoted = !quoted;
          } else if (!quoted && *lend == '}') {
            break;
          }
        }
        llen = (size_t)(lend - labels);
        q = lend + 1;
      }
      if (q < eol && *q == ' ') {
        char num[64];
        size_t vn = (size_t)(eol - q - 1);
        if (vn && vn < sizeof(num)) {
          memcpy(num, q + 1, vn);
          num[vn] = 0;
          char *e;
          double v = strtod(num, &e);
          if (e != num && (*e == 0 || *e == ' ')) fn(name, nlen, labels, llen, v, arg);
        }
      }
    }
    p = eol + 1;
  }
}

int sy_status_label(const char *labels, size_t llen, const char *key, char *out, size_t cap) {
  size_t kl = strlen(key), i = 0;
  while (i < llen) {
    size_t k0 = i;
    while (i < llen && labels[i] != '=')
      i++;
    int match = i - k0 == kl && memcmp(labels + k0, key, kl) == 0;
    if (i + 1 >= llen || labels[i + 1] != '"') return -1;
    i += 2;
    size_t n = 0;
    for (; i < llen && labels[i] != '"'; i++) {
      char c = labels[i];
      if (c == '\\' && i + 1 < llen) c = labels[++i] == 'n' ? '\n' : labels[i];
      if (match && n + 1 < cap) out[n++] = c;
    }
    if (match) {
      out[n] = 0;
      return (int)n;
    }
    i += 2; /* the closing quote and the comma */
  }
  return -1;
}

static int is(const char *name, size_t nlen, const char *lit) {
  return strlen(lit) == nlen && memcmp(name, lit, nlen) == 0;
}

static int label_is(const char *labels, size_t llen, const char *key, const char *want) {
  char v[64];
  return sy_status_label(labels, llen, key, v, sizeof(v)) >= 0 && strcmp(v, want) == 0;
}

/* ---- the ring of samples ------------------------------------------------------- */

static void sum_sample(const char *name, size_t nlen, const char *labels, size_t llen, double v,
                       void *arg) {
  sy_status_sample *s = arg;
  if (is(name, nlen, "switchyard_requests_total")) {
    s->requests += v;
    if (label_is(labels, llen, "class", "5xx")) s->errors += v;
  } else if (is(name, nlen, "switchyard_tunnels_open")) {
    s->tunnels_open += v;
  } else if (is(name, nlen, "switchyard_tunnel_bytes_total")) {
    s->tunnel_bytes += v;
  } else if (is(name, nlen, "switchyard_connections_open")) {
    s->connections_open += v;
  }
}

void sy_status_record(sy_status_history *h, const char *text, size_t len) {
  sy_status_sample s = {0};
  sy_status_scrape(text, len, sum_sample, &s);
  h->ring[h->next] = s;
  h->next = (h->next + 1) % SY_STATUS_HISTORY;
  if (h->n < SY_STATUS_HISTORY) h->n++;
}

static const sy_status_sample *nth(const sy_status_history *h, size_t i) {
  return &h->ring[(h->next + SY_STATUS_HISTORY - h->n + i) % SY_STATUS_HISTORY];
}

/* Counters become per-second rates between samples; a counter that went
 * down (series of a reloaded-away route dropping out) counts as 0. */
static void history_json(sy_buf *b, const sy_status_history *h) {
  static const struct {
    const char *key;
    size_t off;
    int rate;
  } series[] = {
      {"requests_per_s", offsetof(sy_status_sample, requests), 1},
      {"errors_per_s", offsetof(sy_status_sample, errors), 1},
      {"tunnel_bytes_per_s", offsetof(sy_status_sample, tunnel_bytes), 1},
      {"tunnels_open", offsetof(sy_status_sample, tunnels_open), 0},
      {"connections_open", offsetof(sy_status_sample, connections_open), 0},
  };
  sy_buf_appendf(b, "\"history\":{\"interval_s\":1");
  for (size_t k = 0; k < sizeof(series) / sizeof(series[0]); k++) {
    sy_buf_appendf(b, ",\"%s\":[", series[k].key);
    for (size_t i = series[k].rate; i < h->n; i++) {
      double v = *(const double *)(const void *)((const char *)nth(h, i) + series[k].off);
      if (series[k].rate) {
        double prev = *(const double *)(const void *)((const char *)nth(h, i - 1) + series[k].off);
        v = v > prev ? v - prev : 0;
      }
      sy_buf_appendf(b, "%s%.0f", i > (size_t)series[k].rate ? "," : "", v);
    }
    sy_buf_append(b, "]", 1);
  }
  sy_buf_append(b, "}", 1);
}

/* ---- tables ------------------------------------------------------------------------ */

#define SY_KEY (SY_METRIC_VALUE_MAX + 8) /* a whole label value, as /metrics prints it */
#define SY_BUCKETS 64

enum { F_REQ, F_ERR, F_DSUM, F_DCOUNT, F_TOPEN, F_TBYTES, F_TTOTAL, F_CFAIL, F_N };

typedef struct row {
  char k1[SY_KEY], k2[SY_KEY];
  double v[F_N];
  unsigned has; /* bit per field: a series was seen */
  double le[SY_BUCKETS], cum[SY_BUCKETS];
  size_t nb;
  const sy_server_cfg *server;
} row;

typedef struct rows {
  row *r;
  size_t n, cap;
} rows;

static row *find_row(rows *t, const char *k1, const char *k2, int create) {
  for (size_t i = 0; i < t->n; i++)
    if (strcmp(t->r[i].k1, k1) == 0 && strcmp(t->r[i].k2, k2) == 0) return &t->r[i];
  if (!create) return NULL;
  if (t->n == t->cap) {
    size_t cap = t->cap ? 2 * t->cap : 16;
    row *r = realloc(t->r, cap * sizeof(*r));
    if (!r) return NULL;
    t->r = r;
    t->cap = cap;
  }
  row *r = memset(&t->r[t->n++], 0, sizeof(row));
  snprintf(r->k1, sizeof(r->k1), "%s", k1);
  snprintf(r->k2, sizeof(r->k2), "%s", k2);
  return r;
}

static void add(row *r, int f, double v) {
  if (!r) return;
  r->v[f] += v;
  r->has |= 1u << f;
}

typedef struct tables {
  rows routes, servers, tunnels;
  double conns, requests, tunnels_open, pipes_in_use;
} tables;

static void bucket_add(row *r, double le, double v) {
  if (!r) return;
  for (size_t i = 0; i < r->nb; i++)
    if (r->le[i] == le) {
      r->cum[i] += v;
      return;
    }
  if (r->nb < SY_BUCKETS) {
    r->le[r->nb] = le;
    r->cum[r->nb++] = v;
  }
}

static void collect(const char *name, size_t nlen, const char *labels, size_t llen, double v,
                    void *arg) {
  tables *t = arg;
  char route[SY_KEY], a[SY_KEY], b[SY_KEY];
  int has_route = sy_status_label(labels, llen, "route", route, sizeof(route)) >= 0;
  if (is(name, nlen, "switchyard_connections_open")) {
    t->conns += v;
  } else if (is(name, nlen, "switchyard_requests_total")) {
    t->requests += v;
    if (!has_route) return;
    row *r = find_row(&t->routes, route, "", 1);
    add(r, F_REQ, v);
    if (label_is(labels, llen, "class", "5xx")) add(r, F_ERR, v);
  } else if (is(name, nlen, "switchyard_pipes")) {
    if (label_is(labels, llen, "state", "in_use")) t->pipes_in_use += v;
  } else if (is(name, nlen, "switchyard_tunnels_open") ||
             is(name, nlen, "switchyard_tunnels_total")) {
    int open = nlen == strlen("switchyard_tunnels_open");
    if (open) t->tunnels_open += v;
    if (!has_route) return;
    add(find_row(&t->routes, route, "", 1), open ? F_TOPEN : F_TTOTAL, v);
    if (sy_status_label(labels, llen, "protocol", a, sizeof(a)) >= 0)
      add(find_row(&t->tunnels, route, a, 1), open ? F_TOPEN : F_TTOTAL, v);
  } else if (is(name, nlen, "switchyard_tunnel_bytes_total")) {
    if (has_route) add(find_row(&t->routes, route, "", 1), F_TBYTES, v);
  } else if (is(name, nlen, "switchyard_request_duration_seconds_sum")) {
    if (has_route) add(find_row(&t->routes, route, "", 1), F_DSUM, v);
  } else if (is(name, nlen, "switchyard_request_duration_seconds_count")) {
    if (has_route) add(find_row(&t->routes, route, "", 1), F_DCOUNT, v);
  } else if (is(name, nlen, "switchyard_request_duration_seconds_bucket")) {
    char le[32];
    if (has_route && sy_status_label(labels, llen, "le", le, sizeof(le)) >= 0)
      bucket_add(find_row(&t->routes, route, "", 1),
                 strcmp(le, "+Inf") ? strtod(le, NULL) : INFINITY, v);
  } else if (is(name, nlen, "switchyard_upstream_requests_total") ||
             is(name, nlen, "switchyard_upstream_connect_failures_total")) {
    if (sy_status_label(labels, llen, "upstream", a, sizeof(a)) < 0 ||
        sy_status_label(labels, llen, "server", b, sizeof(b)) < 0)
      return;
    row *r = find_row(&t->servers, a, b, 0); /* servers of the current config only */
    if (nlen == strlen("switchyard_upstream_connect_failures_total")) {
      add(r, F_CFAIL, v);
    } else {
      add(r, F_REQ, v);
      /* A server with requests has a 5xx count, 0 when none was a 5xx. */
      add(r, F_ERR, label_is(labels, llen, "class", "5xx") ? v : 0);
    }
  }
}

static int cmp_le(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return a < b ? -1 : a > b;
}

/* histogram_quantile's estimate: linear within the bucket the rank falls in. */
static double quantile(row *r, double q) {
  double pairs[SY_BUCKETS][2];
  for (size_t i = 0; i < r->nb; i++) {
    pairs[i][0] = r->le[i];
    pairs[i][1] = r->cum[i];
  }
  qsort(pairs, r->nb, sizeof(pairs[0]), cmp_le);
  if (!r->nb || !isinf(pairs[r->nb - 1][0]) || pairs[r->nb - 1][1] <= 0) return -1;
  double rank = q * pairs[r->nb - 1][1];
  for (size_t i = 0; i < r->nb; i++) {
    if (pairs[i][1] < rank) continue;
    if (isinf(pairs[i][0])) return i ? pairs[i - 1][0] : -1;
    double lo = i ? pairs[i - 1][0] : 0, clo = i ? pairs[i - 1][1] : 0;
    if (pairs[i][1] == clo) return pairs[i][0];
    return lo + (pairs[i][0] - lo) * (rank - clo) / (pairs[i][1] - clo);
  }
  return -1;
}

static void opt_num(sy_buf *b, const char *key, const row *r, int f, double scale) {
  if (r->has & (1u << f))
    sy_buf_appendf(b, ",\"%s\":%.0f", key, r->v[f] * scale);
  else
    sy_buf_appendf(b, ",\"%s\":null", key);
}

static void ms_or_null(sy_buf *b, const char *key, double seconds) {
  if (seconds < 0 || isnan(seconds))
    sy_buf_appendf(b, ",\"%s\":null", key);
  else
    sy_buf_appendf(b, ",\"%s\":%.3f", key, seconds * 1000);
}

void sy_status_json(sy_buf *out, const sy_admin_state *st, const sy_status_history *h,
                    const char *text, size_t len) {
  tables t = {0};
  const sy_config *cfg = st->cfg;
  /* Rows for every configured route and server first, in file order, so
   * those without traffic show too. */
  for (size_t i = 0; i < cfg->nroutes; i++) {
    char idx[32];
    snprintf(idx, sizeof(idx), "#%zu", cfg->routes[i].index);
    find_row(&t.routes, cfg->routes[i].name ? cfg->routes[i].name : idx, "", 1);
  }
  /* The servers as requests see them now (DNS may have changed them), held
   * until the page is written. */
  sy_server_set **sets = calloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof(*sets));
  for (size_t u = 0; sets && u < cfg->nupstreams; u++) {
    sets[u] = sy_upstream_acquire((sy_upstream_cfg *)&cfg->upstreams[u]);
    for (size_t i = 0; sets[u] && i < sets[u]->nservers; i++) {
      row *r = find_row(&t.servers, cfg->upstreams[u].name, sets[u]->servers[i].addr.text, 1);
      if (r) r->server = &sets[u]->servers[i];
    }
  }
  sy_status_scrape(text, len, collect, &t);

  time_t now = time(NULL);
  sy_buf_appendf(out,
                 "{\"generation\":%llu,\"draining\":%s,\"started\":%lld,\"uptime_s\":%lld,"
                 "\"reloads_ok\":%llu,\"reloads_failed\":%llu,\"last_reload\":{",
                 (unsigned long long)st->generation, st->draining ? "true" : "false",
                 (long long)st->started, (long long)(now - st->started),
                 (unsigned long long)st->reloads_ok, (unsigned long long)st->reloads_failed);
  if (st->last_reload_time)
    sy_buf_appendf(out, "\"time\":%lld,\"ok\":%s", (long long)st->last_reload_time,
                   st->last_reload_ok ? "true" : "false");
  else
    sy_buf_appendf(out, "\"time\":null,\"ok\":null");
  sy_json_cstr(out, "error",
               st->last_reload_time && !st->last_reload_ok ? st->last_reload_error : NULL, 1);
  sy_buf_appendf(out,
                 "},\"connections_open\":%.0f,\"requests\":%.0f,\"tunnels_open\":%.0f,"
                 "\"pipes_in_use\":%.0f,",
                 t.conns, t.requests, t.tunnels_open, t.pipes_in_use);
  history_json(out, h);

  sy_buf_appendf(out, ",\"routes\":[");
  for (size_t i = 0; i < t.routes.n; i++) {
    row *r = &t.routes.r[i];
    sy_buf_appendf(out, "%s{", i ? "," : "");
    sy_json_cstr(out, "route", r->k1, 0);
    sy_buf_appendf(out, ",\"requests\":%.0f,\"errors_5xx\":%.0f", r->v[F_REQ], r->v[F_ERR]);
    int lat = (r->has & (1u << F_DCOUNT)) && r->v[F_DCOUNT] > 0;
    ms_or_null(out, "latency_avg_ms", lat ? r->v[F_DSUM] / r->v[F_DCOUNT] : -1);
    ms_or_null(out, "latency_p95_ms", lat ? quantile(r, 0.95) : -1);
    sy_buf_appendf(out, ",\"tunnels_open\":%.0f", r->v[F_TOPEN]);
    opt_num(out, "tunnel_bytes", r, F_TBYTES, 1);
    sy_buf_append(out, "}", 1);
  }
  sy_buf_appendf(out, "],\"servers\":[");
  for (size_t i = 0; i < t.servers.n; i++) {
    row *r = &t.servers.r[i];
    sy_buf_appendf(out, "%s{", i ? "," : "");
    sy_json_cstr(out, "upstream", r->k1, 0);
    sy_json_cstr(out, "server", r->k2, 1);
    sy_buf_appendf(out, ",\"up\":%s,\"active\":%d",
                   __atomic_load_n(&r->server->rt->down, __ATOMIC_RELAXED) ? "false" : "true",
                   __atomic_load_n(&r->server->rt->active, __ATOMIC_RELAXED));
    opt_num(out, "requests", r, F_REQ, 1);
    opt_num(out, "errors_5xx", r, F_ERR, 1);
    opt_num(out, "connect_failures", r, F_CFAIL, 1);
    sy_buf_append(out, "}", 1);
  }
  sy_buf_appendf(out, "],\"tunnels\":[");
  size_t k = 0;
  for (size_t i = 0; i < t.tunnels.n; i++) {
    row *r = &t.tunnels.r[i];
    if (!(r->has & (1u << F_TTOTAL))) continue;
    sy_buf_appendf(out, "%s{", k++ ? "," : "");
    sy_json_cstr(out, "route", r->k1, 0);
    sy_json_cstr(out, "protocol", r->k2, 1);
    sy_buf_appendf(out, ",\"open\":%.0f,\"total\":%.0f}", r->v[F_TOPEN], r->v[F_TTOTAL]);
  }
  /* The older shape, kept for scripts that read it. */
  sy_buf_appendf(out, "],\"upstreams\":[");
  for (size_t u = 0; u < cfg->nupstreams; u++) {
    const sy_upstream_cfg *up = &cfg->upstreams[u];
    sy_buf_appendf(out, "%s{", u ? "," : "");
    sy_json_cstr(out, "name", up->name, 0);
    sy_buf_appendf(out, ",\"servers\":[");
    const sy_server_set *set = sets ? sets[u] : NULL;
    for (size_t i = 0; set && i < set->nservers; i++) {
      const sy_server_cfg *sv = &set->servers[i];
      sy_buf_appendf(out, "%s{", i ? "," : "");
      sy_json_cstr(out, "address", sv->addr.text, 0);
      sy_buf_appendf(out, ",\"up\":%s,\"active\":%d}",
                     __atomic_load_n(&sv->rt->down, __ATOMIC_RELAXED) ? "false" : "true",
                     __atomic_load_n(&sv->rt->active, __ATOMIC_RELAXED));
    }
    sy_buf_appendf(out, "]}");
  }
  sy_buf_appendf(out, "]}\n");
  for (size_t u = 0; sets && u < cfg->nupstreams; u++)
    sy_server_set_unref(sets[u]);
  free(sets);
  free(t.routes.r);
  free(t.servers.r);
  free(t.tunnels.r);
}

/* ---- the page ------------------------------------------------------------------------ */

/* Self-contained: inline style and script, graphs drawn as SVG from
 * /status.json's history, text set with textContent only (names from the
 * file never become markup). */
static const char page[] =
    "<!DOCTYPE html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
    "content=\"width=device-width\">\n"
    "<title>Switchyard status</title>\n"
    "<style>\n"
    "body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2430}\n"
    "header{background:#1d2430;color:#fff;padding:12px "
    "24px;display:flex;gap:28px;align-items:baseline;flex-wrap:wrap}\n"
    "header h1{font-size:19px;margin:0;letter-spacing:.5px}\n"
    "header b{font-weight:600}\n"
    ".muted{color:#8a94a6}\n"
    "main{padding:16px 24px;max-width:1400px}\n"
    ".cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px}\n"
    ".card{background:#fff;border:1px solid #e1e5eb;border-radius:6px;padding:10px 14px}\n"
    ".card .t{color:#5b6576;font-size:12px;text-transform:uppercase;letter-spacing:.4px}\n"
    ".card .v{font-size:26px;font-weight:600;font-variant-numeric:tabular-nums}\n"
    ".card svg{width:100%;height:54px;display:block;margin:4px 0}\n"
    ".card .sub{font-size:12px;color:#8a94a6}\n"
    "table{border-collapse:collapse;background:#fff;margin:6px 0 18px}\n"
    "td,th{border:1px solid #e1e5eb;padding:4px 10px;text-align:left}\n"
    "th{background:#eef1f5;font-weight:600}\n"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}\n"
    ".down,.bad{color:#b00020;font-weight:600}\n"
    ".ok{color:#1a7f37}\n"
    ".drain{background:#b00020;color:#fff;padding:1px 8px;border-radius:4px}\n"
    "h2{font-size:15px;margin:18px 0 2px}\n"
    ".small{font-size:12px}\n"
    "</style></head><body>\n"
    "<header><h1>Switchyard</h1>\n"
    "<span>config generation <b id=\"generation\">?</b></span>\n"
    "<span>last reload <b id=\"reload\">none</b></span>\n"
    "<span>up <b id=\"uptime\">?</b></span>\n"
    "<span id=\"draining\"></span>\n"
    "<span class=\"muted small\">updated <span id=\"updated\">never</span></span></header>\n"
    "<main>\n"
    "<div class=\"cards\">\n"
    "<div class=\"card\"><div class=\"t\">requests / s</div><div class=\"v\" "
    "id=\"rps\">-</div><svg id=\"g_requests\" viewBox=\"0 0 300 54\" "
    "preserveAspectRatio=\"none\"></svg><div class=\"sub\"><span id=\"w_requests\">0</span> "
    "requests in the last <span class=\"win\">0 s</span></div></div>\n"
    "<div class=\"card\"><div class=\"t\">5xx responses / s</div><div class=\"v\" "
    "id=\"eps\">-</div><svg id=\"g_errors\" viewBox=\"0 0 300 54\" "
    "preserveAspectRatio=\"none\"></svg><div class=\"sub\"><span id=\"w_errors\">0</span> in the "
    "last <span class=\"win\">0 s</span></div></div>\n"
    "<div class=\"card\"><div class=\"t\">tunnels open</div><div class=\"v\" "
    "id=\"tunnels_open\">?</div><svg id=\"g_tunnels\" viewBox=\"0 0 300 54\" "
    "preserveAspectRatio=\"none\"></svg><div class=\"sub\">peak <span id=\"w_tunnels\">0</span> in "
    "the last <span class=\"win\">0 s</span></div></div>\n"
    "<div class=\"card\"><div class=\"t\">tunnel bytes / s</div><div class=\"v\" "
    "id=\"bps\">-</div><svg id=\"g_bytes\" viewBox=\"0 0 300 54\" "
    "preserveAspectRatio=\"none\"></svg><div class=\"sub\"><span id=\"w_bytes\">0 B</span> in the "
    "last <span class=\"win\">0 s</span></div></div>\n"
    "</div>\n"
    "<h2>Now</h2>\n"
    "<table id=\"counts\"><tr><th>connections open</th><td class=\"n\" "
    "id=\"conns\">?</td><th>requests</th><td class=\"n\" id=\"requests\">?</td><th>pipes in "
    "use</th><td class=\"n\" id=\"pipes\">?</td><th>reloads ok / failed</th><td class=\"n\" "
    "id=\"reloads\">?</td></tr></table>\n"
    "<h2>Routes</h2>\n"
    "<table id=\"routes\"><tr><th>route</th><th>requests</th><th>5xx</th><th>5xx %</th><th>avg "
    "latency</th><th>p95 latency</th><th>tunnels open</th><th>tunnel bytes</th></tr></table>\n"
    "<h2>Upstream servers</h2>\n"
    "<table id=\"servers\"><tr><th>upstream</th><th>server</th><th>health</th><th>active "
    "connections</th><th>requests</th><th>5xx</th><th>connect failures</th></tr></table>\n"
    "<h2>Tunnels by route and protocol</h2>\n"
    "<table "
    "id=\"tunnels\"><tr><th>route</th><th>protocol</th><th>open</th><th>total</th></tr></table>\n"
    "<p class=\"muted small\">Latency comes from switchyard_request_duration_seconds; '-' where a "
    "figure is not measured. Graphs: one point a second, the last five minutes. Raw figures: <a "
    "href=\"metrics\">/metrics</a>, <a href=\"status.json\">/status.json</a>.</p>\n"
    "</main>\n"
    "<script>\n"
    "var SVG='http://www.w3.org/2000/svg';\n"
    "function $(id){return document.getElementById(id);}\n"
    "function txt(id,t){$(id).textContent=t;}\n"
    "function cell(r,t,c){var d=r.insertCell();d.textContent=t;if(c)d.className=c;}\n"
    "function fill(id,rows,f){var "
    "t=$(id);while(t.rows.length>1)t.deleteRow(1);rows.forEach(function(x){f(t.insertRow(),x);});}"
    "\n"
    "function num(v){return v===null||v===undefined?'-':String(Math.round(v));}\n"
    "function bytes(v){if(v===null||v===undefined)return '-';var "
    "u=['B','KiB','MiB','GiB','TiB'],i=0;while(v>=1024&&i<4){v/=1024;i++;}return "
    "(i?v.toFixed(1):String(Math.round(v)))+' '+u[i];}\n"
    "function ms(v){return "
    "v===null||v===undefined?'-':(v<10?v.toFixed(2):v<100?v.toFixed(1):String(Math.round(v)))+' "
    "ms';}\n"
    "function rate(v){return v<10?(Math.round(v*10)/10).toString():String(Math.round(v));}\n"
    "function dur(s){var "
    "d=Math.floor(s/86400),h=Math.floor(s%86400/3600),m=Math.floor(s%3600/60);return d?d+'d "
    "'+h+'h':h?h+'h '+m+'m':m?m+'m '+(s%60)+'s':s+'s';}\n"
    "function sum(a){var s=0;a.forEach(function(x){s+=x;});return s;}\n"
    "function avg(a,n){var b=a.slice(-n);return b.length?sum(b)/b.length:0;}\n"
    "function spark(id,vals,color){\n"
    " var g=$(id);while(g.firstChild)g.removeChild(g.firstChild);\n"
    " var W=300,H=54,max=0;vals.forEach(function(v){if(v>max)max=v;});\n"
    " var n=vals.length;g.setAttribute('data-points',n);g.setAttribute('data-max',max);\n"
    " var "
    "base=document.createElementNS(SVG,'line');base.setAttribute('x1',0);base.setAttribute('x2',W);"
    "base.setAttribute('y1',H-1);base.setAttribute('y2',H-1);base.setAttribute('stroke','#e1e5eb');"
    "g.appendChild(base);\n"
    /* a single sample (the first second) still shows, as a short level line */
    " if(n<1)return;if(n<2){vals=[vals[0],vals[0]];n=2;}\n"
    " var pts=[];for(var i=0;i<n;i++){var x=(W*(i+300-Math.max(n,2)+1)/300).toFixed(1);var "
    "y=(H-2-(max?(H-6)*vals[i]/max:0)).toFixed(1);pts.push(x+','+y);}\n"
    " var "
    "area=document.createElementNS(SVG,'polygon');area.setAttribute('points',pts[0].split(',')[0]+'"
    ",'+(H-1)+' '+pts.join(' ')+' "
    "'+pts[n-1].split(',')[0]+','+(H-1));area.setAttribute('fill',color);area.setAttribute('fill-"
    "opacity','0.15');g.appendChild(area);\n"
    " var line=document.createElementNS(SVG,'polyline');line.setAttribute('points',pts.join(' "
    "'));line.setAttribute('fill','none');line.setAttribute('stroke',color);line.setAttribute('"
    "stroke-width','1.5');line.setAttribute('vector-effect','non-scaling-stroke');g.appendChild("
    "line);\n"
    "}\n"
    "/* from the origin: a page opened as http://user:token@host/ has a base URL fetch refuses */\n"
    "var DATA=location.origin+location.pathname.replace(/[^\\/]*$/,'')+'status.json';\n"
    "function "
    "refresh(){fetch(DATA,{cache:'no-store',credentials:'same-origin'}).then(function(r){if(!r.ok)"
    "throw r.status;return r.json();}).then(function(s){\n"
    " var h=s.history;\n"
    " txt('generation',s.generation);\n"
    " var lr=s.last_reload;\n"
    " if(!lr.time){txt('reload','none');$('reload').className='';}\n"
    " else{txt('reload',(lr.ok?'ok':'failed')+' at '+new "
    "Date(lr.time*1000).toISOString().replace('.000Z','Z'));$('reload').className=lr.ok?'ok':'bad';"
    "$('reload').title=lr.error||'';}\n"
    " txt('uptime',dur(s.uptime_s));\n"
    " $('draining').innerHTML='';if(s.draining){var "
    "d=document.createElement('span');d.className='drain';d.textContent='draining';$('draining')."
    "appendChild(d);}\n"
    " txt('conns',s.connections_open);txt('requests',s.requests);txt('tunnels_open',s.tunnels_open)"
    ";txt('pipes',s.pipes_in_use);txt('reloads',s.reloads_ok+' / '+s.reloads_failed);\n"
    " txt('rps',rate(avg(h.requests_per_s,5)));txt('eps',rate(avg(h.errors_per_s,5)));txt('bps',"
    "bytes(avg(h.tunnel_bytes_per_s,5))+'/s');\n"
    " txt('w_requests',num(sum(h.requests_per_s)));txt('w_errors',num(sum(h.errors_per_s)));\n"
    " txt('w_tunnels',num(Math.max.apply(null,[0].concat(h.tunnels_open))));txt('w_bytes',bytes("
    "sum(h.tunnel_bytes_per_s)));\n"
    " var "
    "w=dur(Math.max(h.tunnels_open.length-1,0)*h.interval_s);Array.prototype.forEach.call(document."
    "getElementsByClassName('win'),function(e){e.textContent=w;});\n"
    " spark('g_requests',h.requests_per_s,'#2f6fde');spark('g_errors',h.errors_per_s,'#b00020');"
    "spark('g_tunnels',h.tunnels_open,'#1a7f37');spark('g_bytes',h.tunnel_bytes_per_s,'#8250df');\n"
    " txt('updated',new Date().toISOString());\n"
    " fill('routes',s.routes,function(r,x){cell(r,x.route===''?'(no "
    "route)':x.route);cell(r,num(x.requests),'n');cell(r,num(x.errors_5xx),x.errors_5xx?'n "
    "bad':'n');\n"
    "  "
    "cell(r,x.requests?(100*x.errors_5xx/"
    "x.requests).toFixed(1):'-','n');cell(r,ms(x.latency_avg_ms),'n');cell(r,ms(x.latency_p95_ms),'"
    "n');cell(r,num(x.tunnels_open),'n');cell(r,bytes(x.tunnel_bytes),'n');});\n"
    " fill('servers',s.servers,function(r,x){cell(r,x.upstream);cell(r,x.server);cell(r,x.up?'up':'"
    "down',x.up?'ok':'down');cell(r,num(x.active),'n');cell(r,num(x.requests),'n');cell(r,num(x."
    "errors_5xx),x.errors_5xx?'n bad':'n');cell(r,num(x.connect_failures),x.connect_failures?'n "
    "bad':'n');});\n"
    " fill('tunnels',s.tunnels,function(r,x){cell(r,x.route);cell(r,x.protocol);cell(r,x.open,'n');"
    "cell(r,x.total,'n');});\n"
    "}).catch(function(){txt('updated','failed (retrying)');});}\n"
    "refresh();setInterval(refresh,1000);\n"
    "</script></body></html>\n";

const char *sy_status_page(size_t *len) {
  *len = sizeof(page) - 1;
  return page;
}
