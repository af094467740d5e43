/* The client connection's state machine.
 *
 * Two flows carry bytes: `rq` (read from the client, forwarded upstream) and
 * `rs` (read from the upstream, forwarded to the client). Each flow parses its
 * own read buffer with llhttp and collects what must go out as segments that
 * point into that buffer (no copy) or into a small scratch buffer (rewritten
 * heads, chunk framing). A flow writes one batch at a time and does not read
 * while a batch is in flight: that is the backpressure, and it keeps memory
 * per connection at one buffer per side whatever the body size.
 *
 *   READ_HEAD -> CONNECT -> STREAM_BODY -> READ_RESP_HEAD -> STREAM_RESP_BODY
 *       ^                                        |                 |
 *       +------------- keep-alive ---------------+-----------------+
 *                                                +-> TUNNEL -> CLOSED
 */
#include "switchyard/conn.h"

#include <errno.h>
#include <llhttp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "switchyard/http.h"
#include "switchyard/log.h"
#include "switchyard/metrics.h"
#include "switchyard/router.h"
#include "switchyard/tls.h"
#include "switchyard/tunnel.h"
#include "switchyard/upool.h"
#include "switchyard/upstream.h"

#define SY_FLOW_BUF (64 * 1024)
#define SY_MAX_UPGRADES 8
#define SY_LINGER_MS 2000

typedef enum sy_state {
  SY_READ_HEAD,
  SY_CONNECT,
  SY_STREAM_BODY,
  SY_READ_RESP_HEAD,
  SY_STREAM_RESP_BODY,
  SY_TUNNEL,
  SY_RELAY, /* a switched connection with TLS on a side: copied, not spliced */
  SY_LINGER,
  SY_CLOSED
} sy_state;

typedef struct sy_seg {
  uint32_t off, len;
  int scratch; /* 1: bytes live in flow->scratch, 0: in flow->buf */
} sy_seg;

typedef struct sy_flow {
  char *buf;
  uint32_t cap, len, pos; /* pos: parsed up to here */
  uint32_t head_start;
  uint32_t scan_pos; /* raw head bytes checked up to here */
  sy_headscan scan;
  llhttp_t parser;
  sy_head head;
  sy_seg *segs;
  uint32_t nsegs, segcap;
  sy_buf scratch;
  uv_buf_t *iov;
  uint32_t iovcap;
  uv_write_t wreq;
  uv_write_cb done_cb;   /* a write that went out at once: its callback, deferred */
  struct sy_flow *dnext; /* the worker's list of those */
  sy_buf cipher;         /* the batch once encrypted, while its write is in flight */
  unsigned writing : 1, msg_done : 1, chunked_out : 1, head_done : 1, discard : 1, eof : 1;
  unsigned check_chunk_end : 1; /* a chunked message just ended: verify its CRLFs */
  unsigned deferred : 1;        /* written at once, callback queued (run_written) */
  uint64_t bytes;               /* read from this flow's source for the current exchange */
} sy_flow;

struct sy_conn {
  sy_worker *w;
  sy_conn *next, *prev; /* worker's list */
  sy_config *cfg;
  const sy_listener_cfg *lcfg;
  sy_state state;
  int refs; /* open handles + in-flight requests; freed at 0 once closing */
  int closing;
  uv_tcp_t client;
  uv_timer_t timer;
  uv_shutdown_t sreq;
  sy_link *link;
  sy_flow rq, rs;

  const sy_route_cfg *route;
  const sy_server_cfg *server;
  uint64_t tried;    /* servers of the upstream already tried for this request */
  uint64_t key_hash; /* hash balancing input */
  int last_err_timeout;

  /* What the request head told us that outlives its bytes in the buffer. */
  int is_head_req, client_close, http10, keep_alive10, has_body;
  int upgrading; /* forwarded as an upgrade; answer may switch */
  sy_str up_tokens[SY_MAX_UPGRADES];
  size_t nup_tokens;
  char up_store[256];
  char ws_key[128]; /* empty: missing or unusable, so no 101 can verify */
  int check_accept;

  /* Response decisions. */
  int close_after, status, resp_head_sent, interim, bad_101, switching;
  int resp_flushed; /* some of the final response went to the client */

  uint64_t deadline, timer_due; /* loop times: the timeout due, the timer set */

  /* Access log. */
  char client_ip[64];
  int client_port;
  char method[16];
  char *path;
  uint64_t t_start, bytes_in, bytes_out;

  /* TLS: ctls on the client side (TLS listener, or after an RFC 2817
   * upgrade), utls towards the upstream. NULL = cleartext. */
  sy_tls_conn *ctls, *utls;
  int in_pump;
  int tls_upgrade_pending; /* 101 sent for Upgrade: TLS/1.x; request resumes after handshake */
  int tls_upgraded;        /* this connection switched to TLS in place */
  int tls_upgrade_now;     /* the current request is the one that switched */
  char proto[32];          /* the protocol the 101 switched to, for the tunnel log */
  char offered0[32];       /* first upgrade token offered, for metrics */
  sy_buf retry_head;       /* the head sent on a reused connection, for one retry */
  int retried, fresh_only, resp_from_upstream;
  int server_counted; /* this connection counts in server->active */
  int link_used;      /* an upstream connection was opened for this request */
  int handed_off;     /* a spliced tunnel's note took over; see sy_tunnel_note */
  int client_counted; /* counted in limits.max_connections_per_client */

  /* Relay (TLS tunnel) bookkeeping. */
  uint64_t relay_start, relay_c2u, relay_u2c;
  const char *relay_closed_by;
};

/* What a tunnel needs once its connection is gone: a spliced tunnel keeps
 * this in its own allocation (sy_tunnel_extra), strings inline, not the whole
 * connection, so an idle tunnel costs little more than its sockets. */
struct sy_tunnel_note {
  sy_worker *w;
  sy_config *cfg; /* keeps route and server alive */
  const sy_route_cfg *route;
  const sy_server_cfg *server;
  const char *proto, *client_ip, *path;
  int client_port;
  int client_counted;
};
typedef struct sy_tunnel_note sy_tunnel_note;

/* Which socket of the connection; per-side code is written once. */
typedef enum sy_side { SY_CLIENT, SY_UPSTREAM } sy_side;

static void conn_close(sy_conn *c);
static void client_feed(sy_conn *c);
static void upstream_feed(sy_conn *c);
static void rq_flush(sy_conn *c);
static void rs_flush(sy_conn *c);
static void start_connect(sy_conn *c);
static void local_response(sy_conn *c, int status, int close);
static void conn_unref(sy_conn *c);
static void client_read_update(sy_conn *c);
static void client_eof(sy_conn *c, ssize_t n);
static void upstream_eof(sy_conn *c, ssize_t n);
static void upstream_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf);
static void on_upstream_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void upstream_read_update(sy_conn *c);
static void tls_pump(sy_conn *c, sy_side side);
static int tls_flush(sy_conn *c, sy_side side);
static void relay_input(sy_conn *c, sy_side from);
static void relay_written(sy_conn *c, sy_side from);
static void relay_eof(sy_conn *c, sy_side from, ssize_t status);
static void start_relay(sy_conn *c);
static void route_request(sy_conn *c);
static int retry_stale(sy_conn *c);
static void tls_upgrade_start(sy_conn *c);
static void local_426(sy_conn *c);

static inline sy_conn *flow_conn(llhttp_t *p) {
  return p->data;
}

static inline sy_flow *parser_flow(llhttp_t *p) {
  return (sy_flow *)((char *)p - offsetof(sy_flow, parser));
}

/* ---- flows ---------------------------------------------------------------- */

/* Flow buffers of the usual size are recycled through a small per-worker
 * stack: a keep-alive request takes and returns two of them, and going
 * through malloc each time made glibc consolidate and trim its heap
 * (madvise, then page faults) on every other request. */
static char *flow_buf_get(sy_worker *w, uint32_t cap) {
  if (cap == SY_FLOW_BUF && w->nbuf_cache > 0) return w->buf_cache[--w->nbuf_cache];
  return malloc(cap);
}

static void flow_buf_put(sy_worker *w, char *p, uint32_t cap) {
  if (p && cap == SY_FLOW_BUF && w->nbuf_cache < SY_BUF_CACHE)
    w->buf_cache[w->nbuf_cache++] = p;
  else
    free(p);
}

/* TLS moves every byte through two more buffers: the ciphertext read block
 * and the encrypted batch. Both come back to per-worker stacks: freeing them
 * between batches (an idle relay holds none) made glibc trim its heap and
 * re-fault the pages on every batch. */
#define SY_CIPHER_BLOCK (16 * 1024 + 512)
#define SY_CIPHER_KEEP (256 * 1024) /* larger batch buffers are not kept */

static char *cipher_block_get(sy_worker *w) {
  return w->nblk_cache ? w->blk_cache[--w->nblk_cache] : malloc(SY_CIPHER_BLOCK);
}

static void cipher_block_put(sy_worker *w, char *p) {
  if (p && w->nblk_cache < SY_BLK_CACHE)
    w->blk_cache[w->nblk_cache++] = p;
  else
    free(p);
}

static void cipher_buf_get(sy_worker *w, sy_buf *b) {
  if (b->p || !w->ncipher_cache) return;
  w->ncipher_cache--;
  b->p = w->cipher_cache[w->ncipher_cache].p;
  b->cap = w->cipher_cache[w->ncipher_cache].cap;
  b->len = 0;
}

static void cipher_buf_put(sy_worker *w, sy_buf *b) {
  if (b->p && b->cap <= SY_CIPHER_KEEP && w->ncipher_cache < SY_CIPHER_CACHE) {
    w->cipher_cache[w->ncipher_cache].p = b->p;
    w->cipher_cache[w->ncipher_cache].cap = b->cap;
    w->ncipher_cache++;
    b->p = NULL;
    b->len = b->cap = 0;
  }
  sy_buf_free(b);
}

static int flow_alloc(sy_conn *c, sy_flow *f, uint32_t cap) {
  if (f->buf) return 0;
  f->buf = flow_buf_get(c->w, cap);
  if (!f->buf) return -1;
  f->cap = cap;
  return 0;
}

static void flow_release_if_idle(sy_conn *c, sy_flow *f) {
  /* An idle keep-alive connection or relay holds no buffer. */
  if (f->len == f->pos && !f->writing) {
    flow_buf_put(c->w, f->buf, f->cap);
    f->buf = NULL;
    f->cap = f->len = f->pos = 0;
    cipher_buf_put(c->w, &f->cipher);
  }
}

static void flow_free(sy_conn *c, sy_flow *f) {
  flow_buf_put(c->w, f->buf, f->cap);
  f->buf = NULL;
  cipher_buf_put(c->w, &f->cipher);
  free(f->segs);
  free(f->iov);
  sy_buf_free(&f->scratch);
  sy_head_free(&f->head);
  memset(f, 0, sizeof(*f));
}

static int flow_push(sy_flow *f, uint32_t off, uint32_t len, int scratch) {
  if (len == 0) return 0;
  if (f->nsegs && !scratch && !f->segs[f->nsegs - 1].scratch &&
      f->segs[f->nsegs - 1].off + f->segs[f->nsegs - 1].len == off) {
    f->segs[f->nsegs - 1].len += len;
    return 0;
  }
  if (f->nsegs == f->segcap) {
    uint32_t ncap = f->segcap ? f->segcap * 2 : 8;
    sy_seg *ns = realloc(f->segs, ncap * sizeof(*ns));
    if (!ns) return -1;
    f->segs = ns;
    f->segcap = ncap;
  }
  f->segs[f->nsegs++] = (sy_seg){off, len, scratch};
  return 0;
}

static int flow_push_scratch(sy_flow *f, const void *p, size_t n) {
  uint32_t off = (uint32_t)f->scratch.len;
  if (sy_buf_append(&f->scratch, p, n)) return -1;
  return flow_push(f, off, (uint32_t)n, 1);
}

static int flow_push_sybuf(sy_flow *f, sy_buf *b) {
  return flow_push_scratch(f, b->p, b->len);
}

/* Slides unparsed bytes to the front once nothing refers to what precedes
 * them (no batch in flight, head already forwarded). */
