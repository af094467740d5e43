/* A connection's lifetime: accept, the state and who may move it, timers,
 * references, closing and lingering, and the worker-wide operations (drain,
 * close all). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "switchyard/limits.h"
#include "switchyard/log.h"

/* ---- the state ---------------------------------------------------------------- */

#define BIT(s) (1u << (s))

/* Where each state may go (besides staying, and besides CLOSED, always allowed). */
static const unsigned next_ok[CS_NSTATES] = {
    [CS_READ_HEAD] = BIT(CS_CONNECT) | BIT(CS_SEND_RESP),
    [CS_CONNECT] = BIT(CS_SEND_BODY) | BIT(CS_READ_RESP) | BIT(CS_SEND_RESP),
    [CS_SEND_BODY] =
        BIT(CS_CONNECT) | BIT(CS_READ_RESP) | BIT(CS_SEND_RESP) | BIT(CS_TUNNEL) | BIT(CS_RELAY),
    [CS_READ_RESP] = BIT(CS_CONNECT) | BIT(CS_SEND_RESP) | BIT(CS_TUNNEL) | BIT(CS_RELAY),
    [CS_SEND_RESP] = BIT(CS_READ_HEAD) | BIT(CS_LINGER),
    [CS_TUNNEL] = 0,
    [CS_RELAY] = 0,
    [CS_LINGER] = 0,
    [CS_CLOSED] = 0,
};

const char *conn_state_name(conn_state s) {
  static const char *const names[CS_NSTATES] = {
      [CS_READ_HEAD] = "READ_HEAD", [CS_CONNECT] = "CONNECT",     [CS_SEND_BODY] = "SEND_BODY",
      [CS_READ_RESP] = "READ_RESP", [CS_SEND_RESP] = "SEND_RESP", [CS_TUNNEL] = "TUNNEL",
      [CS_RELAY] = "RELAY",         [CS_LINGER] = "LINGER",       [CS_CLOSED] = "CLOSED",
  };
  return (unsigned)s < CS_NSTATES ? names[s] : "?";
}

void conn_set_state(sy_conn *c, conn_state to) {
  conn_state from = c->state;
  if (from == to) return;
  if (from == CS_CLOSED || (to != CS_CLOSED && !(next_ok[from] & BIT(to)))) {
    /* A transition the diagram does not have is a bug: stop before it
     * turns into a desync or a use-after-free. */
    sy_log_error("BUG: connection %s:%d: %s -> %s", c->client_ip, c->client_port,
                 conn_state_name(from), conn_state_name(to));
    abort();
  }
  CONN_TRACE("connection %s:%d: %s -> %s", c->client_ip, c->client_port, conn_state_name(from),
             conn_state_name(to));
  c->state = to;
}

/* ---- the exchange ------------------------------------------------------------- */

void conn_xchg_reset(sy_conn *c) {
  sy_buf retry = c->x.retry_head;
  retry.len = 0; /* capacity kept: no allocation per request */
  free(c->x.path);
  sy_server_set_unref(c->x.set);
  c->x = (conn_xchg){.retry_head = retry, .connect_ns = -1, .first_byte_ns = -1};
}

/* ---- timers ------------------------------------------------------------------- */

sy_msec_t conn_route_timeout(sy_msec_t route_v, sy_msec_t global_v) {
  return route_v ? route_v : global_v;
}

sy_msec_t conn_response_timeout(const sy_conn *c) {
  return conn_route_timeout(c->x.route ? c->x.route->timeouts.response : 0,
                            c->cfg->timeouts.response);
}

static void on_timeout(uv_timer_t *t);

/* The deadline moves at every step of every request (header, response,
 * idle...), but the libuv timer is only moved when the deadline comes
 * earlier than it: a timer that fires early finds the later deadline and
 * sleeps again. That spares two timer-heap operations per request. */
void conn_timer_arm(sy_conn *c, sy_msec_t ms) {
  if (!ms) {
    c->deadline = 0;
    return;
  }
  c->deadline = uv_now(c->env->loop) + ms;
  if (!uv_is_active((uv_handle_t *)&c->timer) || c->timer_due > c->deadline) {
    uv_timer_start(&c->timer, on_timeout, ms, 0);
    c->timer_due = c->deadline;
  }
}

