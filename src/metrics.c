#include "switchyard/metrics.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "switchyard/log.h"

#define SY_METRIC_KEY 704 /* calloc'd: slots never touched cost no RSS */
#define MIN_CAPACITY 256

/* ---- the registry ---------------------------------------------------------- */

/* Request-scale latencies: 100 us (a pooled request on loopback) to a minute
 * (beyond the default response timeout). */
static const sy_metric_buckets request_buckets = {
    18,
    {100000ull, 250000ull, 500000ull, 1000000ull, 2500000ull, 5000000ull, 10000000ull, 25000000ull,
     50000000ull, 100000000ull, 250000000ull, 500000000ull, 1000000000ull, 2500000000ull,
     5000000000ull, 10000000000ull, 30000000000ull, 60000000000ull},
    {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
     "0.25", "0.5", "1", "2.5", "5", "10", "30", "60"}};

/* Tunnel lifetimes: a refused probe (100 ms) to a day-long WebSocket. */
static const sy_metric_buckets tunnel_buckets = {
    14,
    {100000000ull, 1000000000ull, 10000000000ull, 30000000000ull, 60000000000ull, 300000000000ull,
     600000000000ull, 1800000000000ull, 3600000000000ull, 7200000000000ull, 14400000000000ull,
     28800000000000ull, 43200000000000ull, 86400000000000ull},
    {"0.1", "1", "10", "30", "60", "300", "600", "1800", "3600", "7200", "14400", "28800", "43200",
     "86400"}};