static void flow_compact(sy_flow *f) {
  if (!f->buf || f->pos == 0) return;
  memmove(f->buf, f->buf + f->pos, f->len - f->pos);
  f->len -= f->pos;
  if (f->head_start >= f->pos)
    f->head_start -= f->pos;
  else
    f->head_start = 0;
  f->scan_pos = f->scan_pos >= f->pos ? f->scan_pos - f->pos : 0;
  f->pos = 0;
}

/* llhttp takes a bare LF after the last chunk; the message must end in
 * CRLF CRLF (last-chunk and trailer section), checked where the bytes are
 * still in the buffer. -1 bad. */
static int flow_check_chunk_end(sy_flow *f) {
  if (!f->check_chunk_end) return 0;
  f->check_chunk_end = 0;
  if (f->pos < 4) return 0;
  return memcmp(f->buf + f->pos - 4, "\r\n\r\n", 4) == 0 ? 0 : -1;
}

/* Checks the raw bytes of the head being read (see sy_headscan). -1 bad. */
static int flow_scan(sy_flow *f) {
  if (f->scan.done || f->scan_pos >= f->len) return 0;
  size_t used = 0;
  int r = sy_headscan_run(&f->scan, f->buf + f->scan_pos, f->len - f->scan_pos, &used);
  if (r < 0) return -1;
  f->scan_pos = r ? f->scan_pos + (uint32_t)used : f->len;
  return 0;
}

static int flow_write(sy_conn *c, sy_flow *f, uv_stream_t *dst, sy_tls_conn *tls, uv_write_cb cb) {
  if (f->iovcap < f->nsegs) {
    uv_buf_t *ni = realloc(f->iov, f->nsegs * sizeof(*ni));
    if (!ni) return UV_ENOMEM;
    f->iov = ni;
    f->iovcap = f->nsegs;
  }
  for (uint32_t i = 0; i < f->nsegs; i++) {
    sy_seg *s = &f->segs[i];
    char *base = s->scratch ? f->scratch.p : f->buf;
    f->iov[i] = uv_buf_init(base + s->off, s->len);
  }
  int rc;
  if (tls) {
    /* The memory BIO takes the whole batch; what goes out is one buffer of
     * records, released when the write completes. */
    cipher_buf_get(c->w, &f->cipher);
    f->cipher.len = 0;
    if (sy_tls_write(tls, f->iov, f->nsegs) < 0 || sy_tls_take_output(tls, &f->cipher) < 0)
      return UV_EPROTO;
    uv_buf_t b = uv_buf_init(f->cipher.p, (unsigned)f->cipher.len);
    rc = uv_write(&f->wreq, dst, &b, 1, cb);
  } else {
    /* Try at once: a write that goes out whole needs no libuv request, whose
     * completion would re-arm the socket's epoll entry (a wasted epoll_ctl per
     * write); its callback still runs later in this loop turn, never from in
     * here, so callers see the same order of events either way. */
    size_t total = 0, done = 0;
    for (uint32_t i = 0; i < f->nsegs; i++)
      total += f->iov[i].len;
    int n = uv_try_write(dst, f->iov, f->nsegs);
    if (n > 0 && (size_t)n == total) {
      f->writing = 1;
      c->refs++;
      f->wreq.handle = dst;
      f->done_cb = cb;
      f->deferred = 1;
      sy_worker *w = c->w;
      f->dnext = NULL;
      *w->written_tail = f;
      w->written_tail = &f->dnext;
      uv_idle_start(&w->written_idle, sy_conn_on_written_idle);
      return 0;
    }
    uint32_t k = 0;
    for (done = n > 0 ? (size_t)n : 0; done > 0 && k < f->nsegs; k++) {
      if (done < f->iov[k].len) {
        f->iov[k].base += done;
        f->iov[k].len -= done;
        break;
      }
      done -= f->iov[k].len;
    }
    rc = uv_write(&f->wreq, dst, f->iov + k, f->nsegs - k, cb);
  }
  if (rc == 0) {
    f->writing = 1;
    c->refs++;
  }
  return rc;
}

/* Runs the callbacks of writes that went out at once, in order; a callback
 * may queue more (the next pipelined answer), which run in the same pass. */
static void run_written(sy_worker *w) {
  while (w->written) {
    sy_flow *f = w->written;
    w->written = f->dnext;
    if (!w->written) w->written_tail = &w->written;
    f->dnext = NULL;
    f->deferred = 0;
    f->done_cb(&f->wreq, 0); /* may free the connection, f with it */
  }
  uv_idle_stop(&w->written_idle);
}

/* After the poll phase (writes made by I/O callbacks complete in the same
 * turn) and, through the idle handle, before the next poll (writes made by
 * timers; the idle handle also keeps that poll from blocking). */
void sy_conn_on_written_check(uv_check_t *h) {
  sy_worker *w = h->data;
  if (w->written) run_written(w);
}

void sy_conn_on_written_idle(uv_idle_t *h) {
  run_written(h->data);
}

static void flow_batch_done(sy_flow *f) {
  f->nsegs = 0;
  f->scratch.len = 0;
  f->cipher.len = 0; /* capacity kept while the flow is busy: no page churn */
}

/* ---- timers ---------------------------------------------------------------- */

static sy_msec_t route_timeout(const sy_conn *c, sy_msec_t route_v, sy_msec_t global_v) {
  (void)c;
  return route_v ? route_v : global_v;
}

static void on_timeout(uv_timer_t *t);
static void relay_end(sy_conn *c, const char *reason);

/* The deadline moves at every step of every request (header, response,
 * idle...), but the libuv timer is only moved when the deadline comes
 * earlier than it: a timer that fires early finds the later deadline and
 * sleeps again. That spares two timer-heap operations per request. */
static void timer_arm(sy_conn *c, sy_msec_t ms) {
  if (!ms) {
    c->deadline = 0;
    return;
  }
  c->deadline = uv_now(&c->w->loop) + ms;
  if (!uv_is_active((uv_handle_t *)&c->timer) || c->timer_due > c->deadline) {
    uv_timer_start(&c->timer, on_timeout, ms, 0);
    c->timer_due = c->deadline;
  }
}

static sy_msec_t response_timeout(const sy_conn *c) {
  return route_timeout(c, c->route ? c->route->timeouts.response : 0, c->cfg->timeouts.response);
}

/* ---- metrics ------------------------------------------------------------------ */

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

static void route_label_of(const sy_route_cfg *route, sy_buf *b) {
  char idx[32];
  const char *r = route_name(route, idx);
  sy_metrics_label(b, "route", r ? r : "", r ? strlen(r) : 0);
}

static void route_label(const sy_conn *c, sy_buf *b) {
  route_label_of(c->route, b);
}

/* The note of a connection that is still whole (relay, or before hand-off). */
static sy_tunnel_note note_of(sy_conn *c) {
  return (sy_tunnel_note){.w = c->w,
                          .cfg = c->cfg,
                          .route = c->route,
                          .server = c->server,
                          .proto = c->proto,
                          .client_ip = c->client_ip,
                          .path = c->path,
                          .client_port = c->client_port,
                          .client_counted = c->client_counted};
}

/* The worker's label buffer, emptied: labels are built per request and per
 * tunnel, and a fresh buffer each time was a malloc and a free. */
static sy_buf *labels(sy_worker *w) {
  w->labels.len = 0;
  return &w->labels;
}

static void count_request(sy_conn *c) {
  static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
  sy_buf *b = labels(c->w);
  route_label(c, b);
  const char *cls = c->status >= 100 && c->status < 600 ? classes[c->status / 100 - 1] : "other";
  sy_metrics_label(b, "class", cls, strlen(cls));
  sy_buf_append(b, "", 1);
  sy_metrics_add(c->w->metrics, "switchyard_requests_total", b->p, 1);
  if (!c->offered0[0]) return;
  /* Upgrades: switched, refused by the upstream, or rejected by the proxy
   * (a route that allows none of the tokens, or a 101 that failed checks). */
  const char *outcome = c->switching                    ? "switched"
                        : (c->bad_101 || !c->upgrading) ? "rejected"
                        : c->resp_from_upstream         ? "refused"
                                                        : "rejected";
  const char *proto = c->switching ? c->proto : c->offered0;
  b = labels(c->w); /* the same buffer for the second series */
  sy_metrics_label(b, "protocol", proto, strlen(proto));
  sy_metrics_label(b, "outcome", outcome, strlen(outcome));
  sy_buf_append(b, "", 1);
  sy_metrics_add(c->w->metrics, "switchyard_upgrades_total", b->p, 1);
}

static void count_tunnel(const sy_tunnel_note *c, int delta, const sy_tunnel_stats *st) {
  sy_metrics *m = c->w->metrics;
  sy_buf *b = labels(c->w);
  route_label_of(c->route, b);
  sy_metrics_label(b, "protocol", c->proto, strlen(c->proto));
  sy_buf_append(b, "", 1);
  sy_metrics_add(m, "switchyard_tunnels_open", b->p, delta);
  if (delta > 0) sy_metrics_add(m, "switchyard_tunnels_total", b->p, 1);
  if (st) {
    sy_worker *w = c->w;
    sy_metrics_add_cell(m, &w->cell.to_upstream, "switchyard_tunnel_bytes_total",
                        "direction=\"to_upstream\"", (int64_t)st->bytes_c2u);
    sy_metrics_add_cell(m, &w->cell.to_client, "switchyard_tunnel_bytes_total",
                        "direction=\"to_client\"", (int64_t)st->bytes_u2c);
    sy_metrics_add_cell(m, &w->cell.spliced, "switchyard_tunnel_spliced_bytes_total", NULL,
                        (int64_t)st->spliced);
    sy_metrics_add_cell(m, &w->cell.copied, "switchyard_tunnel_copied_bytes_total", NULL,
                        (int64_t)st->copied);
  }
}

static void server_count(sy_conn *c, int delta) {
  if (!c->server) return;
  __atomic_add_fetch(&c->server->rt->active, delta, __ATOMIC_RELAXED);
}

/* ---- access log ------------------------------------------------------------ */

