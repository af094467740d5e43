#include "switchyard/stats.h"

#include <string.h>
#include <strings.h>

#include "switchyard/router.h"

/* Family tags of the cache keys (sy_metrics_key): one per family and label
 * shape, so two families never share a key. */
enum {
  TAG_REQUESTS = 1,
  TAG_REQUEST_HIST,
  TAG_UPGRADE_HIST,
  TAG_UPSTREAM_REQUESTS,
  TAG_CONNECT_HIST,
  TAG_FIRST_BYTE_HIST,
  TAG_CONNECT_FAILURES,
  TAG_RETRIES,
  TAG_TUNNEL_BYTES,
  TAG_TUNNEL_HIST,
  TAG_SPLICED,
  TAG_COPIED,
  TAG_UPGRADES,
  TAG_TUNNELS_OPEN,
  TAG_TUNNELS_TOTAL,
};

static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"};

static unsigned class_of(int status) {
  return status >= 100 && status < 600 ? (unsigned)(status / 100 - 1) : 5;
}

const char *sy_stats_route_name(const sy_route_cfg *route, char idx[32]) {
  if (!route) return "";
  if (route->name) return route->name;
  /* Only on a cache miss, but kept cheap anyway: no snprintf. */
  char tmp[24];
  size_t n = 0, v = route->index;
  do
    tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) && n < sizeof(tmp));
  idx[0] = '#';
  for (size_t i = 0; i < n; i++)
    idx[1 + i] = tmp[n - 1 - i];
  idx[1 + n] = 0;
  return idx;
}

/* The protocol label and, for cache keys, its number within the route: 0
 * "other", 1 + i for the route's allow_upgrades[i], 0x800 + j for known[j]
 * (a route allowing "*"); past 0xFFF the series is looked up by its text. */
static const char *protocol_of(const sy_route_cfg *route, const char *token, size_t len,
                               unsigned *ix) {
  static const char *const known[] = {"websocket", "h2c",     "TLS/1.0",     "TLS/1.1",
                                      "TLS/1.2",   "TLS/1.3", "connect-udp", "connect-ip"};
  *ix = 0;
  if (!route || !token || !len) return "other";
  const char *e = sy_route_upgrade_entry(route, (sy_str){token, len});
  if (!e) return "other";
  if (strcmp(e, "*") != 0) {
    for (size_t i = 0; i < route->nallow_upgrades; i++)
      if (route->allow_upgrades[i] == e) *ix = i + 1 < 0x800 ? (unsigned)i + 1 : 0x1000;
    return e;
  }
  for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
    if (strlen(known[i]) == len && strncasecmp(known[i], token, len) == 0) {
      *ix = 0x800 + (unsigned)i;
      return known[i];
    }
  return "other";
}

const char *sy_stats_protocol(const sy_route_cfg *route, const char *token, size_t len) {
  unsigned ix;
  return protocol_of(route, token, len, &ix);
}

/* ---- labels, built only on a cache miss ---- */

static void route_label(sy_buf *lb, const sy_route_cfg *route) {
  char idx[32];
  const char *r = sy_stats_route_name(route, idx);
  sy_metrics_label(lb, "route", r, strlen(r));
}

static void upstream_label(sy_buf *lb, const sy_route_cfg *route) {
  const char *u = route->upstream->name;
  sy_metrics_label(lb, "upstream", u, strlen(u));
}

static void server_labels(sy_buf *lb, const sy_route_cfg *route, const sy_server_cfg *s) {
  upstream_label(lb, route);
  sy_metrics_label(lb, "server", s->addr.text, strlen(s->addr.text));
}

static const char *end_labels(sy_buf *lb) {
  sy_buf_append(lb, "", 1);
  return lb->p;
}

/* ---- keys ---- */

static unsigned route_ix(const sy_route_cfg *route) {
  return route ? (unsigned)route->index + 1 : 0;
}

static unsigned upstream_ix(const sy_config *cfg, const sy_route_cfg *route) {
  return (unsigned)(route->upstream - cfg->upstreams);
}

/* A server's series are keyed by its set's serial and its place in the set:
 * a set found by DNS is an array of its own, and a later one may reuse its
 * address, so neither the server's pointer nor its offset from the
 * configuration's entries names it. */