#define C SY_METRIC_COUNTER
#define G SY_METRIC_GAUGE
#define H SY_METRIC_HISTOGRAM
/* Sorted by name (sy_metrics_family does a binary search; a unit test checks). */
static const sy_metric_family families[] = {
    {"switchyard_access_log_dropped_total", C, "",
     "Access-log lines dropped because the log queue was full.", NULL},
    {"switchyard_buffer_bytes", G, "state",
     "Bytes of the buffers HTTP exchanges and TLS tunnels read into, in use or idle in the "
     "workers' caches.",
     NULL},
    {"switchyard_build_info", G, "version", "Always 1; the version of the running binary.", NULL},
    {"switchyard_config_generation", G, "", "0 at start, +1 per successful reload.", NULL},
    {"switchyard_config_last_reload_success_timestamp_seconds", G, "",
     "Unix time of the last successful configuration load (start or reload).", NULL},
    {"switchyard_connections_accepted_total", C, "", "Client connections accepted.", NULL},
    {"switchyard_connections_open", G, "", "Client connections open, tunnels included.", NULL},
    {"switchyard_connections_refused_total", C, "reason",
     "Client connections closed at accept by a limit.", NULL},
    {"switchyard_dns_records_dropped_total", C, "upstream",
     "Addresses left out because a DNS name or an upstream gave more than 64.", NULL},
    {"switchyard_dns_resolutions_total", C, "upstream,result",
     "Lookups of an upstream's DNS names, by outcome.", NULL},
    {"switchyard_fd_budget", G, "",
     "Descriptors traffic may hold: RLIMIT_NOFILE less a reserve for everything else.", NULL},
    {"switchyard_fd_budget_used", G, "",
     "Of the budget, descriptors taken: connections and their tunnels (2 each), pooled "
     "upstream connections, pipes.",
     NULL},
    {"switchyard_health_checks_total", C, "upstream,server,result", "Active health probes.", NULL},
    {"switchyard_idle_memory_releases_total", C, "",
     "Times an idle worker freed its cached buffers and returned free heap to the system.", NULL},
    {"switchyard_listener_pauses_total", C, "",
     "Times a listener stopped accepting at max_connections.", NULL},
    {"switchyard_max_fds", G, "", "The process's file descriptor limit (RLIMIT_NOFILE).", NULL},
    {"switchyard_metrics_series_dropped_total", C, "",
     "Updates not recorded because a worker's metrics table was full.", NULL},
    {"switchyard_open_fds", G, "", "File descriptors the process has open.", NULL},
    {"switchyard_pipes", G, "state", "Splice pipes, in use or idle in the pools.", NULL},
    {"switchyard_pipes_created_total", C, "", "Splice pipes created.", NULL},
    {"switchyard_proxy_protocol_errors_total", C, "reason",
     "Connections closed for a missing or invalid PROXY protocol header.", NULL},
    {"switchyard_reloads_total", C, "result", "Configuration reloads, by result.", NULL},
    {"switchyard_request_duration_seconds", H, "route",
     "Time from a request's first byte to the last byte of its response.", &request_buckets},
    {"switchyard_requests_total", C, "route,class", "Responses completed, by status class.", NULL},
    {"switchyard_responses_incomplete_total", C, "route,reason",
     "Responses cut short after their head was sent, by termination reason.", NULL},
    {"switchyard_start_time_seconds", G, "", "Unix time the process started.", NULL},
    {"switchyard_tunnel_bytes_total", C, "route,direction",
     "Tunnel payload bytes, added while the tunnel is open (at most a second behind).", NULL},
    {"switchyard_tunnel_copied_bytes_total", C, "", "Tunnel payload bytes copied in user space.",
     NULL},
    {"switchyard_tunnel_duration_seconds", H, "route", "Lifetime of tunnels, from 101 to close.",
     &tunnel_buckets},
    {"switchyard_tunnel_spliced_bytes_total", C, "", "Tunnel payload bytes moved by splice(2).",
     NULL},
    {"switchyard_tunnels_open", G, "route,protocol", "Tunnels open now.", NULL},
    {"switchyard_tunnels_total", C, "route,protocol", "Tunnels opened.", NULL},
    {"switchyard_upgrade_duration_seconds", H, "route",
     "Time from an upgrade request's first byte to the 101 sent to the client.", &request_buckets},
    {"switchyard_upgrades_refused_total", C, "reason",
     "Upgrades the proxy answered itself because of a limit.", NULL},
    {"switchyard_upgrades_total", C, "protocol,outcome",
     "Upgrade requests, by protocol (a token the route allows, or other) and outcome.", NULL},
    {"switchyard_upstream_active_connections", G, "upstream,server",
     "Connections open to an upstream server, tunnels included.", NULL},
    {"switchyard_upstream_connect_failures_total", C, "upstream,server",
     "Failed connects to an upstream server (refused, unreachable, timed out, TLS).", NULL},
    {"switchyard_upstream_connect_seconds", H, "upstream",
     "Time to connect to an upstream server (TLS handshake included).", &request_buckets},
    {"switchyard_upstream_ejections_total", C, "upstream,server",
     "Times an upstream server was taken out of rotation (passive or active health).", NULL},
    {"switchyard_upstream_first_byte_seconds", H, "upstream",
     "Time from the request sent upstream to the first byte of the response.", &request_buckets},
    {"switchyard_upstream_pool_reuses_total", C, "",
     "Requests sent on a pooled upstream connection.", NULL},
    {"switchyard_upstream_requests_total", C, "upstream,server,class",
     "Responses from an upstream server, by status class.", NULL},
    {"switchyard_upstream_retries_total", C, "upstream,server",
     "Requests retried on another server (or connection) after this one failed.", NULL},
    {"switchyard_upstream_server_up", G, "upstream,server", "1 up, 0 ejected.", NULL},
    {"switchyard_upstream_servers", G, "upstream",
     "Servers an upstream has now (IP entries plus what its DNS names gave).", NULL},
    {"switchyard_upstream_stale_retries_total", C, "",
     "Requests retried because a pooled connection had died.", NULL},
    {"switchyard_workers", G, "", "Worker threads.", NULL},
};
#undef C
#undef G
#undef H

#define NFAMILIES (sizeof(families) / sizeof(families[0]))

const sy_metric_family *sy_metrics_families(size_t *n) {
  *n = NFAMILIES;
  return families;
}