static void log_request(sy_conn *c) {
  if (!sy_access_log_enabled() || !c->method[0]) return;
  sy_buf b = {0};
  char route[32];
  const char *rname = route_name(c->route, route);
  sy_buf_append(&b, "{", 1);
  sy_json_time(&b, "time", 0);
  sy_buf_appendf(&b, ",\"type\":\"request\"");
  sy_buf_appendf(&b, ",\"client\":\"%s:%d\"", c->client_ip, c->client_port);
  sy_json_str(&b, "method", c->method, strlen(c->method), 1);
  sy_json_str(&b, "path", c->path, c->path ? strlen(c->path) : 0, 1);
  sy_json_str(&b, "route", rname, rname ? strlen(rname) : 0, 1);
  const char *srv = c->server ? c->server->addr.text : NULL;
  sy_json_str(&b, "upstream", srv, srv ? strlen(srv) : 0, 1);
  sy_buf_appendf(&b, ",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu,\"duration_ms\":%.3f}\n",
                 c->status, (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out,
                 (double)(uv_hrtime() - c->t_start) / 1e6);
  if (b.p) sy_access_log_write(b.p, b.len);
  sy_buf_free(&b);
}

static void log_tunnel(const sy_tunnel_note *c, const sy_tunnel_stats *st) {
  if (!sy_access_log_enabled()) return;
  sy_buf b = {0};
  char route[32];
  const char *rname = route_name(c->route, route);
  sy_buf_append(&b, "{", 1);
  sy_json_time(&b, "time", 0);
  sy_buf_appendf(&b, ",\"type\":\"tunnel\",\"client\":\"%s:%d\"", c->client_ip, c->client_port);
  sy_json_str(&b, "protocol", c->proto, strlen(c->proto), 1);
  sy_json_str(&b, "path", c->path, c->path ? strlen(c->path) : 0, 1);
  sy_json_str(&b, "route", rname, rname ? strlen(rname) : 0, 1);
  const char *srv = c->server ? c->server->addr.text : NULL;
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

/* ---- lifetime ---------------------------------------------------------------- */

static void conn_free(sy_conn *c) {
  sy_worker *w = c->w;
  if (c->prev)
    c->prev->next = c->next;
  else if (w->conns == c)
    w->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (!w->conns) sy_worker_conns_idle(w);
  flow_free(c, &c->rq);
  flow_free(c, &c->rs);
  free(c->path);
  sy_buf_free(&c->retry_head);
  sy_tls_conn_free(c->ctls);
  sy_tls_conn_free(c->utls);
  int handed_off = c->handed_off;
  if (c->client_counted && !handed_off) sy_client_release(c->client_ip);
  sy_config_unref(c->cfg);
  free(c);
  if (!handed_off) { /* a spliced tunnel still counts as the client's connection */
    sy_metrics_add_cell(w->metrics, &w->cell.open, "switchyard_connections_open", NULL, -1);
    sy_worker_conn_gone(w);
  }
}

static void conn_unref(sy_conn *c) {
  if (--c->refs == 0 && c->closing) conn_free(c);
}

static void on_handle_closed(uv_handle_t *h) {
  conn_unref(h->data);
}

static void on_link_closed(void *arg) {
  conn_unref(arg);
}

static void link_close(sy_conn *c) {
  sy_link *l = c->link;
  if (!l) return;
  c->link = NULL;
  sy_tls_conn_free(c->utls);
  c->utls = NULL;
  if (c->server_counted) {
    c->server_counted = 0;
    server_count(c, -1);
  }
  sy_link_close(l);
}

/* After a response: the upstream connection goes back to the worker's pool
 * when it can carry another request, else it closes. */
static void link_release(sy_conn *c) {
  sy_link *l = c->link;
  const sy_upstream_cfg *up = c->route ? c->route->upstream : NULL;
  int reusable = l && up && !c->utls && !c->upgrading && !c->w->stopping && c->link_used &&
                 !c->rs.eof && c->rs.msg_done && c->rq.msg_done && !c->rq.writing &&
                 c->rs.pos == c->rs.len && llhttp_should_keep_alive(&c->rs.parser) &&
                 c->resp_from_upstream;
  if (!reusable) {
    link_close(c);
    return;
  }
  c->link = NULL;
  if (c->server_counted) {
    c->server_counted = 0;
    server_count(c, -1);
  }
  /* The link is read with on_upstream_read, which closes it on any byte or
   * EOF while pooled (l->c == NULL). */
  l->c = NULL;
  if (!uv_is_active((uv_handle_t *)&l->tcp))
    uv_read_start((uv_stream_t *)&l->tcp, upstream_alloc, on_upstream_read);
  if (sy_upool_put(c->w->upool, l, up->keepalive_max_idle, up->keepalive_idle) < 0) {
    sy_link_close(l);
  }
  /* The link's reference on the connection ends here either way. */
  conn_unref(c);
}

static void conn_close(sy_conn *c) {
  if (c->closing) return;
  c->closing = 1;
  c->state = SY_CLOSED;
  link_close(c);
  if (!uv_is_closing((uv_handle_t *)&c->client))
    uv_close((uv_handle_t *)&c->client, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

/* Close without losing the response: shut our side, then drain what the client
 * still sends until it closes or a short deadline, so the kernel does not
 * answer unread bytes with an RST that would destroy the response in flight. */
static void on_linger_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  sy_conn *c = s->data;
  free(buf->base);
  if (n < 0) conn_close(c);
}

static void linger_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  buf->base = malloc(4096);
  buf->len = buf->base ? 4096 : 0;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  sy_conn *c = req->data;
  if (status < 0 || c->closing) {
    conn_close(c);
  } else if (uv_read_start((uv_stream_t *)&c->client, linger_alloc, on_linger_read) < 0) {
    conn_close(c);
  }
  conn_unref(c);
}

static void conn_linger(sy_conn *c) {
  if (c->closing || c->state == SY_LINGER) return;
  c->state = SY_LINGER;
  link_close(c);
  uv_read_stop((uv_stream_t *)&c->client);
  /* A flow with a write in flight keeps its memory: libuv still holds the
   * request (its queue links live in the flow) and the bytes. conn_free
   * takes what is left. */
  if (!c->rq.writing) flow_free(c, &c->rq);
  if (!c->rs.writing) flow_free(c, &c->rs);
  timer_arm(c, SY_LINGER_MS);
  if (c->ctls) {
    sy_tls_shutdown(c->ctls);
    tls_flush(c, SY_CLIENT);
  }
  c->sreq.data = c;
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->client, on_shutdown) == 0)
    c->refs++;
  else
    conn_close(c);
}

/* ---- the exchange ------------------------------------------------------------ */

static void reset_exchange(sy_conn *c) {
  c->route = NULL;
  c->server = NULL;
  c->tried = 0;
  c->last_err_timeout = 0;
  c->is_head_req = c->client_close = c->http10 = c->keep_alive10 = c->has_body = 0;
  c->upgrading = 0;
  c->nup_tokens = 0;
  c->ws_key[0] = 0;
  c->check_accept = 0;
  c->close_after = c->status = c->resp_head_sent = c->interim = c->bad_101 = 0;
  c->resp_flushed = 0;
  c->switching = 0;
  c->offered0[0] = 0;
  c->tls_upgrade_now = 0;
  c->link_used = 0;
  c->retry_head.len = 0; /* capacity kept: no allocation per request */
  c->retried = c->fresh_only = c->resp_from_upstream = 0;
  c->method[0] = 0;
  free(c->path);
  c->path = NULL;
  c->bytes_in = c->bytes_out = 0;
  c->rq.msg_done = c->rq.chunked_out = c->rq.head_done = c->rq.discard = 0;
  c->rs.msg_done = c->rs.chunked_out = c->rs.head_done = c->rs.discard = 0;
  c->rq.bytes = c->rs.bytes = 0;
  sy_head_reset(&c->rq.head);
  sy_head_reset(&c->rs.head);
}

static void start_tunnel(sy_conn *c);
static const llhttp_settings_t resp_settings;

/* Both halves done (or the request abandoned): log, then keep-alive or close. */
static void maybe_finish(sy_conn *c) {
  if (c->closing || c->state == SY_LINGER || c->state == SY_TUNNEL || c->state == SY_RELAY) return;
  if (!c->rs.msg_done || c->rs.writing) return;
  if (c->switching) {
    /* Splice needs both sides in cleartext; TLS on either side is copied. */
    if (!c->rq.writing) (c->ctls || c->utls) ? start_relay(c) : start_tunnel(c);
    return;
  }
  if (!c->rq.msg_done && !c->close_after) {
    if (c->rq.discard) return; /* still swallowing the body of a request answered locally */
    /* The upstream answered before the request ended: the stream cannot be
     * resynchronised, so this connection ends with the response. */
    c->close_after = 1;
  }
  count_request(c);
  log_request(c);
  link_release(c);
  if (c->close_after || c->w->stopping) {
    conn_linger(c);
    return;
  }
  /* Keep-alive: the request parser sits paused right after the message. */
  if (llhttp_get_errno(&c->rq.parser) == HPE_PAUSED_UPGRADE)
    llhttp_resume_after_upgrade(&c->rq.parser);
  else if (llhttp_get_errno(&c->rq.parser) == HPE_PAUSED)
    llhttp_resume(&c->rq.parser);
  /* The response flow is reset, not freed: its small arrays serve the next
   * exchange; only the data buffer goes when empty (idle holds none). */
  c->rs.pos = c->rs.len = c->rs.head_start = c->rs.scan_pos = 0;
  c->rs.eof = 0;
  flow_batch_done(&c->rs);
  flow_release_if_idle(c, &c->rs);
  sy_headscan_init(&c->rs.scan);
  llhttp_init(&c->rs.parser, HTTP_RESPONSE, &resp_settings);
  c->rs.parser.data = c;
  flow_compact(&c->rq);
  flow_batch_done(&c->rq);
  reset_exchange(c);
  c->state = SY_READ_HEAD;
  c->rq.head_start = 0;
  c->rq.scan_pos = 0;
  sy_headscan_init(&c->rq.scan);
  c->t_start = uv_hrtime();
  flow_release_if_idle(c, &c->rq);
  if (!c->rq.buf) sy_buf_free(&c->retry_head); /* an idle connection holds no buffer at all */
  timer_arm(c, c->rq.len ? c->cfg->timeouts.header : c->cfg->timeouts.client_idle);
  if (c->rq.len)
    client_feed(c);
  else
    client_read_update(c);
}

static void on_rs_written(uv_write_t *req, int status) {
  sy_conn *c = req->data;
  c->rs.writing = 0;
  if (!c->closing && c->state == SY_RELAY) {
    if (status < 0)
      relay_eof(c, SY_CLIENT, status);
    else
      relay_written(c, SY_UPSTREAM);
  } else if (!c->closing && c->state != SY_LINGER) {
    if (status < 0) {
      conn_close(c); /* the client went away */
    } else {
      flow_compact(&c->rs);
      flow_batch_done(&c->rs);
      if (c->rs.msg_done) {
        maybe_finish(c);
      } else {
        if (c->rs.len > c->rs.pos) upstream_feed(c);
        upstream_read_update(c);
      }
    }
  }
  conn_unref(c);
}

static void rs_flush(sy_conn *c) {
  if (c->rs.writing || c->closing) return;
  if (c->rs.nsegs == 0) {
    if (c->rs.msg_done) maybe_finish(c);
    return;
  }
  c->rs.wreq.data = c;
  if (c->resp_head_sent) c->resp_flushed = 1;
  for (uint32_t i = 0; i < c->rs.nsegs; i++)
    c->bytes_out += c->rs.segs[i].len;
  if (flow_write(c, &c->rs, (uv_stream_t *)&c->client, c->ctls, on_rs_written) < 0) conn_close(c);
}

static void local_send(sy_conn *c, int status, int close, sy_buf *b);

/* A response the proxy writes itself (errors). */
static void local_response(sy_conn *c, int status, int close) {
  sy_buf b = {0};
  sy_http_error(&b, status, close || c->close_after, NULL);
  local_send(c, status, close, &b);
  sy_buf_free(&b);
}

static void local_send(sy_conn *c, int status, int close, sy_buf *b) {
  if (c->resp_head_sent && !c->resp_flushed && !c->rs.writing) {
    /* The upstream's head is still only queued: an error found in the same
     * read (a bad chunk, say) replaces it, so the client sees a clean 502. */
    c->resp_head_sent = 0;
    c->rs.nsegs = 0;
    c->rs.scratch.len = 0;
  }
  if (c->resp_head_sent) {
    /* Part of an upstream response is already out: the only honest signal
     * left is to cut the connection. */
    conn_close(c);
    return;
  }
  c->status = status;
  c->resp_head_sent = 1;
  link_close(c);
  if (close) c->close_after = 1;
  if (!c->rq.msg_done && !c->close_after) {
    /* Read and drop the rest of the request body so keep-alive can go on. */
    c->rq.discard = 1;
  }
  c->rs.nsegs = 0;
  c->rs.scratch.len = 0;
  flow_push_sybuf(&c->rs, b);
  c->rs.msg_done = 1;
  c->state = SY_STREAM_RESP_BODY;
  timer_arm(c, response_timeout(c));
  rs_flush(c);
  if (c->rq.discard && !c->rq.writing && !c->closing) {
    if (llhttp_get_errno(&c->rq.parser) == HPE_PAUSED) llhttp_resume(&c->rq.parser);
    client_feed(c);
  }
}

static void on_rq_written(uv_write_t *req, int status) {
  sy_conn *c = req->data;
  c->rq.writing = 0;
  if (!c->link || req->handle != (uv_stream_t *)&c->link->tcp) {
    /* The write was for an upstream connection already given up (a local
     * answer, or a stale pooled connection being retried): carry on with
     * whatever waits for the current one. */
    if (!c->closing && c->state != SY_LINGER && c->state != SY_RELAY) {
      if (c->link && c->rq.nsegs)
        rq_flush(c);
      else if (c->rq.discard)
        client_feed(c);
    }
    conn_unref(c);
    return;
  }
  if (!c->closing && c->state == SY_RELAY) {
    if (status < 0)
      relay_eof(c, SY_UPSTREAM, status);
    else
      relay_written(c, SY_CLIENT);
  } else if (!c->closing && c->state != SY_LINGER) {
    if (status < 0) {
      if (retry_stale(c))
        ;
      else if (!c->resp_head_sent)
        local_response(c, 502, 1);
      else
        c->close_after = 1;
    } else {
      flow_compact(&c->rq);
      flow_batch_done(&c->rq);
      if (c->rq.msg_done) {
        if (c->state == SY_STREAM_BODY) {
          c->state = SY_READ_RESP_HEAD;
          timer_arm(c, response_timeout(c)); /* the body is out: now the answer */
        }
        maybe_finish(c);
      } else if (c->rq.len > c->rq.pos) {
        client_feed(c);
      }
      client_read_update(c);
    }
  }
  conn_unref(c);
}