static void on_timeout(uv_timer_t *t) {
  sy_conn *c = t->data;
  uint64_t now = uv_now(c->env->loop);
  if (!c->deadline) return;
  if (now < c->deadline) { /* moved on since the timer was set */
    uv_timer_start(&c->timer, on_timeout, c->deadline - now, 0);
    c->timer_due = c->deadline;
    return;
  }
  c->deadline = 0;
  sy_flow *rq = &c->fl[SIDE_CLIENT];
  switch (c->state) {
  case CS_READ_HEAD:
    if (c->io == &conn_pp_io) { /* no PROXY header in time: nobody to answer */
      conn_pp_failed(c, "timeout");
    } else if (rq->len > rq->head_start && !rq->head_done) {
      c->x.term = SY_TERM_HEADER_TIMEOUT;
      local_response(c, 408, 1);
    } else
      conn_close(c); /* idle keep-alive */
    break;
  case CS_CONNECT:
    upstream_link_close(c);
    upstream_failed(c, SY_TERM_CONNECT_TIMEOUT); /* the TLS handshake included */
    break;
  case CS_SEND_BODY:
    if (!rq->msg_done && !rq->writing && !c->x.resp_head_sent) {
      /* The client stopped sending its body (not the upstream reading it). */
      char who[80];
      sy_log_every_second(SY_LOG_WARN, "client %s: request body stalled (limits.body_timeout)",
                          conn_client_text(c, who));
      c->x.term = SY_TERM_BODY_TIMEOUT;
      local_response(c, 408, 1);
      break;
    }
    /* fall through */
  case CS_READ_RESP:
  case CS_SEND_RESP:
    sy_log_every_second(SY_LOG_WARN, "upstream %s: no response in time",
                        conn_peer(c, SIDE_UPSTREAM));
    c->x.term = SY_TERM_RESPONSE_TIMEOUT;
    if (!c->x.resp_head_sent) {
      local_response(c, 504, 1);
    } else {
      report_cut(c, SY_TERM_RESPONSE_TIMEOUT);
      conn_close(c);
    }
    break;
  case CS_RELAY:
    c->relay.closed_by = "proxy";
    relay_end(c, (c->fl[0].eof || c->fl[1].eof) ? "fin_timeout" : "idle_timeout");
    break;
  default:
    conn_close(c);
  }
}

/* ---- lifetime ------------------------------------------------------------------ */

static void conn_free(sy_conn *c) {
  sy_conn_env *env = c->env;
  if (c->prev)
    c->prev->next = c->next;
  else if (env->conns == c)
    env->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (!env->conns) env->conns_idle(env);
  for (int s = 0; s < 2; s++) {
    sy_flow_free(&c->fl[s], &env->flows);
    sy_tls_conn_free(c->tls[s]);
  }
  free(c->x.path);
  sy_server_set_unref(c->x.set);
  sy_buf_free(&c->x.retry_head);
  int handed_off = c->handed_off;
  if (c->client_counted && !handed_off) sy_limits_client_release(c->client_ip);
  sy_config_unref(c->cfg);
  free(c);
  if (!handed_off) { /* a spliced tunnel still counts as the client's connection */
    report_conn_closed(env);
    env->conn_gone(env);
  }
}

void conn_unref(sy_conn *c) {
  if (--c->refs == 0 && c->state == CS_CLOSED) conn_free(c);
}

static void on_handle_closed(uv_handle_t *h) {
  conn_unref(h->data);
}

static void on_client_closed(sy_sock *s) {
  conn_unref(s->data);
}

int conn_client_release(sy_conn *c) {
  return sy_sock_release(&c->client, on_client_closed);
}

