/* The hand-off of a switched cleartext connection to the worker's tunnel hub,
 * which splices its bytes from then on; and the tunnel's end, reported back. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "switchyard/limits.h"
#include "switchyard/log.h"
#include "switchyard/upstream.h"

void sy_conn_tunnel_progress(sy_tunnel *t, const sy_tunnel_bytes *d, void *arg) {
  report_tunnel_bytes(sy_tunnel_extra(t), d);
}

void sy_conn_tunnel_done(sy_tunnel *t, const sy_tunnel_stats *st, void *arg) {
  conn_note *n = sy_tunnel_extra(t);
  sy_conn_env *env = n->env;
  report_tunnel_closed(n, st);
  if (n->server) sy_upstream_active_add(n->server, -1);
  sy_server_set_unref(n->set);
  if (n->client_counted) sy_limits_client_release(n->client_ip);
  sy_limits_tunnels_add(-1);
  sy_config_unref(n->cfg);
  report_conn_closed(env);
  env->conn_gone(env);
}

/* Copies s after the note; returns where it went. */
static const char *note_str(char **at, const char *s) {
  if (!s) return NULL;
  size_t l = strlen(s) + 1;
  memcpy(*at, s, l);
  const char *r = *at;
  *at += l;
  return r;
}

void handoff_start(sy_conn *c) {
  sy_sock *cs = &c->client, *us = c->link ? &c->link->sock : NULL;
  if (!us || cs->wq || us->wq || cs->connecting || us->connecting) {
    /* Both sides are idle when a 101 is handed over; only a bug gets here. */
    sy_log_error("BUG: tunnel hand-off of a socket still in use");
    conn_close(c);
    return;
  }
  c->x.status = 101;
  report_request(c);
  /* Bytes read past either head go first, in order. */
  sy_flow *q = &c->fl[SIDE_CLIENT], *r = &c->fl[SIDE_UPSTREAM];
  const sy_route_cfg *rt = c->x.route;
  sy_tunnel_opts o = {
      .idle_timeout_ms = conn_route_timeout(rt->timeouts.tunnel_idle, c->cfg->timeouts.tunnel_idle),
      .fin_timeout_ms = conn_route_timeout(rt->timeouts.tunnel_fin, c->cfg->timeouts.tunnel_fin),
      .force_copy = 0,
      /* Already in the worker's set, non-blocking, held by no one else: the
       * tunnel takes their events over with what the sockets knew of them. */
      .registered = 1,
      .readable = {cs->readable, us->readable},
      .rdhup = {cs->rdhup, us->rdhup},
  };
  size_t extra = sizeof(conn_note) + strlen(c->x.proto) + strlen(c->client_ip) + 2 +
                 (c->x.path ? strlen(c->x.path) + 1 : 0) +
                 (c->x.request_id[0] ? strlen(c->x.request_id) + 1 : 0);
  conn_set_state(c, CS_TUNNEL);
  sy_tunnel *t = sy_tunnel_start(c->env->tunnels, sy_sock_fd(cs), sy_sock_fd(us),
                                 q->buf ? q->buf + q->pos : NULL, q->buf ? q->len - q->pos : 0,
                                 r->buf ? r->buf + r->pos : NULL, r->buf ? r->len - r->pos : 0, &o,
                                 extra, NULL);
  if (!t) {
    /* The connection still owns its sockets: conn_close closes them. */
    sy_log_every_second(SY_LOG_ERROR, "tunnel: cannot hand over: %s", strerror(errno));
  } else {
    /* The tunnel's now: the sockets let go of them without a system call. */
    conn_client_release(c);
    sy_link_release_fd(c->link);
    conn_note *n = sy_tunnel_extra(t);
    char *at = (char *)(n + 1);
    *n = report_note_of(c);
    n->cfg = sy_config_ref(c->cfg);
    if (n->set) sy_server_set_ref(n->set);
    n->proto = note_str(&at, c->x.proto);
    n->client_ip = note_str(&at, c->client_ip);
    n->path = note_str(&at, c->x.path);
    n->request_id = note_str(&at, n->request_id);
    /* From here the note is the client's connection: it counts towards
     * max_connections and, as a tunnel, towards the server's open
     * connections (least_conn) until the tunnel ends. */
    report_tunnel_open(n);
    sy_limits_tunnels_add(1);
    c->handed_off = 1;
    c->server_counted = 0;
  }
  /* The tunnel owns the sockets; the connection, its timer and its buffers
   * go now. */
  conn_close(c);
}