static void rq_flush(sy_conn *c) {
  if (c->rq.writing || c->closing || !c->link) return;
  if (c->rq.nsegs == 0) return;
  c->rq.wreq.data = c;
  if (flow_write(c, &c->rq, (uv_stream_t *)&c->link->tcp, c->utls, on_rq_written) < 0) {
    if (!c->resp_head_sent)
      local_response(c, 502, 1);
    else
      conn_close(c);
  }
}

/* ---- llhttp callbacks: shared by both directions --------------------------- */

static int cb_method(llhttp_t *p, const char *at, size_t n) {
  sy_flow *f = parser_flow(p);
  sy_span_extend(&f->head.method, (uint32_t)(at - f->buf), (uint32_t)n);
  return 0;
}

static int cb_url(llhttp_t *p, const char *at, size_t n) {
  sy_flow *f = parser_flow(p);
  sy_span_extend(&f->head.target, (uint32_t)(at - f->buf), (uint32_t)n);
  return 0;
}

static int cb_status(llhttp_t *p, const char *at, size_t n) {
  sy_flow *f = parser_flow(p);
  sy_span_extend(&f->head.reason, (uint32_t)(at - f->buf), (uint32_t)n);
  return 0;
}

static int cb_field(llhttp_t *p, const char *at, size_t n) {
  sy_flow *f = parser_flow(p);
  return sy_head_on_field(&f->head, (uint32_t)(at - f->buf), (uint32_t)n) ? HPE_USER : 0;
}

static int cb_value(llhttp_t *p, const char *at, size_t n) {
  sy_flow *f = parser_flow(p);
  return sy_head_on_value(&f->head, (uint32_t)(at - f->buf), (uint32_t)n) ? HPE_USER : 0;
}

static int cb_message_begin(llhttp_t *p) {
  sy_flow *f = parser_flow(p);
  sy_head_reset(&f->head);
  return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t n) {
  sy_flow *f = parser_flow(p);
  if (f->discard) return 0;
  int rc = 0;
  if (f->chunked_out) {
    char hex[24];
    int k = snprintf(hex, sizeof(hex), "%zx\r\n", n);
    rc |= flow_push_scratch(f, hex, (size_t)k);
  }
  rc |= flow_push(f, (uint32_t)(at - f->buf), (uint32_t)n, 0);
  if (f->chunked_out) rc |= flow_push_scratch(f, "\r\n", 2);
  return rc ? HPE_USER : 0;
}

static int cb_message_complete(llhttp_t *p) {
  sy_flow *f = parser_flow(p);
  sy_conn *c = flow_conn(p);
  if (f == &c->rs && c->interim) {
    /* A 1xx ends as a message of its own; the real response follows. */
    c->interim = 0;
    f->head_done = 0;
    sy_headscan_init(&f->scan);
    return HPE_PAUSED;
  }
  if (f->chunked_out && !f->discard && flow_push_scratch(f, "0\r\n\r\n", 5)) return HPE_USER;
  f->msg_done = 1;
  f->check_chunk_end = (p->flags & F_CHUNKED) != 0;
  return HPE_PAUSED;
}

static int cb_req_headers_complete(llhttp_t *p) {
  sy_flow *f = parser_flow(p);
  f->head.major = p->http_major;
  f->head.minor = p->http_minor;
  f->head_done = 1;
  return HPE_PAUSED;
}

static int cb_resp_headers_complete(llhttp_t *p);

static const llhttp_settings_t req_settings = {
    .on_message_begin = cb_message_begin,
    .on_method = cb_method,
    .on_url = cb_url,
    .on_header_field = cb_field,
    .on_header_value = cb_value,
    .on_headers_complete = cb_req_headers_complete,
    .on_body = cb_body,
    .on_message_complete = cb_message_complete,
};

static const llhttp_settings_t resp_settings = {
    .on_message_begin = cb_message_begin,
    .on_status = cb_status,
    .on_header_field = cb_field,
    .on_header_value = cb_value,
    .on_headers_complete = cb_resp_headers_complete,
    .on_body = cb_body,
    .on_message_complete = cb_message_complete,
};

/* ---- request head ------------------------------------------------------------ */

static void remember_request(sy_conn *c) {
  sy_flow *f = &c->rq;
  sy_str m = sy_span_str(f->buf, f->head.method);
  size_t mn = m.len < sizeof(c->method) - 1 ? m.len : sizeof(c->method) - 1;
  memcpy(c->method, m.p, mn);
  c->method[mn] = 0;
  sy_str t = sy_span_str(f->buf, f->head.target);
  /* absolute-form routes on its path like origin-form (the authority was
   * checked against Host). */
  if (sy_target_authority(t, &t).p != f->buf + f->head.target.off && (!t.len || t.p[0] != '/'))
    t = (sy_str){"/", 1};
  size_t q = 0;
  while (q < t.len && t.p[q] != '?')
    q++;
  free(c->path); /* a request resumed after an RFC 2817 upgrade is seen twice */
  c->path = strndup(t.p, q < 2048 ? q : 2048);
  c->is_head_req = f->parser.method == HTTP_HEAD;
  c->http10 = f->head.major == 1 && f->head.minor == 0;
  c->client_close = !llhttp_should_keep_alive(&f->parser);
  c->keep_alive10 = c->http10 && !c->client_close;
  c->has_body = (f->parser.flags & (F_CHUNKED | F_CONTENT_LENGTH)) &&
                !((f->parser.flags & F_CONTENT_LENGTH) && f->parser.content_length == 0);
}

/* hash(header:X), hash(cookie:NAME) or hash(client): what keeps a user on
 * one server. A missing header or cookie hashes as empty (one server). */
static uint64_t balance_key(sy_conn *c) {
  const sy_upstream_cfg *up = c->route->upstream;
  if (up->balance != SY_BALANCE_HASH || !up->hash_key) return 0;
  sy_flow *f = &c->rq;
  const char *k = up->hash_key;
  if (strncmp(k, "header:", 7) == 0) {
    const sy_field *h = sy_head_find(&f->head, f->buf, k + 7);
    return h ? sy_hash_bytes(f->buf + h->value.off, h->value.len) : 0;
  }
  if (strncmp(k, "cookie:", 7) == 0) {
    size_t nl = strlen(k + 7);
    for (size_t i = 0; i < f->head.nfields; i++) {
      if (!sy_str_ieq(sy_span_str(f->buf, f->head.fields[i].name), "cookie")) continue;
      sy_str v = sy_span_str(f->buf, f->head.fields[i].value);
      for (size_t p = 0; p + nl < v.len; p++) {
        if ((p == 0 || v.p[p - 1] == ' ' || v.p[p - 1] == ';') && memcmp(v.p + p, k + 7, nl) == 0 &&
            v.p[p + nl] == '=') {
          size_t e = p + nl + 1;
          while (e < v.len && v.p[e] != ';')
            e++;
          return sy_hash_bytes(v.p + p + nl + 1, e - p - nl - 1);
        }
      }
    }
    return 0;
  }
  return sy_hash_bytes(c->client_ip, strlen(c->client_ip)); /* hash(client) */
}

static void route_request(sy_conn *c) {
  sy_flow *f = &c->rq;
  remember_request(c);
  if (sy_head_validate(&f->head, f->buf) < 0) {
    local_response(c, 400, 1);
    return;
  }
  if (f->parser.method == HTTP_CONNECT) {
    local_response(c, 405, 1);
    return;
  }
  sy_str offered[SY_MAX_UPGRADES];
  size_t noffered = sy_head_upgrade_offers(&c->rq.head, c->rq.buf, offered, SY_MAX_UPGRADES);
  if (noffered) {
    size_t n0 = offered[0].len < sizeof(c->offered0) - 1 ? offered[0].len : sizeof(c->offered0) - 1;
    memcpy(c->offered0, offered[0].p, n0);
    c->offered0[n0] = 0;
  }
  if (c->lcfg->offer_tls_upgrade != SY_TLS_OFFER_OFF) {
    /* This listener upgrades to TLS itself (RFC 2817): TLS tokens are for
     * the proxy and never travel upstream. */
    int offers_tls = 0;
    size_t k = 0;
    for (size_t i = 0; i < noffered; i++) {
      if (offered[i].len >= 4 && strncasecmp(offered[i].p, "TLS/", 4) == 0)
        offers_tls = 1;
      else if (!(offered[i].len >= 5 && strncasecmp(offered[i].p, "HTTP/", 5) == 0))
        offered[k++] = offered[i]; /* "HTTP/1.1" beside TLS means: HTTP over it */
    }
    noffered = k;
    if (!c->ctls && offers_tls && !c->has_body) {
      tls_upgrade_start(c);
      return;
    }
    if (!c->ctls && c->lcfg->offer_tls_upgrade == SY_TLS_OFFER_REQUIRED) {
      local_426(c);
      return;
    }
  }
  if (c->tls_upgrade_now && f->parser.method == HTTP_OPTIONS && f->head.target.len == 1 &&
      f->buf[f->head.target.off] == '*') {
    /* RFC 2817 §3.2's mandatory upgrade: OPTIONS * carried the switch, and
     * is answered by the proxy over the new TLS layer. */
    sy_buf b = {0};
    sy_buf_appendf(&b, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    local_send(c, 200, 0, &b);
    sy_buf_free(&b);
    return;
  }

  sy_header hv[128];
  size_t nh = f->head.nfields < 128 ? f->head.nfields : 128;
  for (size_t i = 0; i < nh; i++) {
    hv[i].name = sy_span_str(f->buf, f->head.fields[i].name);
    hv[i].value = sy_span_str(f->buf, f->head.fields[i].value);
  }
  const sy_field *host = sy_head_find(&f->head, f->buf, "host");
  sy_request_view rv = {
      .method = sy_span_str(f->buf, f->head.method),
      .host = host ? sy_span_str(f->buf, host->value) : (sy_str){NULL, 0},
      .path = {c->path, strlen(c->path)},
      .headers = hv,
      .nheaders = nh,
      .upgrades = offered,
      .nupgrades = noffered,
  };
  c->route = sy_route_match(c->cfg, &rv);
  if (!c->route || !c->route->upstream) {
    local_response(c, 404, !c->has_body ? 0 : 1);
    return;
  }
  if (c->route->require_tls && !c->ctls) {
    local_426(c);
    return;
  }
  /* Keep only the tokens the route lets through, in the client's order. */
  size_t used = 0;
  for (size_t i = 0; i < noffered && c->nup_tokens < SY_MAX_UPGRADES; i++) {
    if (!sy_route_allows_upgrade(c->route, offered[i])) continue;
    if (used + offered[i].len > sizeof(c->up_store)) break;
    memcpy(c->up_store + used, offered[i].p, offered[i].len);
    c->up_tokens[c->nup_tokens++] = (sy_str){c->up_store + used, offered[i].len};
    used += offered[i].len;
  }
  c->upgrading = c->nup_tokens > 0;
  if (c->upgrading && c->cfg->limits.max_tunnels &&
      sy_worker_total_tunnels() >= c->cfg->limits.max_tunnels) {
    sy_log_error("limits.max_tunnels (%llu) reached: upgrade refused",
                 (unsigned long long)c->cfg->limits.max_tunnels);
    sy_metrics_add(c->w->metrics, "switchyard_upgrades_refused_total", "reason=\"max_tunnels\"", 1);
    local_response(c, 503, !c->has_body ? 0 : 1);
    return;
  }
  if (c->upgrading && c->route->ws_check_accept) {
    /* Checked whatever the client sent: without a usable key no 101 can be
     * verified, so none is accepted (the client cannot opt out). */
    c->check_accept = 1;
    const sy_field *k = sy_head_find(&f->head, f->buf, "sec-websocket-key");
    if (k && k->value.len < sizeof(c->ws_key)) {
      memcpy(c->ws_key, f->buf + k->value.off, k->value.len);
      c->ws_key[k->value.len] = 0;
    }
  }
  c->key_hash = balance_key(c);
  start_connect(c);
}

/* Queue the rewritten request head; the body follows as the parser yields it. */
static int queue_request_head(sy_conn *c) {
  sy_flow *f = &c->rq;
  f->chunked_out = (f->parser.flags & F_CHUNKED) != 0;
  sy_str wsp[16];
  size_t nwsp = 0;
  const sy_route_cfg *r = c->route;
  if (r->ws_subprotocols_set) {
    for (size_t i = 0; i < r->nws_subprotocols && nwsp < 16; i++)
      wsp[nwsp++] = (sy_str){r->ws_subprotocols[i], strlen(r->ws_subprotocols[i])};
  }
  sy_fwd_opts o = {
      .xff = c->cfg->forwarding.x_forwarded_for,
      .xfproto = c->cfg->forwarding.x_forwarded_proto,
      .xfhost = c->cfg->forwarding.x_forwarded_host,
      .via = c->cfg->forwarding.via,
      .client_ip = c->client_ip,
      .proto = c->ctls ? "https" : "http",
      .default_host = c->server ? c->server->addr.text : NULL,
      .chunked = f->chunked_out,
      .upgrades = c->up_tokens,
      .nupgrades = c->nup_tokens,
      .ws_protocols = wsp,
      .nws_protocols = nwsp,
      .ws_protocols_restricted = r->ws_subprotocols_set,
  };
  uint32_t off = (uint32_t)f->scratch.len;
  int rc = sy_http_build_request(&f->scratch, &f->head, f->buf, &o);
  return rc ? rc : flow_push(f, off, (uint32_t)f->scratch.len - off, 1);
}

/* ---- upstream connection --------------------------------------------------------- */

static void on_upstream_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void cipher_alloc(sy_worker *w, uv_buf_t *buf) {
  /* Records are decrypted straight out of this into the flow's buffer. */
  buf->base = cipher_block_get(w);
  buf->len = buf->base ? SY_CIPHER_BLOCK : 0;
}

static void upstream_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  static __thread char sink[64];
  sy_link *l = h->data;
  sy_conn *c = l->c;
  if (!c) { /* pooled: anything that arrives condemns the link */
    buf->base = sink;
    buf->len = sizeof(sink);
    return;
  }
  if (c->utls) {
    cipher_alloc(c->w, buf);
    return;
  }
  if ((c->rs.msg_done && c->rs.writing) || flow_alloc(c, &c->rs, SY_FLOW_BUF) < 0 ||
      c->rs.len == c->rs.cap) {
    buf->base = NULL;
    buf->len = 0;
    return;
  }
  buf->base = c->rs.buf + c->rs.len;
  buf->len = c->rs.cap - c->rs.len;
}