static uint64_t server_key(const sy_server_cfg *s, unsigned tag, unsigned up, unsigned c) {
  return sy_metrics_key(s->set_serial, tag, up, s->set_index, c);
}

enum shape { BY_ROUTE, UNLABELLED, BY_SERVER };

/* A counter's cell by key; on a miss, its labels (the shape's, then
 * extra_label="extra") are built and the series looked up. NULL when the
 * table is full. */
static int64_t *counter(sy_metrics *m, uint64_t key, const char *name, sy_buf *lb,
                        const sy_route_cfg *route, const sy_server_cfg *server, enum shape shape,
                        const char *extra_label, const char *extra) {
  int64_t *cell = sy_metrics_cache_get(m, key);
  if (cell) return cell;
  lb->len = 0;
  if (shape == BY_ROUTE)
    route_label(lb, route);
  else if (shape == BY_SERVER)
    server_labels(lb, route, server);
  if (extra_label) sy_metrics_label(lb, extra_label, extra, strlen(extra));
  sy_metrics_add_cell(m, &cell, name, shape == UNLABELLED ? NULL : end_labels(lb), 0);
  sy_metrics_cache_put(m, key, cell);
  return cell;
}

static void bump(int64_t *cell, int64_t d) {
  if (cell && d) __atomic_add_fetch(cell, d, __ATOMIC_RELAXED);
}

/* The same for a histogram labelled by route or by upstream. */
static sy_hist *hist(sy_metrics *m, uint64_t key, const char *name, sy_buf *lb,
                     const sy_route_cfg *route, int by_upstream) {
  sy_hist *h = sy_metrics_cache_get(m, key);
  if (h) return h;
  lb->len = 0;
  if (by_upstream)
    upstream_label(lb, route);
  else
    route_label(lb, route);
  h = sy_metrics_hist(m, name, end_labels(lb));
  sy_metrics_cache_put(m, key, h);
  return h;
}

/* ---- events ---- */

void sy_stats_response(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                       const sy_server_cfg *server, int status, uint64_t ns) {
  unsigned c = class_of(status);
  int up = status == 101;
  uint64_t k =
      sy_metrics_key(cfg->serial, up ? TAG_UPGRADE_HIST : TAG_REQUEST_HIST, route_ix(route), 0, 0);
  sy_metrics_observe(
      hist(m, k, up ? "switchyard_upgrade_duration_seconds" : "switchyard_request_duration_seconds",
           lb, route, 0),
      ns);
  k = sy_metrics_key(cfg->serial, TAG_REQUESTS, route_ix(route), 0, c);
  bump(counter(m, k, "switchyard_requests_total", lb, route, NULL, BY_ROUTE, "class", classes[c]),
       1);
  if (!server || !route || !route->upstream) return;
  k = server_key(server, TAG_UPSTREAM_REQUESTS, upstream_ix(cfg, route), c);
  bump(counter(m, k, "switchyard_upstream_requests_total", lb, route, server, BY_SERVER, "class",
               classes[c]),
       1);
}

/* A series labelled by protocol (and one more label), by key. */
static int64_t *by_protocol(sy_metrics *m, uint64_t key, const char *name, sy_buf *lb,
                            const sy_route_cfg *route, const char *proto, const char *label,
                            const char *value) {
  int64_t *cell = key ? sy_metrics_cache_get(m, key) : NULL;
  if (cell) return cell;
  lb->len = 0;
  if (route) route_label(lb, route);
  sy_metrics_label(lb, "protocol", proto, strlen(proto));
  if (label) sy_metrics_label(lb, label, value, strlen(value));
  sy_metrics_add_cell(m, &cell, name, end_labels(lb), 0);
  if (key) sy_metrics_cache_put(m, key, cell);
  return cell;
}

void sy_stats_upgrade(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                      const char *token, size_t len, const char *outcome) {
  static const char *const outcomes[] = {"switched", "refused", "rejected"};
  unsigned pi, oi = 0;
  const char *p = protocol_of(route, token, len, &pi);
  while (oi < 3 && strcmp(outcomes[oi], outcome) != 0)
    oi++;
  /* The protocol's text depends on the route: the key names both. */
  uint64_t k = oi < 3 ? sy_metrics_key(cfg->serial, TAG_UPGRADES, route_ix(route), pi, oi) : 0;
  bump(by_protocol(m, k, "switchyard_upgrades_total", lb, NULL, p, "outcome", outcome), 1);
}