static const sy_metric_family *family_n(const char *name, size_t len) {
  size_t lo = 0, hi = NFAMILIES;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const char *f = families[mid].name;
    int c = strncmp(f, name, len);
    if (c == 0) c = f[len] ? 1 : 0;
    if (c == 0) return &families[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

const sy_metric_family *sy_metrics_family(const char *name) {
  return family_n(name, strlen(name));
}

static const char *const type_names[] = {"counter", "gauge", "histogram"};

void sy_metrics_header(sy_buf *out, const char *name) {
  const sy_metric_family *f = sy_metrics_family(name);
  size_t n = strlen(name);
  /* Not registered (a bug the registry tests look for): still valid output. */
  const char *help = f ? f->help : "Switchyard metric (not in the registry).";
  const char *type = f                                                ? type_names[f->type]
                     : (n > 6 && strcmp(name + n - 6, "_total") == 0) ? "counter"
                                                                      : "gauge";
  sy_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* ---- sizing ---------------------------------------------------------------- */

/* Label sets per route: requests by class (6), upgrades (allowed tokens + the
 * fixed ones, by 5 outcomes), tunnels open/total per token, bytes by
 * direction, three histograms. Upgrade families are not per route today; the
 * estimate does not rely on that. */
static size_t route_series(const sy_route_cfg *r) {
  size_t tokens = (r->allow_any_upgrade ? 8 : r->nallow_upgrades) + 2; /* + other, h2c */
  return 6 + tokens * 5 + tokens * 2 + 2 + 3;
}

size_t sy_metrics_capacity(const sy_config *cfg) {
  size_t n = 64; /* unlabelled families and fixed label sets (reasons, states) */
  n += 3;        /* PROXY protocol errors: bad, timeout, eof */
  for (size_t i = 0; i < cfg->nroutes; i++)
    n += route_series(&cfg->routes[i]);
  n += 8;                      /* requests without a route */
  n += (cfg->nroutes + 1) * 5; /* responses cut short: five reasons per route */
  for (size_t u = 0; u < cfg->nupstreams; u++) {
    /* DNS may give an upstream up to 64 servers, whatever the file lists */
    size_t ns = cfg->upstreams[u].dynamic ? 64 : cfg->upstreams[u].nservers;
    /* two histograms, DNS outcomes and counts; per server: requests by class,
     * three counters, health */
    n += 2 + 8 + ns * (6 + 3 + 2);
  }
  return 2 * n;
}

/* ---- tables ---------------------------------------------------------------- */

enum { KIND_VALUE = 0, KIND_HIST = 1 };

struct sy_hist {
  const sy_metric_buckets *b;
  uint64_t sum_us;                          /* microseconds: years of hour-long tunnels fit */
  uint64_t counts[SY_HIST_MAX_BUCKETS + 1]; /* per bucket, the last is +Inf */
};

typedef struct sy_slot {
  int used; /* set (release) after key is written; never cleared */
  int kind;
  int64_t value;
  sy_hist *hist;
  size_t namelen;
  char key[SY_METRIC_KEY]; /* "name\0labels" */
} sy_slot;

#define CACHE_SLOTS 1024 /* power of two; direct-mapped, a collision evicts */

struct sy_metrics {
  struct {
    uint64_t key;
    void *cell;
  } cache[CACHE_SLOTS];
  size_t mask;  /* slots - 1 */
  size_t limit; /* series allowed (a probe never sees a full table) */
  size_t used;  /* written by the owner only */
  size_t nhist, hist_used;
  int64_t dropped;
  sy_slot *slots;
  sy_hist *hists;
};

sy_metrics *sy_metrics_new(size_t capacity) {
  if (capacity < MIN_CAPACITY) capacity = MIN_CAPACITY;
  size_t slots = 1;
  while (slots < capacity * 2) /* at most half full: short probes */
    slots <<= 1;
  sy_metrics *m = calloc(1, sizeof(*m));
  if (!m) return NULL;
  m->mask = slots - 1;
  m->limit = capacity;
  /* A histogram per series at most; calloc'd, so the untouched ones cost no RSS. */
  m->nhist = capacity / 4 + 16;
  m->slots = calloc(slots, sizeof(sy_slot));
  m->hists = calloc(m->nhist, sizeof(sy_hist));
  if (!m->slots || !m->hists) {
    sy_metrics_free(m);
    return NULL;
  }
  return m;
}

void sy_metrics_free(sy_metrics *m) {
  if (!m) return;
  free(m->slots);
  free(m->hists);
  free(m);
}

size_t sy_metrics_size(const sy_metrics *m) {
  return m->limit;
}

static uint32_t hash(const char *name, const char *labels) {
  uint32_t h = 2166136261u;
  for (const char *p = name; *p; p++)
    h = (h ^ (unsigned char)*p) * 16777619u;
  h = (h ^ '{') * 16777619u;
  for (const char *p = labels ? labels : ""; *p; p++)
    h = (h ^ (unsigned char)*p) * 16777619u;
  return h;
}

static int slot_is(const sy_slot *s, const char *name, size_t nl, const char *labels) {
  return s->namelen == nl && memcmp(s->key, name, nl) == 0 &&
         strcmp(s->key + nl + 1, labels ? labels : "") == 0;
}

/* A full table must not go unnoticed: one line a second at most (process-wide). */
static void note_drop(sy_metrics *m, const char *name, const char *labels) {
  __atomic_store_n(&m->dropped, __atomic_load_n(&m->dropped, __ATOMIC_RELAXED) + 1,
                   __ATOMIC_RELAXED);
  static int64_t quiet_until; /* seconds: the second after the last line */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  int64_t now = (int64_t)ts.tv_sec, prev = __atomic_load_n(&quiet_until, __ATOMIC_RELAXED);
  if (now < prev || !__atomic_compare_exchange_n(&quiet_until, &prev, now + 1, 0, __ATOMIC_RELAXED,
                                                 __ATOMIC_RELAXED))
    return;
  sy_log_error("metrics: table full (%zu series), series %s{%.200s} dropped; drops are counted in "
               "switchyard_metrics_series_dropped_total",
               m->limit, name, labels ? labels : "");
}

static sy_slot *find(sy_metrics *m, const char *name, const char *labels, int create) {
  size_t nl = strlen(name), ll = labels ? strlen(labels) : 0;
  if (nl + ll + 2 > SY_METRIC_KEY) {
    if (create) note_drop(m, name, labels);
    return NULL;
  }
  uint32_t h = hash(name, labels);
  for (size_t i = 0; i <= m->mask; i++) {
    sy_slot *s = &m->slots[(h + i) & m->mask];
    if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) {
      if (!create) return NULL;
      if (m->used >= m->limit) {
        note_drop(m, name, labels);
        return NULL;
      }
      m->used++;
      memcpy(s->key, name, nl);
      s->key[nl] = 0;
      memcpy(s->key + nl + 1, labels ? labels : "", ll + 1);
      s->namelen = nl;
      return s; /* the caller publishes it (slot_publish) */
    }
    if (slot_is(s, name, nl, labels)) return s;
  }
  return NULL;
}

static void slot_publish(sy_slot *s) {
  if (!s->used) __atomic_store_n(&s->used, 1, __ATOMIC_RELEASE);
}

void sy_metrics_add(sy_metrics *m, const char *name, const char *labels, int64_t delta) {
  sy_slot *s = find(m, name, labels, 1);
  if (!s || s->kind != KIND_VALUE) return;
  slot_publish(s);
  __atomic_add_fetch(&s->value, delta, __ATOMIC_RELAXED);
}

void sy_metrics_add_cell(sy_metrics *m, int64_t **cell, const char *name, const char *labels,
                         int64_t delta) {
  if (!*cell) {
    sy_slot *s = find(m, name, labels, 1);
    if (!s || s->kind != KIND_VALUE) return;
    slot_publish(s);
    *cell = &s->value;
  }
  __atomic_add_fetch(*cell, delta, __ATOMIC_RELAXED);
}

sy_hist *sy_metrics_hist(sy_metrics *m, const char *name, const char *labels) {
  sy_slot *s = find(m, name, labels, 1);
  if (!s) return NULL;
  if (s->used) return s->kind == KIND_HIST ? s->hist : NULL;
  /* A new series: only now is the registry asked (it is a binary search). */
  const sy_metric_family *f = sy_metrics_family(name);
  if (!f || f->type != SY_METRIC_HISTOGRAM) {
    m->used--; /* the slot stays unpublished: a later series may claim it */
    return NULL;
  }
  if (m->hist_used >= m->nhist) {
    /* The slot stays unpublished: a later series may claim it. */
    m->used--;
    note_drop(m, name, labels);
    return NULL;
  }
  s->kind = KIND_HIST;
  s->hist = &m->hists[m->hist_used++];
  s->hist->b = f->buckets;
  slot_publish(s);
  return s->hist;
}

void sy_metrics_observe(sy_hist *h, uint64_t ns) {
  if (!h) return;
  size_t i = 0;
  while (i < h->b->n && ns > h->b->ns[i])
    i++;
  sy_bump(&h->counts[i], 1); /* only the table's thread writes */
  sy_bump(&h->sum_us, (int64_t)(ns / 1000));
}

void sy_metrics_observe_cell(sy_metrics *m, sy_hist **cell, const char *name, const char *labels,
                             uint64_t ns) {
  if (!*cell) *cell = sy_metrics_hist(m, name, labels);
  sy_metrics_observe(*cell, ns);
}

uint64_t sy_metrics_key(uint64_t serial, unsigned tag, unsigned a, unsigned b, unsigned c) {
  /* serial 24 bits (wraps after 16 million reloads: by then the snapshot that
   * used a key is long gone), tag 8, a 12, b 12, c 8 */
  if (!serial || tag > 0xFF || a > 0xFFF || b > 0xFFF || c > 0xFF) return 0;
  return (serial & 0xFFFFFF) << 40 | (uint64_t)tag << 32 | (uint64_t)a << 20 | (uint64_t)b << 8 | c;
}

static size_t cache_slot(uint64_t key) {
  return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 54) & (CACHE_SLOTS - 1);
}

void *sy_metrics_cache_get(const sy_metrics *m, uint64_t key) {
  size_t i = cache_slot(key);
  return key && m->cache[i].key == key ? m->cache[i].cell : NULL;
}

void sy_metrics_cache_put(sy_metrics *m, uint64_t key, void *cell) {
  if (!key || !cell) return;
  size_t i = cache_slot(key);
  m->cache[i].key = key;
  m->cache[i].cell = cell;
}

static uint64_t hist_count(const sy_hist *h) {
  uint64_t n = 0;
  for (size_t i = 0; i <= h->b->n; i++)
    n += __atomic_load_n(&h->counts[i], __ATOMIC_RELAXED);
  return n;
}

int64_t sy_metrics_get(sy_metrics *const *ms, size_t n, const char *name, const char *labels) {
  int64_t sum = 0;
  for (size_t i = 0; i < n; i++) {
    sy_slot *s = find(ms[i], name, labels, 0);
    if (!s || !__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) continue;
    sum += s->kind == KIND_HIST ? (int64_t)hist_count(s->hist)
                                : __atomic_load_n(&s->value, __ATOMIC_RELAXED);
  }
  return sum;
}

int64_t sy_metrics_dropped(sy_metrics *const *ms, size_t n) {
  int64_t sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += __atomic_load_n(&ms[i]->dropped, __ATOMIC_RELAXED);
  return sum;
}

/* ---- reading --------------------------------------------------------------- */

typedef struct series {
  const char *key; /* name\0labels, from one of the tables */
  size_t namelen;
  int kind;
  int64_t value;
  const sy_hist *hist;
} series;

static int cmp_series(const void *a, const void *b) {
  const series *x = a, *y = b;
  int c = strcmp(x->key, y->key);
  return c ? c : strcmp(x->key + x->namelen + 1, y->key + y->namelen + 1);
}

/* Every published slot of the tables, sorted, equal keys next to each other. */
static series *collect(sy_metrics *const *ms, size_t n, size_t *count) {
  size_t total = 0, k = 0;
  for (size_t t = 0; t < n; t++)
    total += ms[t]->mask + 1;
  series *all = malloc(sizeof(series) * (total ? total : 1));
  if (!all) return NULL;
  for (size_t t = 0; t < n; t++)
    for (size_t i = 0; i <= ms[t]->mask; i++) {
      sy_slot *s = &ms[t]->slots[i];
      if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) continue;
      all[k++] = (series){.key = s->key,
                          .namelen = s->namelen,
                          .kind = s->kind,
                          .value = __atomic_load_n(&s->value, __ATOMIC_RELAXED),
                          .hist = s->hist};
    }
  qsort(all, k, sizeof(series), cmp_series);
  *count = k;
  return all;
}