static int upstream_wants(const sy_conn *c) {
  if (!c->link || c->closing) return 0;
  /* The upstream is not read ahead of a batch in flight: how it ends (FIN
   * or RST) must be seen in order with the bytes before it, and a read-ahead
   * RST can surface as a plain EOF once the kernel has reported it. */
  if (c->state == SY_RELAY)
    return !c->rs.writing && !c->rs.eof && (!c->rs.buf || c->rs.len < c->rs.cap);
  /* A complete response that went out at once, its callback due before the
   * next poll: the read stays armed (upstream_alloc lends no buffer
   * meanwhile), because the connection goes back to the pool, which reads it
   * again; a stop and a start cost two epoll_ctl per request. */
  if (c->rs.msg_done && c->rs.deferred && !c->upgrading && !c->switching) return 1;
  return !c->rs.writing && c->state >= SY_STREAM_BODY && c->state <= SY_STREAM_RESP_BODY &&
         (!c->rs.buf || c->rs.len < c->rs.cap);
}

static void upstream_read_update(sy_conn *c) {
  if (!c->link || c->closing) return;
  if (c->rs.eof && !c->rs.writing && c->rs.pos == c->rs.len && c->state != SY_RELAY) {
    c->rs.eof = 0;
    upstream_eof(c, UV_EOF);
    return;
  }
  int want = upstream_wants(c);
  if (c->utls && !sy_tls_handshake_done(c->utls))
    want = 1;
  else if (c->utls && want && sy_tls_has_pending(c->utls))
    tls_pump(c, SY_UPSTREAM);
  if (!c->link || c->closing) return;
  if (want)
    uv_read_start((uv_stream_t *)&c->link->tcp, upstream_alloc, on_upstream_read);
  else
    uv_read_stop((uv_stream_t *)&c->link->tcp);
}

static void upstream_failed(sy_conn *c, int timeout);
static void upstream_ready(sy_conn *c);

static void on_connect(uv_connect_t *req, int status) {
  sy_link *l = req->data;
  sy_conn *c = l->c;
  if (!c || c->closing || c->link != l) {
    if (c) conn_unref(c);
    return;
  }
  conn_unref(c);
  if (status < 0) {
    link_close(c);
    upstream_failed(c, status == UV_ETIMEDOUT);
    return;
  }
  uv_tcp_nodelay(&l->tcp, 1);
  const sy_upstream_cfg *up = c->route->upstream;
  sy_upstream_report((sy_upstream_cfg *)up, (sy_server_cfg *)c->server, 1, uv_now(&c->w->loop));
  if (up->tls_ctx) {
    const char *sni = up->tls.sni ? up->tls.sni : c->server->addr.host;
    c->utls = sy_tls_conn_new(up->tls_ctx, 0, sni, up->tls.verify);
    if (!c->utls) {
      local_response(c, 500, 1);
      return;
    }
    upstream_read_update(c);
    tls_pump(c, SY_UPSTREAM); /* the ClientHello; upstream_ready follows the handshake */
    return;
  }
  upstream_ready(c);
}