void sy_stats_tunnel_count(sy_metrics *m, sy_buf *lb, const sy_config *cfg,
                           const sy_route_cfg *route, const char *proto, int delta) {
  unsigned pi;
  const char *p = protocol_of(route, proto, strlen(proto), &pi);
  unsigned r = route_ix(route);
  uint64_t k = sy_metrics_key(cfg->serial, TAG_TUNNELS_OPEN, r, pi, 0);
  bump(by_protocol(m, k, "switchyard_tunnels_open", lb, route, p, NULL, NULL), delta);
  if (delta > 0) {
    k = sy_metrics_key(cfg->serial, TAG_TUNNELS_TOTAL, r, pi, 0);
    bump(by_protocol(m, k, "switchyard_tunnels_total", lb, route, p, NULL, NULL), 1);
  }
}

void sy_stats_connect(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                      uint64_t ns) {
  if (!route || !route->upstream) return;
  uint64_t k = sy_metrics_key(cfg->serial, TAG_CONNECT_HIST, upstream_ix(cfg, route), 0, 0);
  sy_metrics_observe(hist(m, k, "switchyard_upstream_connect_seconds", lb, route, 1), ns);
}

void sy_stats_first_byte(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                         uint64_t ns) {
  if (!route || !route->upstream) return;
  uint64_t k = sy_metrics_key(cfg->serial, TAG_FIRST_BYTE_HIST, upstream_ix(cfg, route), 0, 0);
  sy_metrics_observe(hist(m, k, "switchyard_upstream_first_byte_seconds", lb, route, 1), ns);
}

void sy_stats_server(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                     const sy_server_cfg *server, enum sy_stats_server_event ev) {
  if (!route || !route->upstream || !server) return;
  int fail = ev == SY_STATS_CONNECT_FAILURE;
  uint64_t k =
      server_key(server, fail ? TAG_CONNECT_FAILURES : TAG_RETRIES, upstream_ix(cfg, route), 0);
  bump(counter(m, k,
               fail ? "switchyard_upstream_connect_failures_total"
                    : "switchyard_upstream_retries_total",
               lb, route, server, BY_SERVER, NULL, NULL),
       1);
}

void sy_stats_tunnel_bytes(sy_metrics *m, sy_buf *lb, const sy_config *cfg,
                           const sy_route_cfg *route, const sy_tunnel_bytes *d) {
  for (unsigned dir = 0; dir < 2; dir++) {
    uint64_t n = dir ? d->u2c : d->c2u;
    if (!n) continue;
    uint64_t k = sy_metrics_key(cfg->serial, TAG_TUNNEL_BYTES, route_ix(route), 0, dir);
    bump(counter(m, k, "switchyard_tunnel_bytes_total", lb, route, NULL, BY_ROUTE, "direction",
                 dir ? "to_client" : "to_upstream"),
         (int64_t)n);
  }
  /* Unlabelled: one key for every snapshot (serial 1 is as good as any). */
  if (d->spliced)
    bump(counter(m, sy_metrics_key(1, TAG_SPLICED, 0, 0, 0),
                 "switchyard_tunnel_spliced_bytes_total", lb, NULL, NULL, UNLABELLED, NULL, NULL),
         (int64_t)d->spliced);
  if (d->copied)
    bump(counter(m, sy_metrics_key(1, TAG_COPIED, 0, 0, 0), "switchyard_tunnel_copied_bytes_total",
                 lb, NULL, NULL, UNLABELLED, NULL, NULL),
         (int64_t)d->copied);
}

void sy_stats_tunnel_end(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                         uint64_t ns) {
  uint64_t k = sy_metrics_key(cfg->serial, TAG_TUNNEL_HIST, route_ix(route), 0, 0);
  sy_metrics_observe(hist(m, k, "switchyard_tunnel_duration_seconds", lb, route, 0), ns);
}
