/* What a connection tells the operator: metric series (through the stats
 * module, labels only from the configuration) and access-log records of
 * requests and tunnels. */
#include <string.h>

#include "internal.h"
#include "switchyard/log.h"
#include "switchyard/stats.h"

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
                     .request_id = c->x.request_id[0] ? c->x.request_id : NULL,
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

static void count_request(sy_conn *c, uint64_t ns) {
  conn_xchg *x = &c->x;
  sy_conn_env *env = c->env;
  /* The upstream's own answer (a 101 included) counts for its server too. */
  const sy_server_cfg *from = x->resp_from_upstream || x->status == 101 ? x->server : NULL;
  sy_stats_response(env->metrics, labels(env), c->cfg, x->route, from, x->status, ns);
  if (!x->offered0[0]) return;
  /* Upgrades: switched, refused by the upstream, or rejected by the proxy
   * (a route that allows none of the tokens, or a 101 that failed checks). */
  const char *outcome = x->switching                    ? "switched"
                        : (x->bad_101 || !x->upgrading) ? "rejected"
                        : x->resp_from_upstream         ? "refused"
                                                        : "rejected";
  const char *tok = x->switching ? x->proto : x->offered0;
  sy_stats_upgrade(env->metrics, labels(env), c->cfg, x->route, tok, strlen(tok), outcome);
}

static void log_request(sy_conn *c, uint64_t ns) {
  conn_xchg *x = &c->x;
  if (!sy_access_log_enabled() || !x->method[0]) return;
  sy_flow *rq = &c->fl[SIDE_CLIENT];
  const sy_field *host = rq->buf && rq->head_done ? sy_head_find(&rq->head, rq->buf, "host") : NULL;
  char route[32];
  sy_access_request r = {
      .client_ip = c->client_ip,
      .client_port = c->client_port,
      .method = x->method,
      .host = host ? rq->buf + host->value.off : NULL,
      .host_len = host ? host->value.len : 0,
      .path = x->path,
      .path_len = x->path ? strlen(x->path) : 0,
      .http_major = rq->head_done ? rq->head.major : -1,
      .http_minor = rq->head_done ? rq->head.minor : -1,
      .request_id = x->request_id[0] ? x->request_id : NULL,
      .route = x->route ? sy_stats_route_name(x->route, route) : NULL,
      .upstream = x->server ? x->server->addr.text : NULL,
      .status = x->status,
      .bytes_in = x->bytes_in,
      .bytes_out = x->bytes_out,
      .duration_ns = (int64_t)ns,
      .upstream_connect_ns = x->connect_ns,
      .upstream_first_byte_ns = x->first_byte_ns,
      .termination = x->term,
  };
  sy_access_log_request(&r);
}

void report_request(sy_conn *c) {
  if (c->x.reported) return;
  c->x.reported = 1;
  uint64_t ns = uv_hrtime() - c->x.t_start;
  count_request(c, ns);
  log_request(c, ns);
}

void report_cut(sy_conn *c, enum sy_term why) {
  conn_xchg *x = &c->x;
  if (x->reported || !x->method[0]) return;
  x->term = why;
  /* The status line the client saw stays what it was; the series below is
   * what an alert on backend crashes and dropped clients looks at. */
  sy_buf *b = labels(c->env);
  char route[32];
  const char *rn = sy_stats_route_name(x->route, route);
  const char *reason = sy_term_name(why);
  sy_metrics_label(b, "route", rn, strlen(rn));
  sy_metrics_label(b, "reason", reason, strlen(reason));
  sy_buf_append(b, "", 1);
  sy_metrics_add(c->env->metrics, "switchyard_responses_incomplete_total", b->p, 1);
  report_request(c);
}

static void count_tunnel(const conn_note *n, int delta) {
  sy_stats_tunnel_count(n->env->metrics, labels(n->env), n->cfg, n->route, n->proto, delta);
}

void report_tunnel_open(const conn_note *n) {
  count_tunnel(n, 1);
}

void report_tunnel_bytes(const conn_note *n, const sy_tunnel_bytes *d) {
  sy_conn_env *env = n->env;
  sy_stats_tunnel_bytes(env->metrics, labels(env), n->cfg, n->route, d);
}

void report_tunnel_closed(const conn_note *n, const sy_tunnel_stats *st) {
  sy_conn_env *env = n->env;
  count_tunnel(n, -1);
  sy_stats_tunnel_end(env->metrics, labels(env), n->cfg, n->route, st->duration_ms * 1000000);
  report_tunnel_bytes(n, &st->unreported);
  if (!sy_access_log_enabled()) return;
  char route[32];
  sy_access_tunnel t = {
      .client_ip = n->client_ip,
      .client_port = n->client_port,
      .protocol = n->proto,
      .path = n->path,
      .path_len = n->path ? strlen(n->path) : 0,
      .request_id = n->request_id,
      .route = n->route ? sy_stats_route_name(n->route, route) : NULL,
      .upstream = n->server ? n->server->addr.text : NULL,
      .duration_ms = st->duration_ms,
      .bytes_to_upstream = st->bytes_c2u,
      .bytes_to_client = st->bytes_u2c,
      .spliced = st->spliced,
      .copied = st->copied,
      .closed_by = st->closed_by,
      .reason = st->reason,
      .termination = sy_term_for_tunnel(st->closed_by, st->reason),
  };
  sy_access_log_tunnel(&t);
}