/* The upstream connection can carry the request: send the head, then the body. */
static int idempotent(const sy_conn *c) {
  static const char *const m[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", NULL};
  for (const char *const *p = m; *p; p++)
    if (strcmp(c->method, *p) == 0) return 1;
  return 0;
}

static void upstream_ready(sy_conn *c) {
  c->state = c->rq.msg_done ? SY_READ_RESP_HEAD : SY_STREAM_BODY;
  timer_arm(c, response_timeout(c));
  if (c->retry_head.len) {
    /* A stale pooled connection failed this request before any answer: the
     * same head goes once more on a fresh connection. */
    flow_push_sybuf(&c->rq, &c->retry_head);
    c->retry_head.len = 0;
    rq_flush(c);
    upstream_read_update(c);
    return;
  }
  if (queue_request_head(c) < 0) {
    local_response(c, 500, 1);
    return;
  }
  if (c->link->reused && idempotent(c) && !c->has_body && !c->upgrading &&
      c->rq.scratch.len < 65536)
    sy_buf_append(&c->retry_head, c->rq.scratch.p, c->rq.scratch.len);
  /* Resume the request parser: body bytes already buffered join the head. */
  llhttp_resume(&c->rq.parser);
  client_feed(c);
  upstream_read_update(c);
}

/* A reused connection that died before any response byte: retry once. */
static int retry_stale(sy_conn *c) {
  if (!c->link || !c->link->reused || c->rs.bytes || !c->retry_head.len || c->retried) return 0;
  c->retried = 1;
  sy_metrics_add(c->w->metrics, "switchyard_upstream_stale_retries_total", NULL, 1);
  link_close(c);
  flow_batch_done(&c->rq);
  c->fresh_only = 1;
  c->tried &= ~(1ull << (c->server - c->route->upstream->servers));
  start_connect(c);
  return 1;
}

static void start_connect(sy_conn *c) {
  sy_upstream_cfg *up = (sy_upstream_cfg *)c->route->upstream;
  int i = sy_upstream_pick(up, c->tried, c->key_hash, uv_now(&c->w->loop));
  if (i < 0) {
    if (i == SY_PICK_ALL_DOWN) sy_log_error("upstream %s: no server is up", up->name);
    local_response(c, i == SY_PICK_ALL_DOWN ? 503 : c->last_err_timeout ? 504 : 502, 0);
    return;
  }
  c->tried |= 1ull << i;
  const sy_server_cfg *s = &up->servers[i];
  c->server = s;
  c->state = SY_CONNECT;
  if (!up->tls_ctx && !c->fresh_only) {
    sy_link *pooled = sy_upool_get(c->w->upool, s);
    if (pooled) {
      pooled->c = c;
      pooled->on_closed = on_link_closed;
      c->refs++; /* the link handle */
      c->link = pooled;
      c->link_used = 1;
      c->server_counted = 1;
      server_count(c, 1);
      sy_metrics_add(c->w->metrics, "switchyard_upstream_pool_reuses_total", NULL, 1);
      upstream_ready(c);
      return;
    }
  }
  sy_link *l = sy_link_new(&c->w->loop, s);
  if (!l) {
    local_response(c, 500, 1);
    return;
  }
  l->c = c;
  l->on_closed = on_link_closed;
  c->refs++; /* the link handle */
  c->link = l;
  c->link_used = 1;
  c->server_counted = 1;
  server_count(c, 1);
  int rc = uv_tcp_connect(&l->creq, &l->tcp, (const struct sockaddr *)&s->addr.sa, on_connect);
  if (rc == UV_EMFILE || rc == UV_ENFILE || rc == UV_ENOBUFS || rc == UV_ENOMEM) {
    /* Our own shortage, not the server's fault: no passive ejection. */
    sy_log_error("upstream %s: cannot open a socket: %s (out of file descriptors?)", s->addr.text,
                 uv_strerror(rc));
    link_close(c);
    local_response(c, 503, 1);
    return;
  }
  if (rc < 0) {
    link_close(c);
    upstream_failed(c, 0);
    return;
  }
  c->refs++; /* the connect request */
  /* Armed now, the read costs nothing extra: libuv adds the socket for both
   * events and drops POLLOUT after the connect. Started after it, libuv's
   * ADD fails with EEXIST and is retried as a MOD. libuv delivers no read
   * before the connect callback, which decides whether reading stays on. */
  uv_read_start((uv_stream_t *)&l->tcp, upstream_alloc, on_upstream_read);
  timer_arm(c, route_timeout(c, c->route->timeouts.connect, c->cfg->timeouts.connect));
}

static void upstream_failed(sy_conn *c, int timeout) {
  c->last_err_timeout = timeout;
  sy_log_error("upstream %s: %s", c->server ? c->server->addr.text : "?",
               timeout ? "connect timed out" : "connect failed");
  if (c->server)
    sy_upstream_report((sy_upstream_cfg *)c->route->upstream, (sy_server_cfg *)c->server, 0,
                       uv_now(&c->w->loop));
  start_connect(c); /* the next server: no byte of the request was sent yet */
}

static void on_timeout(uv_timer_t *t) {
  sy_conn *c = t->data;
  uint64_t now = uv_now(&c->w->loop);
  if (!c->deadline) return;
  if (now < c->deadline) { /* moved on since the timer was set */
    uv_timer_start(&c->timer, on_timeout, c->deadline - now, 0);
    c->timer_due = c->deadline;
    return;
  }
  c->deadline = 0;
  switch (c->state) {
  case SY_READ_HEAD:
    if (c->rq.len > c->rq.head_start && !c->rq.head_done)
      local_response(c, 408, 1);
    else
      conn_close(c); /* idle keep-alive */
    break;
  case SY_CONNECT:
    link_close(c);
    upstream_failed(c, 1);
    break;
  case SY_STREAM_BODY:
    if (!c->rq.msg_done && !c->rq.writing && !c->resp_head_sent) {
      /* The client stopped sending its body (not the upstream reading it). */
      sy_log_error("client %s:%d: request body stalled (limits.body_timeout)", c->client_ip,
                   c->client_port);
      local_response(c, 408, 1);
      break;
    }
    /* fall through */
  case SY_READ_RESP_HEAD:
  case SY_STREAM_RESP_BODY:
    if (!c->resp_head_sent) {
      sy_log_error("upstream %s: no response in time", c->server ? c->server->addr.text : "?");
      local_response(c, 504, 1);
    } else {
      conn_close(c);
    }
    break;
  case SY_RELAY:
    c->relay_closed_by = "proxy";
    relay_end(c, (c->rq.eof || c->rs.eof) ? "fin_timeout" : "idle_timeout");
    break;
  default:
    conn_close(c);
  }
}

/* ---- response head ------------------------------------------------------------- */

static int token_offered(const sy_conn *c, sy_str tok) {
  for (size_t i = 0; i < c->nup_tokens; i++)
    if (sy_str_ieq2(c->up_tokens[i], tok)) return 1;
  return 0;
}

static int first_tok(sy_str tok, void *arg) {
  *(sy_str *)arg = tok;
  return 1;
}

/* Is this 101 one we may turn into a tunnel? Otherwise it is the "fake 101"
 * smuggling class and the client gets a 502. */
static int switch_acceptable(sy_conn *c) {
  sy_flow *f = &c->rs;
  if (!c->upgrading) return 0;
  const sy_field *up = sy_head_find(&f->head, f->buf, "upgrade");
  if (!up) return 0;
  sy_str chosen = {0};
  sy_list_each(sy_span_str(f->buf, up->value), first_tok, &chosen);
  if (!chosen.len || !token_offered(c, chosen)) return 0;
  size_t n = chosen.len < sizeof(c->proto) - 1 ? chosen.len : sizeof(c->proto) - 1;
  memcpy(c->proto, chosen.p, n);
  c->proto[n] = 0;
  if (c->check_accept && sy_str_ieq(chosen, "websocket")) {
    const sy_field *acc = sy_head_find(&f->head, f->buf, "sec-websocket-accept");
    if (!c->ws_key[0]) return 0;
    char want[29];
    sy_ws_accept((sy_str){c->ws_key, strlen(c->ws_key)}, want);
    if (!acc || acc->value.len != 28 || memcmp(f->buf + acc->value.off, want, 28) != 0) return 0;
  }
  return 1;
}

static int cb_resp_headers_complete(llhttp_t *p) {
  sy_conn *c = flow_conn(p);
  sy_flow *f = &c->rs;
  f->head.major = p->http_major;
  f->head.minor = p->http_minor;
  f->head.status = p->status_code;
  f->head_done = 1;
  int status = p->status_code;
  sy_resp_opts o = {.via = c->cfg->forwarding.via};
  if (sy_head_validate(&f->head, f->buf) < 0) return HPE_USER;
  /* The whole head may come in one read: measure it here, not only while
   * it is incomplete. */
  uint32_t end = f->head.reason.off + f->head.reason.len;
  if (f->head.nfields) {
    const sy_field *last = &f->head.fields[f->head.nfields - 1];
    end = last->value.len ? last->value.off + last->value.len : last->name.off + last->name.len;
  }
  if (end - f->head_start > c->cfg->limits.max_header_bytes + 1024) return HPE_USER;
  int skip_body = 0;
  if (status == 101) {
    if (!switch_acceptable(c)) {
      c->bad_101 = 1;
      return HPE_USER;
    }
    o.upgrade = 1;
    c->switching = 1;
  } else if (status >= 100 && status < 200) {
    c->interim = 1;
  } else {
    int bodyless = c->is_head_req || status == 204 || status == 304;
    int framed = (p->flags & (F_CHUNKED | F_CONTENT_LENGTH)) != 0;
    if (!bodyless && !framed) {
      /* Delimited by the upstream closing: re-frame for 1.1, close for 1.0. */
      if (c->http10)
        c->close_after = 1;
      else
        f->chunked_out = 1;
    } else if (!bodyless && (p->flags & F_CHUNKED)) {
      if (c->http10)
        c->close_after = 1;
      else
        f->chunked_out = 1;
    }
    if (c->client_close) c->close_after = 1;
    o.chunked = f->chunked_out;
    o.conn_close = c->close_after || c->w->stopping; /* a drain closes after it */
    o.keep_alive10 = c->keep_alive10 && !c->close_after;
    c->status = status;
    c->resp_from_upstream = 1;
    /* llhttp would read a body announced on a 304; RFC 9110 §6.4.1 says none
     * follows, whatever Content-Length claims. */
    skip_body = bodyless;
    c->state = SY_STREAM_RESP_BODY;
  }
  /* Built straight into the scratch buffer it is written from. */
  uint32_t off = (uint32_t)f->scratch.len;
  int rc = sy_http_build_response(&f->scratch, &f->head, f->buf, &o);
  if (rc == 0) rc = flow_push(f, off, (uint32_t)f->scratch.len - off, 1);
  if (rc) return HPE_USER;
  if (!c->interim) c->resp_head_sent = 1;
  return skip_body ? 1 : 0;
}

/* ---- feeding the parsers ----------------------------------------------------- */

static void upstream_feed(sy_conn *c) {
  sy_flow *f = &c->rs;
  if (c->state == SY_RELAY) {
    relay_input(c, SY_UPSTREAM);
    return;
  }
  while (!c->closing && f->pos < f->len && !f->msg_done && !f->writing) {
    if (!f->head_done && flow_scan(f) < 0) {
      sy_log_error("upstream %s: invalid response head (bare CR/LF, obs-fold or NUL)",
                   c->server ? c->server->addr.text : "?");
      local_response(c, 502, 1);
      return;
    }
    const char *start = f->buf + f->pos;
    llhttp_errno_t e = llhttp_execute(&f->parser, start, f->len - f->pos);
    if (e == HPE_OK) {
      f->pos = f->len;
    } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
      f->pos = (uint32_t)(llhttp_get_error_pos(&f->parser) - f->buf);
      if (flow_check_chunk_end(f) < 0) {
        sy_log_error("upstream %s: chunked body not ended by CRLF",
                     c->server ? c->server->addr.text : "?");
        local_response(c, 502, 1);
        return;
      }
      if (!f->msg_done) {
        llhttp_resume(&f->parser); /* end of a 1xx: keep going */
        continue;
      }
    } else {
      if (c->bad_101)
        sy_log_error("upstream %s: 101 for a protocol the client did not offer",
                     c->server ? c->server->addr.text : "?");
      else
        sy_log_error("upstream %s: invalid response: %s", c->server ? c->server->addr.text : "?",
                     llhttp_errno_name(e));
      local_response(c, 502, 1);
      return;
    }
    if (!f->head_done &&
        (f->len == f->cap || f->len - f->head_start > c->cfg->limits.max_header_bytes + 1024)) {
      sy_log_error("upstream %s: response head too large", c->server ? c->server->addr.text : "?");
      local_response(c, 502, 1);
      return;
    }
  }
  if (c->closing) return;
  if (f->nsegs) timer_arm(c, response_timeout(c));
  rs_flush(c);
  upstream_read_update(c);
}

static void upstream_input(sy_conn *c, size_t n) {
  c->rs.len += (uint32_t)n;
  c->rs.bytes += (uint64_t)n;
  upstream_feed(c);
}

static void upstream_eof(sy_conn *c, ssize_t n) {
  if (c->link) uv_read_stop((uv_stream_t *)&c->link->tcp);
  if (c->state != SY_RELAY && retry_stale(c)) return;
  if (c->state == SY_RELAY) {
    relay_eof(c, SY_UPSTREAM, n);
    return;
  }
  if (c->state == SY_CONNECT && c->utls) {
    sy_log_error("upstream %s: TLS handshake failed: connection closed",
                 c->server ? c->server->addr.text : "?");
    local_response(c, 502, 1);
    return;
  }
  if (n == UV_EOF && (c->rs.writing || c->rs.pos < c->rs.len)) {
    /* Read ahead of the parser: the EOF counts once those bytes are parsed
     * (upstream_read_update comes back here). */
    c->rs.eof = 1;
    return;
  }
  if (c->rs.msg_done) return; /* the response is whole; the connection just is not reusable */
  if (n == UV_EOF && llhttp_message_needs_eof(&c->rs.parser) && c->rs.head_done) {
    llhttp_finish(&c->rs.parser);
    rs_flush(c);
    return;
  }
  sy_log_error("upstream %s: connection closed before the response ended",
               c->server ? c->server->addr.text : "?");
  if (!c->resp_head_sent)
    local_response(c, 502, 1);
  else
    conn_close(c);
}

static void on_upstream_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  sy_link *l = s->data;
  sy_conn *c = l->c;
  if (!c) {
    /* An idle pooled connection: stray bytes, EOF or an error all mean it
     * cannot carry another request. */
    if (n != 0) sy_link_close(l);
    return;
  }
  if (c->utls) {
    if (n > 0 && sy_tls_feed(c->utls, buf->base, (size_t)n) < 0) n = UV_ENOMEM;
    cipher_block_put(c->w, buf->base);
    if (n > 0) {
      tls_pump(c, SY_UPSTREAM);
      upstream_read_update(c);
      return;
    }
  } else if (n > 0) {
    upstream_input(c, (size_t)n);
    return;
  }
  if (n == 0 || n == UV_ENOBUFS) return;
  if (c->rs.msg_done && c->rs.writing && c->state != SY_RELAY) {
    /* The response is complete (see upstream_wants): its end now only means
     * that the connection cannot carry another request. */
    c->rs.eof = 1;
    uv_read_stop(s);
    return;
  }
  upstream_eof(c, n);
}

static void client_feed(sy_conn *c) {
  sy_flow *f = &c->rq;
  if (c->state == SY_RELAY) {
    relay_input(c, SY_CLIENT);
    return;
  }
  /* After a resume the parser may owe callbacks that need no further byte
   * (message end of a bodiless request), hence one run even on no input. */
  int kick = f->head_done && c->state != SY_READ_HEAD;
  while (!c->closing && (f->pos < f->len || kick) && !f->writing && !f->msg_done) {
    kick = 0;
    if (c->state == SY_CONNECT) return;
    if (c->state == SY_READ_HEAD && f->head_done) return;
    if (c->state == SY_READ_HEAD && flow_scan(f) < 0) {
      memcpy(c->method, "-", 2);
      local_response(c, 400, 1);
      return;
    }
    const char *start = f->buf ? f->buf + f->pos : "";
    llhttp_errno_t e = llhttp_execute(&f->parser, start, f->len - f->pos);
    uint32_t before = f->pos;
    if (e == HPE_OK) {
      f->pos = f->len;
    } else if (e == HPE_PAUSED_UPGRADE && !f->msg_done) {
      /* The previous request offered an upgrade that did not happen: the
       * connection is plain HTTP again. */
      f->pos = (uint32_t)(llhttp_get_error_pos(&f->parser) - f->buf);
      llhttp_resume_after_upgrade(&f->parser);
      continue;
    } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
      f->pos = (uint32_t)(llhttp_get_error_pos(&f->parser) - f->buf);
      if (flow_check_chunk_end(f) < 0) {
        local_response(c, 400, 1);
        return;
      }
    } else {
      int st = f->head.too_many ? 431 : 400;
      if (c->state != SY_READ_HEAD) {
        /* A broken body after the head went upstream: nothing to resync. */
        if (!c->resp_head_sent)
          local_response(c, 400, 1);
        else
          conn_close(c);
        return;
      }
      if (!c->method[0]) {
        size_t mn = f->head.method.len < 15 ? f->head.method.len : 15;
        memcpy(c->method, f->buf + f->head.method.off, mn);
        c->method[mn] = 0;
        if (!mn) memcpy(c->method, "-", 2);
      }
      local_response(c, st, 1);
      return;
    }
    c->bytes_in += f->pos - before;
    if (c->state == SY_READ_HEAD) {
      if (f->pos - f->head_start > c->cfg->limits.max_header_bytes ||
          (!f->head_done && f->len - f->head_start > c->cfg->limits.max_header_bytes)) {
        memcpy(c->method, "-", 2);
        local_response(c, 431, 1);
        return;
      }
      if (f->head_done) {
        timer_arm(c, 0);
        route_request(c);
        client_read_update(c); /* routing decides whether the client is read on */
        return;
      }
    }
  }
  if (c->closing) return;
  if (c->rq.discard) {
    f->nsegs = 0;
    f->scratch.len = 0;
    flow_compact(f);
    if (f->msg_done) {
      maybe_finish(c);
      return;
    }
  } else {
    if (f->nsegs && c->state != SY_READ_HEAD)
      timer_arm(c, !f->msg_done && c->state == SY_STREAM_BODY ? c->cfg->timeouts.body_idle
                                                              : response_timeout(c));
    rq_flush(c);
  }
  client_read_update(c);
}