void sy_metrics_each(sy_metrics *const *ms, size_t n,
                     void (*fn)(const char *name, const char *labels, int64_t v, void *arg),
                     void *arg) {
  size_t k;
  series *all = collect(ms, n, &k);
  if (!all) return;
  for (size_t i = 0; i < k;) {
    size_t j = i + 1;
    int64_t v = all[i].value;
    while (j < k && cmp_series(&all[i], &all[j]) == 0)
      v += all[j++].value;
    if (all[i].kind == KIND_VALUE) fn(all[i].key, all[i].key + all[i].namelen + 1, v, arg);
    i = j;
  }
  free(all);
}

static void render_hist(sy_buf *out, const series *s, size_t nsame) {
  const char *name = s->key, *labels = s->key + s->namelen + 1;
  const sy_metric_buckets *b = s->hist->b;
  uint64_t counts[SY_HIST_MAX_BUCKETS + 1] = {0}, sum_us = 0;
  for (size_t j = 0; j < nsame; j++) {
    const sy_hist *h = s[j].hist;
    for (size_t i = 0; i <= b->n; i++)
      counts[i] += __atomic_load_n(&h->counts[i], __ATOMIC_RELAXED);
    sum_us += __atomic_load_n(&h->sum_us, __ATOMIC_RELAXED);
  }
  const char *comma = *labels ? "," : "";
  uint64_t cum = 0;
  for (size_t i = 0; i <= b->n; i++) {
    cum += counts[i];
    sy_buf_appendf(out, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels, comma,
                   i < b->n ? b->le[i] : "+Inf", (unsigned long long)cum);
  }
  const char *lb = *labels ? "{" : "", *rb = *labels ? "}" : "";
  sy_buf_appendf(out, "%s_sum%s%s%s %llu.%06llu\n", name, lb, labels, rb,
                 (unsigned long long)(sum_us / 1000000), (unsigned long long)(sum_us % 1000000));
  sy_buf_appendf(out, "%s_count%s%s%s %llu\n", name, lb, labels, rb, (unsigned long long)cum);
}

