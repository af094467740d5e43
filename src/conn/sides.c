/* One side's socket plumbing, written once for both sides: buffers lent to
 * the socket (sock.h), reads, the start and stop of reading, batches written,
 * and bytes the proxy itself owes a socket. What the bytes mean is the mode's business
 * (c->io: HTTP or relay). */
#include <assert.h>
#include <stdlib.h>

#include "internal.h"

sy_sock *conn_stream(sy_conn *c, conn_side s) {
  if (s == SIDE_CLIENT) return &c->client;
  return c->link ? &c->link->sock : NULL;
}

const char *conn_side_name(conn_side s) {
  return s == SIDE_CLIENT ? "client" : "upstream";
}

const char *conn_peer(const sy_conn *c, conn_side s) {
  if (s == SIDE_CLIENT) return c->client_ip;
  return c->x.server ? c->x.server->addr.text : "?";
}

uint32_t conn_buf_cap(const sy_conn *c, conn_side s) {
  if (c->state == CS_RELAY) return SY_RELAY_BUF;
  uint32_t cap = SY_FLOW_BUF;
  /* A request head must fit whole in the client's buffer. */
  if (s == SIDE_CLIENT && c->cfg->limits.max_header_bytes + 1 > cap)
    cap = (uint32_t)c->cfg->limits.max_header_bytes + 1;
  return cap;
}

/* ---- reading ------------------------------------------------------------------- */

static void side_alloc(sy_conn *c, conn_side s, uv_buf_t *buf) {
  sy_flow *f = &c->fl[s];
  /* A whole response whose write is in flight keeps the upstream read armed
   * (see http_mode.c's wants) but gets no buffer until the write is done. */
  if (s == SIDE_UPSTREAM && f->msg_done && f->writing) goto none;
  if (c->tls[s]) {
    /* The bound DESIGN.md gives (one block's unread ciphertext per
     * direction) holds because a block is lent only after the pump took
     * every whole record OpenSSL held and the mode still wanted more: at
     * most one partial record waits. */
    assert(sy_tls_unread(c->tls[s]) < SY_TLS_RECORD_MAX);
    /* Records are decrypted straight out of this into the flow's buffer. */
    buf->base = sy_flow_block_get(&c->env->flows);
    buf->len = buf->base ? SY_CIPHER_BLOCK : 0;
    return;
  }
  if (sy_flow_alloc(f, &c->env->flows, conn_buf_cap(c, s)) < 0 || f->len == f->cap) goto none;
  buf->base = f->buf + f->len;
  buf->len = f->cap - f->len;
  return;
none:
  buf->base = NULL;
  buf->len = 0;
}

static void side_read(sy_conn *c, conn_side s, ssize_t n, const uv_buf_t *buf) {
  if (c->tls[s]) {
    if (n > 0) {
      /* OpenSSL reads the records out of the block; what the pump leaves
       * unread is copied before the block goes back. The pump may have freed
       * the TLS state (the upstream closed): then the bytes go with it. */
      sy_tls_lend(c->tls[s], buf->base, (size_t)n);
      conn_tls_pump(c, s);
      if (c->tls[s] && sy_tls_unlend(c->tls[s]) < 0) n = UV_ENOMEM;
    }
    sy_flow_block_put(&c->env->flows, buf->base);
    if (n > 0) {
      c->io->read_update(c, s);
      return;
    }
  } else if (n > 0) {
    c->io->input(c, s, (size_t)n);
    return;
  }
  if (n == 0 || n == UV_ENOBUFS) return;
  c->io->eof(c, s, n);
}

static void on_client_alloc(sy_sock *st, uv_buf_t *buf) {
  side_alloc(st->data, SIDE_CLIENT, buf);
}

static void on_client_read(sy_sock *st, ssize_t n, const uv_buf_t *buf) {
  side_read(st->data, SIDE_CLIENT, n, buf);
}

static void on_upstream_alloc(sy_sock *st, uv_buf_t *buf) {
  static __thread char sink[64];
  sy_link *l = st->data;
  if (!l->c) { /* pooled: anything that arrives condemns the link */
    buf->base = sink;
    buf->len = sizeof(sink);
    return;
  }
  side_alloc(l->c, SIDE_UPSTREAM, buf);
}