/* ---- client side ---------------------------------------------------------- */

static void on_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static uint32_t client_buf_cap(const sy_conn *c) {
  uint32_t cap = SY_FLOW_BUF;
  if (c->cfg->limits.max_header_bytes + 1 > cap)
    cap = (uint32_t)c->cfg->limits.max_header_bytes + 1;
  return cap;
}

static void client_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  sy_conn *c = h->data;
  if (c->ctls) {
    cipher_alloc(c->w, buf);
    return;
  }
  if (flow_alloc(c, &c->rq, client_buf_cap(c)) < 0 || c->rq.len == c->rq.cap) {
    buf->base = NULL;
    buf->len = 0;
    return;
  }
  buf->base = c->rq.buf + c->rq.len;
  buf->len = c->rq.cap - c->rq.len;
}

static int client_wants(sy_conn *c) {
  sy_flow *f = &c->rq;
  int want;
  if (c->state == SY_RELAY)
    want = !f->eof;
  else if (c->state == SY_READ_HEAD)
    want = !f->head_done;
  else if (c->state == SY_CONNECT)
    want = 0;
  else if (f->msg_done)
    /* Between a request and its answer the client may go on reading into the
     * buffer (pipelining; no poll churn per request), except after an
     * upgrade request, which holds the client until the answer. */
    want = !c->upgrading && !c->tls_upgrade_pending;
  else
    want = 1; /* the buffer bounds what is read ahead while a batch is written */
  if (want && f->buf && f->len == f->cap && f->pos == f->len && !f->writing && !f->nsegs)
    flow_compact(f);
  if (want && f->buf && f->len == f->cap) want = 0;
  return want;
}

static void client_read_update(sy_conn *c) {
  if (c->closing || c->state == SY_LINGER || c->state == SY_TUNNEL) return;
  if (c->rq.eof && !c->rq.writing && c->rq.pos == c->rq.len && c->state != SY_RELAY) {
    c->rq.eof = 0;
    client_eof(c, UV_EOF);
    return;
  }
  if (c->rq.eof && c->state != SY_RELAY) {
    uv_read_stop((uv_stream_t *)&c->client);
    return;
  }
  int want = client_wants(c);
  if (c->ctls && !sy_tls_handshake_done(c->ctls))
    want = 1; /* the handshake needs the socket whatever HTTP wants */
  else if (c->ctls && want && sy_tls_has_pending(c->ctls))
    tls_pump(c, SY_CLIENT); /* plaintext OpenSSL already holds comes first */
  if (c->closing || c->state == SY_LINGER) return;
  if (want)
    uv_read_start((uv_stream_t *)&c->client, client_alloc, on_client_read);
  else
    uv_read_stop((uv_stream_t *)&c->client);
}

static void client_input(sy_conn *c, size_t n) {
  if (c->state == SY_READ_HEAD && c->rq.len == c->rq.head_start && !c->rq.head_done) {
    timer_arm(c, c->cfg->timeouts.header);
    c->t_start = uv_hrtime(); /* a request's time starts with its first byte */
  }
  c->rq.len += (uint32_t)n;
  client_feed(c);
}

static void client_eof(sy_conn *c, ssize_t n) {
  uv_read_stop((uv_stream_t *)&c->client);
  if (c->state == SY_RELAY) {
    relay_eof(c, SY_CLIENT, n);
    return;
  }
  if (c->state == SY_READ_HEAD && c->rq.len == c->rq.pos) {
    conn_close(c); /* a clean end between requests */
    return;
  }
  if (n == UV_EOF && (c->rq.writing || c->rq.pos < c->rq.len)) {
    /* Read ahead of the parser: the request may still be whole. The EOF
     * counts once the buffer is parsed (client_read_update comes back). */
    c->rq.eof = 1;
    c->close_after = 1;
    return;
  }
  if (n == UV_EOF && c->rq.msg_done && c->state != SY_READ_HEAD) {
    /* A half-close after a whole request: answer it, then close. An upgrade
     * carries on: the FIN is still there for the tunnel to read. */
    c->close_after = 1;
    return;
  }
  if (n == UV_EOF && c->state >= SY_STREAM_BODY && llhttp_message_needs_eof(&c->rq.parser)) {
    llhttp_finish(&c->rq.parser);
    rq_flush(c);
    return;
  }
  /* The client left mid-request; nobody is there to read an answer. Logged
   * as nginx does, with 499 (client closed request). */
  sy_log_info("client %s:%d: connection %s mid-request", c->client_ip, c->client_port,
              n == UV_EOF ? "closed" : uv_strerror((int)n));
  if (c->method[0] && !c->resp_flushed) {
    c->status = 499;
    count_request(c);
    log_request(c);
  }
  conn_close(c);
}

static void on_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  sy_conn *c = s->data;
  if (c->ctls) {
    if (n > 0 && sy_tls_feed(c->ctls, buf->base, (size_t)n) < 0) n = UV_ENOMEM;
    cipher_block_put(c->w, buf->base);
    if (n > 0) {
      tls_pump(c, SY_CLIENT);
      client_read_update(c);
      return;
    }
  } else if (n > 0) {
    client_input(c, (size_t)n);
    return;
  }
  if (n == 0 || n == UV_ENOBUFS) return;
  client_eof(c, n);
}

/* ---- TLS on either socket ------------------------------------------------------ */

static uv_stream_t *side_stream(sy_conn *c, sy_side side) {
  if (side == SY_CLIENT) return (uv_stream_t *)&c->client;
  return c->link ? (uv_stream_t *)&c->link->tcp : NULL;
}

static sy_tls_conn *side_tls(sy_conn *c, sy_side side) {
  return side == SY_CLIENT ? c->ctls : c->utls;
}

static sy_flow *side_flow(sy_conn *c, sy_side side) {
  return side == SY_CLIENT ? &c->rq : &c->rs;
}

static const char *side_name(sy_side side) {
  return side == SY_CLIENT ? "client" : "upstream";
}

typedef struct sy_raw_write {
  uv_write_t req;
  sy_conn *c;
  sy_buf buf;
} sy_raw_write;

static void on_raw_written(uv_write_t *req, int status) {
  sy_raw_write *w = (sy_raw_write *)req;
  sy_conn *c = w->c;
  sy_buf_free(&w->buf);
  free(w);
  if (status < 0 && !c->closing) conn_close(c);
  conn_unref(c);
}

/* Bytes the proxy itself owes a socket (TLS handshake records, alerts, the 101
 * of an RFC 2817 upgrade), outside the flows' batches; libuv keeps a stream's
 * writes in order. Takes the buffer. */
static int raw_write(sy_conn *c, uv_stream_t *st, sy_buf *b) {
  sy_raw_write *w = calloc(1, sizeof(*w));
  if (!w) return -1;
  w->c = c;
  w->buf = *b;
  *b = (sy_buf){0};
  uv_buf_t ub = uv_buf_init(w->buf.p, (unsigned)w->buf.len);
  if (uv_write(&w->req, st, &ub, 1, on_raw_written) < 0) {
    sy_buf_free(&w->buf);
    free(w);
    return -1;
  }
  c->refs++;
  return 0;
}

static int tls_flush(sy_conn *c, sy_side side) {
  sy_tls_conn *t = side_tls(c, side);
  uv_stream_t *st = side_stream(c, side);
  if (!t || !st) return 0;
  sy_buf b = {0};
  int rc = sy_tls_take_output(t, &b);
  if (rc == 0 && b.len) rc = raw_write(c, st, &b);
  sy_buf_free(&b);
  return rc;
}

static void tls_handshake_failed(sy_conn *c, sy_side side) {
  if (side == SY_CLIENT) {
    sy_log_error("client %s:%d: TLS handshake failed: %s", c->client_ip, c->client_port,
                 sy_tls_error(c->ctls));
    conn_close(c);
  } else {
    sy_log_error("upstream %s: TLS handshake failed: %s", c->server ? c->server->addr.text : "?",
                 sy_tls_error(c->utls));
    local_response(c, 502, 1);
  }
}

static void tls_handshake_finished(sy_conn *c, sy_side side) {
  if (side == SY_UPSTREAM) {
    upstream_ready(c);
  } else if (c->tls_upgrade_pending) {
    c->tls_upgrade_pending = 0;
    c->tls_upgrade_now = 1;
    route_request(c); /* the request that asked for TLS is answered over it */
  }
}

/* Moves plaintext out of OpenSSL into the side's flow as long as the
 * connection wants it, driving the handshake first. Guarded against the
 * re-entry that feeding the parser can cause. */
static void tls_pump(sy_conn *c, sy_side side) {
  int bit = 1 << side;
  if (c->in_pump & bit) return;
  c->in_pump |= bit;
  for (int guard = 0; guard < 4096 && !c->closing && c->state != SY_LINGER; guard++) {
    sy_tls_conn *t = side_tls(c, side);
    if (!t) break;
    if (!sy_tls_handshake_done(t)) {
      int h = sy_tls_handshake(t);
      if (tls_flush(c, side) < 0) {
        conn_close(c);
        break;
      }
      if (h < 0) {
        tls_handshake_failed(c, side);
        break;
      }
      if (h == 0) break;
      tls_handshake_finished(c, side);
      continue;
    }
    int wants = side == SY_CLIENT ? client_wants(c) : upstream_wants(c);
    if (!wants) break;
    sy_flow *f = side_flow(c, side);
    if (flow_alloc(c, f, side == SY_CLIENT ? client_buf_cap(c) : SY_FLOW_BUF) < 0) {
      conn_close(c);
      break;
    }
    int n = sy_tls_read(t, f->buf + f->len, f->cap - f->len);
    if (tls_flush(c, side) < 0) {
      conn_close(c);
      break;
    }
    if (n > 0) {
      if (side == SY_CLIENT)
        client_input(c, (size_t)n);
      else
        upstream_input(c, (size_t)n);
      continue;
    }
    if (n == SY_TLS_CLOSED || n == SY_TLS_ERROR) {
      if (n == SY_TLS_ERROR)
        sy_log_error("%s %s: %s", side_name(side),
                     side == SY_CLIENT ? c->client_ip : (c->server ? c->server->addr.text : "?"),
                     sy_tls_error(t));
      if (side == SY_CLIENT)
        client_eof(c, n == SY_TLS_CLOSED ? UV_EOF : UV_EPROTO);
      else
        upstream_eof(c, n == SY_TLS_CLOSED ? UV_EOF : UV_EPROTO);
    }
    break;
  }
  c->in_pump &= ~bit;
}

/* RFC 2817 §3.2/§3.3: answer 101, then run the TLS handshake on this very
 * connection; the request that asked is routed once TLS is up. */
static void tls_upgrade_start(sy_conn *c) {
  sy_buf b = {0};
  sy_buf_appendf(&b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: TLS/1.0, HTTP/1.1\r\n"
                     "Connection: Upgrade\r\n\r\n");
  if (raw_write(c, (uv_stream_t *)&c->client, &b) < 0) {
    sy_buf_free(&b);
    conn_close(c);
    return;
  }
  c->ctls = sy_tls_conn_new(c->lcfg->tls_ctx, 1, NULL, 0);
  if (!c->ctls) {
    conn_close(c);
    return;
  }
  c->tls_upgrade_pending = 1;
  c->tls_upgraded = 1;
  /* Whatever followed the head is already the ClientHello. */
  sy_flow *f = &c->rq;
  if (f->len > f->pos) {
    sy_tls_feed(c->ctls, f->buf + f->pos, f->len - f->pos);
    f->len = f->pos;
  }
  timer_arm(c, c->cfg->timeouts.header);
  client_read_update(c);
  tls_pump(c, SY_CLIENT);
}

static void local_426(sy_conn *c) {
  sy_buf b = {0};
  sy_http_426_tls(&b);
  /* The body is read and dropped, so the client can retry on this very
   * connection with the upgrade, as RFC 2817 §4.2 intends. */
  local_send(c, 426, 0, &b);
  sy_buf_free(&b);
}

/* ---- relay: a switched connection with TLS on a side --------------------------- */