void sy_metrics_render(sy_metrics *const *ms, size_t n, sy_buf *out) {
  size_t k;
  series *all = collect(ms, n, &k);
  if (!all) return;
  const char *last = NULL;
  int dropped_done = 0;
  const char *dropped_name = "switchyard_metrics_series_dropped_total";
  for (size_t i = 0; i < k;) {
    size_t j = i + 1;
    int64_t v = all[i].value;
    while (j < k && cmp_series(&all[i], &all[j]) == 0)
      v += all[j++].value;
    const char *name = all[i].key, *labels = all[i].key + all[i].namelen + 1;
    if (!last || strcmp(last, name) != 0) {
      if (!dropped_done && strcmp(name, dropped_name) > 0) {
        sy_metrics_header(out, dropped_name);
        sy_buf_appendf(out, "%s %lld\n", dropped_name, (long long)sy_metrics_dropped(ms, n));
        dropped_done = 1;
      }
      sy_metrics_header(out, name);
      last = name;
    }
    if (all[i].kind == KIND_HIST)
      render_hist(out, &all[i], j - i);
    else if (*labels)
      sy_buf_appendf(out, "%s{%s} %lld\n", name, labels, (long long)v);
    else
      sy_buf_appendf(out, "%s %lld\n", name, (long long)v);
    i = j;
  }
  if (!dropped_done) {
    sy_metrics_header(out, dropped_name);
    sy_buf_appendf(out, "%s %lld\n", dropped_name, (long long)sy_metrics_dropped(ms, n));
  }
  free(all);
}

