/* What a connection tells the operator: metric series and access-log
 * records of requests and tunnels. */
#include <string.h>

#include "internal.h"
#include "switchyard/log.h"

/* A route as logs and metrics name it: its name, or "#<index>"; NULL for
 * no route. `idx` holds the generated name. */
static const char *route_name(const sy_route_cfg *route, char idx[32]) {
  if (!route) return NULL;
  if (route->name) return route->name;
  /* Per request (metrics): no snprintf. */
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

static void route_label(const sy_route_cfg *route, sy_buf *b) {
  char idx[32];
  const char *r = route_name(route, idx);
  sy_metrics_label(b, "route", r ? r : "", r ? strlen(r) : 0);
}

/* The env's label buffer, emptied: labels are built per request and per
 * tunnel, and a fresh buffer each time was a malloc and a free. */
static sy_buf *labels(sy_conn_env *env) {
  env->labels.len = 0;
  return &env->labels;
}

conn_note report_note_of(sy_conn *c) {
  return (conn_note){.env = c->env,
                     .cfg = c->cfg,
                     .route = c->x.route,
                     .set = c->x.set,
                     .server = c->x.server,
                     .proto = c->x.proto,
                     .client_ip = c->client_ip,
                     .path = c->x.path,
                     .client_port = c->client_port,
                     .client_counted = c->client_counted};
}

void report_accept(sy_conn_env *env) {
  sy_metrics_add_cell(env->metrics, &env->cell.accepted, "switchyard_connections_accepted_total",
                      NULL, 1);
  sy_metrics_add_cell(env->metrics, &env->cell.open, "switchyard_connections_open", NULL, 1);
}

void report_conn_closed(sy_conn_env *env) {
  sy_metrics_add_cell(env->metrics, &env->cell.open, "switchyard_connections_open", NULL, -1);
}

static void count_request(sy_conn *c) {
  static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
  conn_xchg *x = &c->x;
  sy_buf *b = labels(c->env);
  route_label(x->route, b);
  const char *cls = x->status >= 100 && x->status < 600 ? classes[x->status / 100 - 1] : "other";
  sy_metrics_label(b, "class", cls, strlen(cls));
  sy_buf_append(b, "", 1);
  sy_metrics_add(c->env->metrics, "switchyard_requests_total", b->p, 1);
  if (!x->offered0[0]) return;
  /* Upgrades: switched, refused by the upstream, or rejected by the proxy
   * (a route that allows none of the tokens, or a 101 that failed checks). */
  const char *outcome = x->switching                    ? "switched"
                        : (x->bad_101 || !x->upgrading) ? "rejected"
                        : x->resp_from_upstream         ? "refused"
                                                        : "rejected";
  const char *proto = x->switching ? x->proto : x->offered0;
  b = labels(c->env); /* the same buffer for the second series */
  sy_metrics_label(b, "protocol", proto, strlen(proto));
  sy_metrics_label(b, "outcome", outcome, strlen(outcome));
  sy_buf_append(b, "", 1);
  sy_metrics_add(c->env->metrics, "switchyard_upgrades_total", b->p, 1);
}

static void log_request(sy_conn *c) {
  conn_xchg *x = &c->x;
  if (!sy_access_log_enabled() || !x->method[0]) return;
  sy_buf b = {0};
  char route[32];
  const char *rname = route_name(x->route, route);
  sy_buf_append(&b, "{", 1);
  sy_json_time(&b, "time", 0);
  sy_buf_appendf(&b, ",\"type\":\"request\"");
  sy_buf_appendf(&b, ",\"client\":\"%s:%d\"", c->client_ip, c->client_port);
  sy_json_str(&b, "method", x->method, strlen(x->method), 1);
  sy_json_str(&b, "path", x->path, x->path ? strlen(x->path) : 0, 1);
  sy_json_str(&b, "route", rname, rname ? strlen(rname) : 0, 1);
  const char *srv = x->server ? x->server->addr.text : NULL;
  sy_json_str(&b, "upstream", srv, srv ? strlen(srv) : 0, 1);
  sy_buf_appendf(&b, ",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu,\"duration_ms\":%.3f}\n",
                 x->status, (unsigned long long)x->bytes_in, (unsigned long long)x->bytes_out,
                 (double)(uv_hrtime() - x->t_start) / 1e6);
  if (b.p) sy_access_log_write(b.p, b.len);
  sy_buf_free(&b);
}

void report_request(sy_conn *c) {
  count_request(c);
  log_request(c);
}

static void count_tunnel(const conn_note *n, int delta, const sy_tunnel_stats *st) {
  sy_conn_env *env = n->env;
  sy_metrics *m = env->metrics;
  sy_buf *b = labels(env);
  route_label(n->route, b);
  sy_metrics_label(b, "protocol", n->proto, strlen(n->proto));
  sy_buf_append(b, "", 1);
  sy_metrics_add(m, "switchyard_tunnels_open", b->p, delta);
  if (delta > 0) sy_metrics_add(m, "switchyard_tunnels_total", b->p, 1);
  if (st) {
    sy_metrics_add_cell(m, &env->cell.to_upstream, "switchyard_tunnel_bytes_total",
                        "direction=\"to_upstream\"", (int64_t)st->bytes_c2u);
    sy_metrics_add_cell(m, &env->cell.to_client, "switchyard_tunnel_bytes_total",
                        "direction=\"to_client\"", (int64_t)st->bytes_u2c);
    sy_metrics_add_cell(m, &env->cell.spliced, "switchyard_tunnel_spliced_bytes_total", NULL,
                        (int64_t)st->spliced);
    sy_metrics_add_cell(m, &env->cell.copied, "switchyard_tunnel_copied_bytes_total", NULL,
                        (int64_t)st->copied);
  }
}

static void log_tunnel(const conn_note *n, const sy_tunnel_stats *st) {
  if (!sy_access_log_enabled()) return;
  sy_buf b = {0};
  char route[32];
  const char *rname = route_name(n->route, route);
  sy_buf_append(&b, "{", 1);
  sy_json_time(&b, "time", 0);
  sy_buf_appendf(&b, ",\"type\":\"tunnel\",\"client\":\"%s:%d\"", n->client_ip, n->client_port);
  sy_json_str(&b, "protocol", n->proto, strlen(n->proto), 1);
  sy_json_str(&b, "path", n->path, n->path ? strlen(n->path) : 0, 1);
  sy_json_str(&b, "route", rname, rname ? strlen(rname) : 0, 1);
  const char *srv = n->server ? n->server->addr.text : NULL;
  sy_json_str(&b, "upstream", srv, srv ? strlen(srv) : 0, 1);
  sy_buf_appendf(&b,
                 ",\"duration_ms\":%llu,\"bytes_to_upstream\":%llu,\"bytes_to_client\":%llu,"
                 "\"spliced\":%llu,\"copied\":%llu",
                 (unsigned long long)st->duration_ms, (unsigned long long)st->bytes_c2u,
                 (unsigned long long)st->bytes_u2c, (unsigned long long)st->spliced,
                 (unsigned long long)st->copied);
  sy_json_str(&b, "closed_by", st->closed_by, strlen(st->closed_by), 1);
  sy_json_str(&b, "reason", st->reason, strlen(st->reason), 1);
  sy_buf_append(&b, "}\n", 2);
  if (b.p) sy_access_log_write(b.p, b.len);
  sy_buf_free(&b);
}

void report_tunnel_open(const conn_note *n) {
  count_tunnel(n, 1, NULL);
}

void report_tunnel_closed(const conn_note *n, const sy_tunnel_stats *st) {
  count_tunnel(n, -1, st);
  log_tunnel(n, st);
}