static uint64_t *relay_counter(sy_conn *c, sy_side from) {
  return from == SY_CLIENT ? &c->relay_c2u : &c->relay_u2c;
}

static void relay_arm(sy_conn *c) {
  const sy_route_cfg *rt = c->route;
  if (c->rq.eof || c->rs.eof) return; /* the FIN timer set at the first EOF keeps running */
  timer_arm(c, route_timeout(c, rt->timeouts.tunnel_idle, c->cfg->timeouts.tunnel_idle));
}

static void relay_end(sy_conn *c, const char *reason) {
  if (c->closing) return;
  sy_tunnel_stats st = {
      .bytes_c2u = c->relay_c2u,
      .bytes_u2c = c->relay_u2c,
      .copied = c->relay_c2u + c->relay_u2c,
      .duration_ms = (uv_hrtime() - c->relay_start) / 1000000,
      .closed_by = c->relay_closed_by ? c->relay_closed_by : "proxy",
      .reason = reason,
  };
  sy_tunnel_note n = note_of(c);
  count_tunnel(&n, -1, &st);
  sy_worker_tunnels_add(-1);
  log_tunnel(&n, &st);
  conn_close(c);
}

static void relay_input(sy_conn *c, sy_side from) {
  sy_flow *f = side_flow(c, from);
  if (f->writing) return; /* relay_written picks up what arrived meanwhile */
  uint32_t n = f->len - f->pos;
  if (n && flow_push(f, f->pos, n, 0) < 0) {
    conn_close(c);
    return;
  }
  f->pos = f->len;
  *relay_counter(c, from) += n;
  relay_arm(c);
  if (from == SY_CLIENT) {
    rq_flush(c);
    client_read_update(c);
  } else {
    rs_flush(c);
    upstream_read_update(c);
  }
}

static void on_relay_shutdown(uv_shutdown_t *req, int status) {
  sy_conn *c = req->data;
  free(req);
  conn_unref(c);
}

/* FIN (or close_notify then FIN) towards `to`, once everything for it went. */
static void relay_shutdown(sy_conn *c, sy_side to) {
  sy_tls_conn *t = side_tls(c, to);
  uv_stream_t *st = side_stream(c, to);
  if (!st) return;
  if (t) {
    sy_tls_shutdown(t);
    tls_flush(c, to);
  }
  uv_shutdown_t *req = malloc(sizeof(*req));
  if (!req) return;
  req->data = c;
  if (uv_shutdown(req, st, on_relay_shutdown) == 0)
    c->refs++;
  else
    free(req);
}

static void relay_maybe_done(sy_conn *c, sy_side from) {
  sy_flow *f = side_flow(c, from);
  if (!f->eof || f->writing || f->nsegs || f->pos < f->len) return;
  relay_shutdown(c, from == SY_CLIENT ? SY_UPSTREAM : SY_CLIENT);
  if (c->rq.eof && c->rs.eof && !c->rq.writing && !c->rs.writing) relay_end(c, "eof");
}

static void relay_written(sy_conn *c, sy_side from) {
  sy_flow *f = side_flow(c, from);
  flow_compact(f);
  flow_batch_done(f);
  flow_release_if_idle(c, f); /* an idle relay holds no buffer */
  if (f->pos < f->len)
    relay_input(c, from);
  else if (from == SY_CLIENT)
    client_read_update(c);
  else
    upstream_read_update(c);
  relay_maybe_done(c, from);
}

static void relay_eof(sy_conn *c, sy_side from, ssize_t status) {
  if (status != UV_EOF) {
    c->relay_closed_by = side_name(from);
    relay_end(c, status == UV_ECONNRESET || status == UV_EPIPE ? "reset" : "error");
    return;
  }
  sy_flow *f = side_flow(c, from);
  if (f->eof) return;
  f->eof = 1;
  if (!c->relay_closed_by) c->relay_closed_by = side_name(from);
  if (!(c->rq.eof && c->rs.eof)) {
    const sy_route_cfg *rt = c->route;
    timer_arm(c, route_timeout(c, rt->timeouts.tunnel_fin, c->cfg->timeouts.tunnel_fin));
  }
  relay_maybe_done(c, from);
}

static void start_relay(sy_conn *c) {
  c->status = 101;
  count_request(c);
  log_request(c);
  c->state = SY_RELAY;
  c->relay_start = uv_hrtime();
  sy_tunnel_note n = note_of(c);
  count_tunnel(&n, 1, NULL);
  sy_worker_tunnels_add(1);
  c->rq.msg_done = c->rs.msg_done = 0;
  c->rq.discard = c->rs.discard = 0;
  c->rq.chunked_out = c->rs.chunked_out = 0;
  relay_arm(c);
  /* Bytes read past either head go first, in order. */
  relay_input(c, SY_CLIENT);
  if (!c->closing) relay_input(c, SY_UPSTREAM);
}

/* ---- tunnel -------------------------------------------------------------------- */

void sy_conn_tunnel_done(sy_tunnel *t, const sy_tunnel_stats *st, void *arg) {
  sy_tunnel_note *n = sy_tunnel_extra(t);
  sy_worker *w = n->w;
  count_tunnel(n, -1, st);
  log_tunnel(n, st);
  if (n->server) __atomic_sub_fetch(&n->server->rt->active, 1, __ATOMIC_RELAXED);
  if (n->client_counted) sy_client_release(n->client_ip);
  sy_worker_tunnels_add(-1);
  sy_config_unref(n->cfg);
  sy_metrics_add_cell(w->metrics, &w->cell.open, "switchyard_connections_open", NULL, -1);
  sy_worker_conn_gone(w);
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

static void start_tunnel(sy_conn *c) {
  uv_os_fd_t cfd = -1, ufd = -1;
  uv_fileno((uv_handle_t *)&c->client, &cfd);
  if (c->link) uv_fileno((uv_handle_t *)&c->link->tcp, &ufd);
  int dc = cfd >= 0 ? dup(cfd) : -1;
  int du = ufd >= 0 ? dup(ufd) : -1;
  c->status = 101;
  count_request(c);
  log_request(c);
  /* Bytes read past either head go first, in order. */
  sy_flow *q = &c->rq, *r = &c->rs;
  sy_route_cfg const *rt = c->route;
  sy_tunnel_opts o = {
      .idle_timeout_ms = route_timeout(c, rt->timeouts.tunnel_idle, c->cfg->timeouts.tunnel_idle),
      .fin_timeout_ms = route_timeout(c, rt->timeouts.tunnel_fin, c->cfg->timeouts.tunnel_fin),
      .force_copy = 0,
      /* libuv's sockets are non-blocking, and conn_close below closes the
       * originals before this returns to the loop: the duplicates are alone. */
      .exclusive = 1,
  };
  size_t extra = sizeof(sy_tunnel_note) + strlen(c->proto) + strlen(c->client_ip) + 2 +
                 (c->path ? strlen(c->path) + 1 : 0);
  c->state = SY_TUNNEL;
  sy_tunnel *t =
      dc >= 0 && du >= 0
          ? sy_tunnel_start(c->w->tunnels, dc, du, q->buf ? q->buf + q->pos : NULL,
                            q->buf ? q->len - q->pos : 0, r->buf ? r->buf + r->pos : NULL,
                            r->buf ? r->len - r->pos : 0, &o, extra, NULL)
          : NULL;
  if (!t) {
    sy_log_error("tunnel: cannot hand over: %s", strerror(errno));
    if (dc >= 0) close(dc);
    if (du >= 0) close(du);
  } else {
    sy_tunnel_note *n = sy_tunnel_extra(t);
    char *at = (char *)(n + 1);
    *n = note_of(c);
    n->cfg = sy_config_ref(c->cfg);
    n->proto = note_str(&at, c->proto);
    n->client_ip = note_str(&at, c->client_ip);
    n->path = note_str(&at, c->path);
    /* From here the note is the client's connection: it counts towards
     * max_connections and, as a tunnel, towards the server's open
     * connections (least_conn) until the tunnel ends. */
    count_tunnel(n, 1, NULL);
    sy_worker_tunnels_add(1);
    c->handed_off = 1;
    c->server_counted = 0;
  }
  /* The tunnel owns the duplicates; the connection, its libuv handles and
   * its buffers go now. */
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

static void free_unaccepted(uv_handle_t *h) {
  sy_conn *c = h->data;
  sy_worker *w = c->w;
  free(c);
  sy_worker_conn_gone(w);
}

void sy_conn_accept(sy_worker *w, sy_listener *l) {
  sy_conn *c = calloc(1, sizeof(*c));
  if (!c) return;
  c->w = w;
  uv_tcp_init(&w->loop, &c->client);
  c->client.data = c;
  c->refs = 1;
  if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->client) < 0) {
    c->closing = 1;
    uv_close((uv_handle_t *)&c->client, free_unaccepted);
    return;
  }
  uv_tcp_nodelay(&c->client, 1);
  uv_timer_init(&w->loop, &c->timer);
  c->timer.data = c;
  c->refs++;
  c->cfg = sy_config_ref(w->cfg);
  c->lcfg = l->cfg;
  c->next = w->conns;
  if (w->conns) w->conns->prev = c;
  w->conns = c;
  sy_metrics_add_cell(w->metrics, &w->cell.accepted, "switchyard_connections_accepted_total", NULL,
                      1);
  sy_metrics_add_cell(w->metrics, &w->cell.open, "switchyard_connections_open", NULL, 1);

  struct sockaddr_storage ss;
  int len = sizeof(ss);
  if (uv_tcp_getpeername(&c->client, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET) {
      struct sockaddr_in *a = (struct sockaddr_in *)&ss;
      ip4_text(a, c->client_ip);
      c->client_port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
      uv_ip6_name(a, c->client_ip, sizeof(c->client_ip));
      c->client_port = ntohs(a->sin6_port);
    }
  }
  llhttp_init(&c->rq.parser, HTTP_REQUEST, &req_settings);
  c->rq.parser.data = c;
  llhttp_init(&c->rs.parser, HTTP_RESPONSE, &resp_settings);
  c->rs.parser.data = c;
  sy_headscan_init(&c->rq.scan);
  sy_headscan_init(&c->rs.scan);
  sy_head_init(&c->rq.head, 1, c->cfg->limits.max_headers);
  sy_head_init(&c->rs.head, 0, c->cfg->limits.max_headers);
  c->state = SY_READ_HEAD;
  c->t_start = uv_hrtime();
  if (l->cfg->tls_ctx && l->cfg->offer_tls_upgrade == SY_TLS_OFFER_OFF) {
    c->ctls = sy_tls_conn_new(l->cfg->tls_ctx, 1, NULL, 0);
    if (!c->ctls) {
      conn_close(c);
      return;
    }
  }
  uint64_t per_client = c->cfg->limits.max_connections_per_client;
  if (per_client && sy_client_acquire(c->client_ip, per_client) < 0) {
    sy_log_error("client %s: over limits.max_connections_per_client (%llu): refused", c->client_ip,
                 (unsigned long long)per_client);
    sy_metrics_add(w->metrics, "switchyard_connections_refused_total", "reason=\"per_client\"", 1);
    memcpy(c->method, "-", 2);
    if (c->ctls) /* no handshake yet to carry an answer over */
      conn_close(c);
    else
      local_response(c, 503, 1);
    return;
  }
  c->client_counted = per_client != 0;
  timer_arm(c, c->cfg->timeouts.header);
  client_read_update(c);
}

void sy_conn_drain_all(sy_worker *w) {
  sy_conn *next;
  for (sy_conn *c = w->conns; c; c = next) {
    next = c->next;
    /* Between requests: nothing to finish. In flight: maybe_finish closes
     * after the response (w->stopping). Tunnels: left to the drain timer. */
    if (c->state == SY_READ_HEAD && !c->rq.head_done && c->rq.len == c->rq.pos) conn_close(c);
  }
}

void sy_conn_close_all(sy_worker *w) {
  sy_tunnel_hub_close_all(w->tunnels, "shutdown"); /* done callbacks come on a later turn */
  sy_conn *next;
  for (sy_conn *c = w->conns; c; c = next) {
    next = c->next;
    if (c->state == SY_RELAY) {
      c->relay_closed_by = "proxy";
      relay_end(c, "shutdown");
    }
    conn_close(c);
  }
}