void conn_close(sy_conn *c) {
  if (c->state == CS_CLOSED) return;
  if (c->state == CS_RELAY && !c->relay.reported) relay_report(c, "error");
  conn_set_state(c, CS_CLOSED);
  upstream_link_close(c);
  if (!sy_sock_is_closing(&c->client)) sy_sock_close(&c->client, on_client_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

/* Close without losing the response: shut our side, then drain what the client
 * still sends until it closes or a short deadline, so the kernel does not
 * answer unread bytes with an RST that would destroy the response in flight. */
static void on_linger_read(sy_sock *s, ssize_t n, const uv_buf_t *buf) {
  sy_conn *c = s->data;
  if (n < 0) conn_close(c);
}

static void linger_alloc(sy_sock *s, uv_buf_t *buf) {
  static __thread char sink[4096]; /* drained, never kept */
  buf->base = sink;
  buf->len = sizeof(sink);
}

static void on_shutdown(sy_sock *s, int status) {
  sy_conn *c = s->data;
  if (status < 0 || c->state == CS_CLOSED) {
    conn_close(c);
  } else if (sy_sock_read_start(&c->client, linger_alloc, on_linger_read) < 0) {
    conn_close(c);
  }
  conn_unref(c);
}

void conn_linger(sy_conn *c) {
  if (c->state == CS_CLOSED || c->state == CS_LINGER) return;
  conn_set_state(c, CS_LINGER);
  upstream_link_close(c);
  sy_sock_read_stop(&c->client);
  /* A flow with a write in flight keeps its memory: the socket still holds
   * the request (its queue links live in the flow) and the bytes. conn_free
   * takes what is left. */
  for (int s = 0; s < 2; s++)
    if (!c->fl[s].writing) sy_flow_free(&c->fl[s], &c->env->flows);
  conn_timer_arm(c, LINGER_MS);
  if (c->tls[SIDE_CLIENT]) {
    sy_tls_shutdown(c->tls[SIDE_CLIENT]);
    conn_tls_flush(c, SIDE_CLIENT);
  }
  if (sy_sock_shutdown(&c->client, on_shutdown) == 0)
    c->refs++;
  else
    conn_close(c);
}

/* ---- accept -------------------------------------------------------------------- */

/* Dotted decimal, as inet_ntop writes it: libuv's goes through snprintf, which
 * was 3% of a handshake's user-space instructions. */
static void ip4_text(const struct sockaddr_in *a, char out[16]) {
  const unsigned char *p = (const unsigned char *)&a->sin_addr.s_addr;
  char *o = out;
  for (int i = 0; i < 4; i++) {
    unsigned v = p[i];
    if (v >= 100) *o++ = (char)('0' + v / 100);
    if (v >= 10) *o++ = (char)('0' + v / 10 % 10);
    *o++ = (char)('0' + v % 10);
    *o++ = i < 3 ? '.' : '\0';
  }
}

const char *conn_client_text(const sy_conn *c, char out[80]) {
  snprintf(out, 80, strchr(c->client_ip, ':') ? "[%s]:%d" : "%s:%d", c->client_ip, c->client_port);
  return out;
}

/* The client's address as text (headers, logs, limits): from the socket, or
 * from a PROXY protocol header. */
void conn_set_client(sy_conn *c, const struct sockaddr_storage *peer,
                     const struct sockaddr_storage *local) {
  const struct sockaddr_storage ss = *peer;
  c->peer = *peer;
  if (local) c->local = *local;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    ip4_text(a, c->client_ip);
    c->client_port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    c->client_port = ntohs(a->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
      /* An IPv4 client of a dual-stack listener is an IPv4 client: the same
       * text in headers, logs, hash(client) and per-client limits. */
      struct sockaddr_in v4 = {.sin_family = AF_INET};
      memcpy(&v4.sin_addr, &a->sin6_addr.s6_addr[12], 4);
      ip4_text(&v4, c->client_ip);
    } else {
      uv_ip6_name(a, c->client_ip, sizeof(c->client_ip));
    }
  }
}

/* The local address is only read when a PROXY header is sent upstream
 * (conn_local): one system call fewer per connection. */
const struct sockaddr_storage *conn_local(sy_conn *c) {
  if (c->local.ss_family == 0) {
    socklen_t len = sizeof(c->local);
    getsockname(sy_sock_fd(&c->client), (struct sockaddr *)&c->local, &len);
  }
  return &c->local;
}

void sy_conn_accept(sy_conn_env *env, int fd, const struct sockaddr_storage *peer,
                    const sy_listener_cfg *lcfg) {
  sy_conn *c = calloc(1, sizeof(*c));
  if (c) {
    sy_sock_init(&c->client, env->ev);
    c->client.data = c;
  }
  int rc = !c ? UV_ENOMEM : sy_sock_open(&c->client, fd);
  if (rc < 0) {
    sy_log_every_second(SY_LOG_ERROR, "accept: %s", uv_strerror(rc));
    close(fd);
    free(c);
    env->conn_gone(env); /* counted (and its descriptors taken) by the caller */
    return;
  }
  c->env = env;
  c->refs = 1;
  /* TCP_NODELAY came with the socket from its listener (sy_listen_reuseport). */
  uv_timer_init(env->loop, &c->timer);
  c->timer.data = c;
  c->refs++;
  c->cfg = sy_config_ref(env->cfg);
  c->lcfg = lcfg;
  c->io = &conn_http_io;
  c->next = env->conns;
  if (env->conns) env->conns->prev = c;
  env->conns = c;
  report_accept(env);
  conn_set_client(c, peer, NULL);
  sy_flow_init(&c->fl[SIDE_CLIENT], 0, NULL, c, c->cfg->limits.max_headers);
  sy_flow_init(&c->fl[SIDE_UPSTREAM], 1, response_on_head, c, c->cfg->limits.max_headers);
  c->state = CS_READ_HEAD;
  c->x.t_start = uv_hrtime();
  c->x.connect_ns = c->x.first_byte_ns = -1;
  if (lcfg->proxy_protocol) {
    /* The balancer's header comes first, before TLS and HTTP: its address is
     * the client (limits included), so the rest waits for it. */
    c->io = &conn_pp_io;
    conn_timer_arm(c, c->cfg->timeouts.header);
    c->io->read_update(c, SIDE_CLIENT);
    return;
  }
  conn_start(c);
}

/* The connection's first exchange may begin: TLS on a TLS listener, the
 * per-client limit, the header timeout, the first read. */
void conn_start(sy_conn *c) {
  const sy_listener_cfg *lcfg = c->lcfg;
  sy_conn_env *env = c->env;
  c->io = &conn_http_io;
  if (lcfg->tls_ctx && lcfg->offer_tls_upgrade == SY_TLS_OFFER_OFF) {
    c->tls[SIDE_CLIENT] = sy_tls_conn_new(lcfg->tls_ctx, 1, NULL, 0);
    if (!c->tls[SIDE_CLIENT]) {
      conn_close(c);
      return;
    }
  }
  uint64_t per_client = c->cfg->limits.max_connections_per_client;
  if (per_client && sy_limits_client_acquire(c->client_ip, per_client) < 0) {
    sy_log_every_second(SY_LOG_WARN,
                        "client %s: over limits.max_connections_per_client (%llu): refused",
                        c->client_ip, (unsigned long long)per_client);
    c->x.term = SY_TERM_LIMIT;
    sy_metrics_add(env->metrics, "switchyard_connections_refused_total", "reason=\"per_client\"",
                   1);
    memcpy(c->x.method, "-", 2);
    if (c->tls[SIDE_CLIENT]) /* no handshake yet to carry an answer over */
      conn_close(c);
    else
      local_response(c, 503, 1);
    return;
  }
  c->client_counted = per_client != 0;
  conn_timer_arm(c, c->cfg->timeouts.header);
  sy_flow *rq = &c->fl[SIDE_CLIENT];
  if (rq->len > rq->pos) { /* bytes that came with the PROXY header */
    if (c->tls[SIDE_CLIENT]) {
      sy_tls_feed(c->tls[SIDE_CLIENT], rq->buf + rq->pos, rq->len - rq->pos);
      rq->len = rq->pos;
      c->io->read_update(c, SIDE_CLIENT);
      conn_tls_pump(c, SIDE_CLIENT);
    } else {
      http_feed(c, SIDE_CLIENT);
    }
    return;
  }
  c->io->read_update(c, SIDE_CLIENT);
}

/* ---- the worker's operations --------------------------------------------------- */

void sy_conn_env_init(sy_conn_env *env) {
  sy_flow_pool_init(&env->flows);
}

void sy_conn_env_trim(sy_conn_env *env) {
  sy_flow_pool_trim(&env->flows);
  sy_buf_free(&env->labels);
}

void sy_conn_drain_all(sy_conn_env *env) {
  sy_conn *next;
  for (sy_conn *c = env->conns; c; c = next) {
    next = c->next;
    /* Between requests: nothing to finish. In flight: the exchange's end
     * closes after the response (env->stopping). Tunnels: left to the drain
     * timer. */
    sy_flow *rq = &c->fl[SIDE_CLIENT];
    if (c->state == CS_READ_HEAD && !rq->head_done && rq->len == rq->pos) conn_close(c);
  }
}

void sy_conn_close_all(sy_conn_env *env) {
  sy_tunnel_hub_close_all(env->tunnels, "shutdown"); /* done callbacks come on a later turn */
  sy_conn *next;
  for (sy_conn *c = env->conns; c; c = next) {
    next = c->next;
    if (c->state == CS_RELAY) {
      c->relay.closed_by = "proxy";
      relay_end(c, "shutdown");
    }
    conn_close(c);
  }
}
