/* The upstream connection of an exchange: choosing a server, connecting (or
 * taking one from the keep-alive pool), TLS towards it, one retry of a stale
 * pooled connection, and giving the connection back or closing it. */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "internal.h"
#include "switchyard/log.h"
#include "switchyard/proxyproto.h"
#include "switchyard/stats.h"
#include "switchyard/upstream.h"

static void server_event(sy_conn *c, const sy_server_cfg *s, enum sy_stats_server_event ev) {
  c->env->labels.len = 0;
  sy_stats_server(c->env->metrics, &c->env->labels, c->cfg, c->x.route, s, ev);
}

static void on_link_closed(void *arg) {
  conn_unref(arg);
}

static void server_counted(sy_conn *c, int on) {
  if (c->server_counted == (unsigned)on) return;
  c->server_counted = on;
  if (c->x.server) sy_upstream_active_add(c->x.server, on ? 1 : -1);
}

void upstream_link_close(sy_conn *c) {
  sy_link *l = c->link;
  if (!l) return;
  c->link = NULL;
  sy_tls_conn_free(c->tls[SIDE_UPSTREAM]);
  c->tls[SIDE_UPSTREAM] = NULL;
  server_counted(c, 0);
  sy_link_close(l);
}

/* After a response: the upstream connection goes back to the worker's pool
 * when it can carry another request, else it closes. */
void upstream_link_release(sy_conn *c) {
  sy_link *l = c->link;
  sy_flow *rq = &c->fl[SIDE_CLIENT], *rs = &c->fl[SIDE_UPSTREAM];
  const sy_upstream_cfg *up = c->x.route ? c->x.route->upstream : NULL;
  /* A connection that carried one client's PROXY header is that client's. */
  int reusable = l && up && !c->tls[SIDE_UPSTREAM] && !c->x.upgrading && c->env->upool &&
                 !up->send_proxy && !c->env->stopping && c->x.link_used && !rs->eof &&
                 !l->sock.rdhup && !l->sock.failed && /* a FIN seen with the response, unread */
                 rs->msg_done && rq->msg_done && !rq->writing && rs->pos == rs->len &&
                 llhttp_should_keep_alive(&rs->parser) && c->x.resp_from_upstream;
  if (!reusable) {
    upstream_link_close(c);
    return;
  }
  c->link = NULL;
  server_counted(c, 0);
  /* A pooled link is read by the upstream side's callbacks, which close it
   * on any byte or EOF while it has no connection (l->c == NULL). Started
   * even when it reads already: an EOF that came while the response was
   * being written found no buffer, and edge-triggered it is not reported
   * again; the start acts on it. */
  l->c = NULL;
  conn_link_read(l);
  if (sy_upool_put(c->env->upool, l, up->keepalive_max_idle, up->keepalive_idle) < 0)
    sy_link_close(l);
  /* The link's reference on the connection ends here either way. */
  conn_unref(c);
}

static void take_link(sy_conn *c, sy_link *l) {
  l->c = c;
  l->on_closed = on_link_closed;
  c->refs++; /* the link handle */
  c->link = l;
  c->x.link_used = 1;
  server_counted(c, 1);
}

/* upstreams.NAME.send_proxy: the client's addresses go first on the new
 * connection, before TLS and before the request (a socket keeps its writes
 * in order; a write tried at once waits behind a queued one). */
static int send_proxy_header(sy_conn *c, const sy_upstream_cfg *up) {
  sy_buf b = {0};
  const struct sockaddr *src = (const struct sockaddr *)&c->peer;
  const struct sockaddr *dst = (const struct sockaddr *)conn_local(c);
  int rc = up->send_proxy == SY_PP_V2 ? sy_pp_build_v2(&b, src, dst) : sy_pp_build_v1(&b, src, dst);
  if (rc == 0) rc = conn_raw_write(c, &c->link->sock, &b);
  sy_buf_free(&b);
  return rc;
}