/* ---- labels ---------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0, n), or 0 if it is not one
 * (overlongs, surrogates and code points above U+10FFFF are invalid). */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  if (c < 0x80) return c ? 1 : 0;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF)
    len = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else
    return 0;
  if (n < len || s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xBF) return 0;
  return len;
}

size_t sy_utf8_cut(const char *s, size_t len, size_t max) {
  if (len <= max) return len;
  size_t n = max;
  /* Back over continuation bytes to the start of the character at max. */
  while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80 && max - n < 3)
    n--;
  return n;
}

/* Runs per request and per tunnel: spans are copied whole, no printf (a
 * byte-wise append and a format string were a fifth of a handshake's
 * user-space instructions). */
void sy_metrics_label(sy_buf *b, const char *label, const char *value, size_t len) {
  static const char fffd[] = "\xEF\xBF\xBD";
  if (b->len) sy_buf_append(b, ",", 1);
  sy_buf_append(b, label, strlen(label));
  sy_buf_append(b, "=\"", 2);
  size_t from = 0, out = 0, i = 0;
  while (i < len) {
    unsigned char c = (unsigned char)value[i];
    if (c >= 0x20 && c < 0x80 && c != '\\' && c != '"') {
      if (out + 1 > SY_METRIC_VALUE_MAX) break;
      i++, out++;
      continue;
    }
    size_t seq = c >= 0x80 ? utf8_seq((const unsigned char *)value + i, len - i) : c ? 1 : 0;
    /* What the byte(s) become: themselves, an escape, or U+FFFD. */
    const char *rep = NULL;
    size_t rl = seq, advance = seq ? seq : 1;
    if (!seq) {
      rep = fffd;
      rl = 3;
    } else if (c == '\\' || c == '"' || c == '\n') {
      rep = c == '\n' ? "\\n" : c == '"' ? "\\\"" : "\\\\";
      rl = 2;
    }
    /* The cut counts the value's bytes (an escape counts as its character). */
    if (out + (rep && rl == 2 ? 1 : rl) > SY_METRIC_VALUE_MAX) break;
    out += rep && rl == 2 ? 1 : rl;
    if (rep) {
      sy_buf_append(b, value + from, i - from);
      sy_buf_append(b, rep, rl);
      from = i + advance;
    }
    i += advance;
  }
  sy_buf_append(b, value + from, i - from);
  sy_buf_append(b, "\"", 1);
}