static void on_upstream_read(sy_sock *st, ssize_t n, const uv_buf_t *buf) {
  sy_link *l = st->data;
  if (!l->c) {
    /* An idle pooled connection: stray bytes, EOF or an error all mean it
     * cannot carry another request. */
    if (n != 0) sy_link_close(l);
    return;
  }
  side_read(l->c, SIDE_UPSTREAM, n, buf);
}

void conn_link_read(sy_link *l) {
  sy_sock_read_start(&l->sock, on_upstream_alloc, on_upstream_read);
}

void conn_read_arm(sy_conn *c, conn_side s) {
  if (!conn_stream(c, s) || conn_closed(c)) return;
  sy_tls_conn *t = c->tls[s];
  int want;
  if (t && !sy_tls_handshake_done(t)) {
    want = 1; /* the handshake needs the socket whatever HTTP wants */
  } else {
    want = c->io->wants(c, s);
    if (want && t && sy_tls_has_pending(t)) {
      conn_tls_pump(c, s); /* plaintext OpenSSL already holds comes first */
      if (conn_closed(c) || c->state == CS_LINGER) return;
      /* It may have filled the flow or started a write: a read started on
       * the answer from before it would put another block of ciphertext
       * aside. */
      want = c->io->wants(c, s);
    }
  }
  sy_sock *st = conn_stream(c, s); /* the pump may have closed the link */
  if (!st || conn_closed(c) || c->state == CS_LINGER) return;
  if (!want)
    sy_sock_read_stop(st);
  else if (s == SIDE_CLIENT)
    sy_sock_read_start(st, on_client_alloc, on_client_read);
  else
    sy_sock_read_start(st, on_upstream_alloc, on_upstream_read);
}

/* ---- writing ------------------------------------------------------------------- */

static void flow_written(sy_sock_wreq *req, int status, conn_side s) {
  sy_conn *c = req->data;
  c->fl[s].writing = 0;
  c->fl[s].deferred = 0;
  if (!conn_closed(c) && c->state != CS_LINGER) c->io->written(c, s, req, status);
  conn_unref(c);
}

static void on_request_written(sy_sock_wreq *req, int status) {
  flow_written(req, status, SIDE_CLIENT);
}

static void on_response_written(sy_sock_wreq *req, int status) {
  flow_written(req, status, SIDE_UPSTREAM);
}

int conn_flush(sy_conn *c, conn_side s) {
  sy_flow *f = &c->fl[s];
  sy_sock *dst = conn_stream(c, 1 - s);
  if (f->writing || conn_closed(c) || !dst) return 1;
  if (!f->nsegs) return 0;
  f->wreq.data = c;
  int rc = sy_flow_write(f, &c->env->flows, dst, c->tls[1 - s],
                         s == SIDE_CLIENT ? on_request_written : on_response_written);
  if (rc < 0) return rc;
  c->refs++;
  return 1;
}

typedef struct raw_write {
  sy_sock_wreq req;
  sy_conn *c;
  sy_buf buf;
} raw_write;

static void on_raw_written(sy_sock_wreq *req, int status) {
  raw_write *w = (raw_write *)req;
  sy_conn *c = w->c;
  /* An alert to an upstream already given up for the next server fails
   * with it; only a socket the connection still uses ends it. */
  int ours =
      req->handle == conn_stream(c, SIDE_CLIENT) || req->handle == conn_stream(c, SIDE_UPSTREAM);
  sy_buf_free(&w->buf);
  free(w);
  if (status < 0 && ours && !conn_closed(c)) conn_close(c);
  conn_unref(c);
}

/* Bytes the proxy itself owes a socket (TLS handshake records, alerts, the 101
 * of an RFC 2817 upgrade), outside the flows' batches; a socket keeps its
 * writes in order. Takes the buffer. */
int conn_raw_write(sy_conn *c, sy_sock *st, sy_buf *b) {
  raw_write *w = calloc(1, sizeof(*w));
  if (!w) return -1;
  w->c = c;
  w->buf = *b;
  *b = (sy_buf){0};
  uv_buf_t ub = uv_buf_init(w->buf.p, (unsigned)w->buf.len);
  if (sy_sock_write(&w->req, st, &ub, 1, on_raw_written) < 0) {
    sy_buf_free(&w->buf);
    free(w);
    return -1;
  }
  c->refs++;
  return 0;
}