static void on_connect(sy_sock *st, int status) {
  sy_link *l = st->data;
  sy_conn *c = l->c;
  if (!c || conn_closed(c) || c->link != l) {
    if (c) conn_unref(c);
    return;
  }
  conn_unref(c);
  if (status < 0) {
    upstream_link_close(c);
    upstream_failed(c, status == UV_ETIMEDOUT ? SY_TERM_CONNECT_TIMEOUT : SY_TERM_CONNECT_FAILED);
    return;
  }
  int one = 1;
  setsockopt(sy_sock_fd(&l->sock), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  const sy_upstream_cfg *up = c->x.route->upstream;
  if (up->send_proxy && send_proxy_header(c, up) < 0) {
    c->x.term = SY_TERM_INTERNAL;
    local_response(c, 500, 1);
    return;
  }
  if (up->tls_ctx) {
    const char *sni = up->tls.sni ? up->tls.sni : c->x.server->addr.host;
    c->tls[SIDE_UPSTREAM] = sy_tls_conn_new(up->tls_ctx, 0, sni, up->tls.verify);
    if (!c->tls[SIDE_UPSTREAM]) {
      c->x.term = SY_TERM_INTERNAL;
      local_response(c, 500, 1);
      return;
    }
    c->io->read_update(c, SIDE_UPSTREAM);
    conn_tls_pump(c, SIDE_UPSTREAM); /* the ClientHello; upstream_ready follows the handshake */
    return;
  }
  upstream_ready(c);
}

/* The upstream connection can carry the request: send the head, then the body. */
void upstream_ready(sy_conn *c) {
  sy_flow *rq = &c->fl[SIDE_CLIENT];
  uint64_t now = uv_hrtime();
  if (c->x.t_connect) { /* a fresh connection (TLS handshake included) */
    sy_upstream_report(c->x.route->upstream, c->x.server, 1, uv_now(c->env->loop));
    c->x.connect_ns = (int64_t)(now - c->x.t_connect);
    c->x.t_connect = 0;
    c->env->labels.len = 0;
    sy_stats_connect(c->env->metrics, &c->env->labels, c->cfg, c->x.route,
                     (uint64_t)c->x.connect_ns);
  } else {
    c->x.connect_ns = 0; /* a pooled one */
  }
  c->x.t_sent = now;
  conn_set_state(c, rq->msg_done ? CS_READ_RESP : CS_SEND_BODY);
  conn_timer_arm(c, conn_response_timeout(c));
  if (c->x.retry_head.len) {
    /* A stale pooled connection failed this request before any answer: the
     * same head goes once more on a fresh connection. */
    sy_flow_push_copy(rq, c->x.retry_head.p, c->x.retry_head.len);
    c->x.retry_head.len = 0;
    http_flush(c, SIDE_CLIENT);
    c->io->read_update(c, SIDE_UPSTREAM);
    return;
  }
  if (request_queue_head(c) < 0) {
    c->x.term = SY_TERM_INTERNAL;
    local_response(c, 500, 1);
    return;
  }
  if (c->link->reused && sy_http_method_idempotent(c->x.method) && !c->x.has_body &&
      !c->x.upgrading && rq->scratch.len < 65536)
    sy_buf_append(&c->x.retry_head, rq->scratch.p, rq->scratch.len);
  /* Resume the request parser: body bytes already buffered join the head. */
  llhttp_resume(&rq->parser);
  http_feed(c, SIDE_CLIENT);
  c->io->read_update(c, SIDE_UPSTREAM);
}

/* A reused connection that died before any response byte: retry once. */
int upstream_retry_stale(sy_conn *c) {
  if (!c->link || !c->link->reused || c->fl[SIDE_UPSTREAM].bytes || !c->x.retry_head.len ||
      c->x.retried)
    return 0;
  c->x.retried = 1;
  sy_metrics_add(c->env->metrics, "switchyard_upstream_stale_retries_total", NULL, 1);
  server_event(c, c->x.server, SY_STATS_RETRY);
  upstream_link_close(c);
  sy_flow_batch_done(&c->fl[SIDE_CLIENT]);
  c->x.fresh_only = 1;
  c->x.tried &= ~(1ull << (c->x.server - c->x.set->servers));
  upstream_connect(c);
  return 1;
}

void upstream_connect(sy_conn *c) {
  sy_upstream_cfg *up = (sy_upstream_cfg *)c->x.route->upstream; /* its cursor moves */
  /* One set for the whole exchange: retries index the same servers. */
  if (!c->x.set) c->x.set = sy_upstream_acquire(up);
  int i = sy_upstream_pick_set(up, c->x.set, c->x.tried, c->x.key_hash, uv_now(c->env->loop));
  if (i < 0) {
    if (i == SY_PICK_ALL_DOWN)
      sy_log_every_second(SY_LOG_ERROR, "upstream %s: no server is up", up->name);
    enum sy_term last = c->x.last_err ? (enum sy_term)c->x.last_err : SY_TERM_CONNECT_FAILED;
    c->x.term = i == SY_PICK_ALL_DOWN ? SY_TERM_NO_SERVER : last;
    local_response(c, i == SY_PICK_ALL_DOWN ? 503 : last == SY_TERM_CONNECT_TIMEOUT ? 504 : 502, 0);
    return;
  }
  if (c->x.retry_from) { /* the last server failed: this pick is a retry */
    server_event(c, c->x.retry_from, SY_STATS_RETRY);
    c->x.retry_from = NULL;
  }
  c->x.tried |= 1ull << i;
  const sy_server_cfg *s = &c->x.set->servers[i];
  c->x.server = s;
  conn_set_state(c, CS_CONNECT);
  if (!up->tls_ctx && !up->send_proxy && !c->x.fresh_only && c->env->upool) {
    sy_link *pooled = sy_upool_get(c->env->upool, s);
    if (pooled) {
      take_link(c, pooled);
      sy_metrics_add(c->env->metrics, "switchyard_upstream_pool_reuses_total", NULL, 1);
      upstream_ready(c);
      return;
    }
  }
  sy_link *l = sy_link_new(c->env->ev, s);
  if (!l) {
    c->x.term = SY_TERM_INTERNAL;
    local_response(c, 500, 1);
    return;
  }
  take_link(c, l);
  c->x.t_connect = uv_hrtime();
  int rc = sy_sock_connect(&l->sock, (const struct sockaddr *)&s->addr.sa, on_connect);
  if (rc == UV_EMFILE || rc == UV_ENFILE || rc == UV_ENOBUFS || rc == UV_ENOMEM) {
    /* Our own shortage, not the server's fault: no passive ejection. */
    sy_log_every_second(SY_LOG_ERROR,
                        "upstream %s: cannot open a socket: %s (out of file descriptors?)",
                        s->addr.text, uv_strerror(rc));
    upstream_link_close(c);
    c->x.term = SY_TERM_INTERNAL;
    local_response(c, 503, 1);
    return;
  }
  if (rc < 0) {
    upstream_link_close(c);
    upstream_failed(c, SY_TERM_CONNECT_FAILED);
    return;
  }
  c->refs++; /* the connect request */
  /* The socket delivers no read before the connect callback, which decides
   * whether reading stays on. */
  conn_link_read(l);
  conn_timer_arm(c, conn_route_timeout(c->x.route->timeouts.connect, c->cfg->timeouts.connect));
}

/* A server that took no byte of the request: counted against it, then the
 * next one. A failed TLS handshake is one too, as in nginx and HAProxy; its
 * caller logged the reason. */
void upstream_failed(sy_conn *c, enum sy_term why) {
  c->x.last_err = why;
  c->x.t_connect = 0;
  if (why != SY_TERM_UPSTREAM_TLS)
    sy_log_every_second(SY_LOG_ERROR, "upstream %s: %s", conn_peer(c, SIDE_UPSTREAM),
                        why == SY_TERM_CONNECT_TIMEOUT ? "connect timed out" : "connect failed");
  if (c->x.server) {
    sy_upstream_report(c->x.route->upstream, c->x.server, 0, uv_now(c->env->loop));
    server_event(c, c->x.server, SY_STATS_CONNECT_FAILURE);
    c->x.retry_from = c->x.server;
  }
  upstream_connect(c); /* the next server: no byte of the request was sent yet */
}
