/* sy-demo: the demo backend shipped with Switchyard.
 *
 * One file, one libuv loop, no third-party HTTP code, so that a person (or a
 * test) can put it behind the proxy and see exactly what the proxy forwarded:
 *   GET /         a page that opens a WebSocket back through the proxy
 *   GET /healthz  "ok\n"
 *   ANY /echo     the request as received (method, target, header lines)
 *   /ws...        RFC 6455 echo server
 */
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <uv.h>

#define DEFAULT_LISTEN "127.0.0.1:9000"
#define READ_CHUNK (64 * 1024)
#define MAX_HEAD (64 * 1024)
#define MAX_HEADERS 100
#define MAX_CHUNK_LINE 4096
#define MAX_WS_MESSAGE (16u * 1024 * 1024)
/* Stop reading while this much is queued for a slow reader, so an echo client
 * that never reads cannot make us buffer without bound. */
#define WRITE_HIGH_WATER (4u * 1024 * 1024)
#define WRITE_LOW_WATER (1u * 1024 * 1024)
/* A reassembly buffer above this is freed once its message is sent, so an
 * idle connection does not pin the memory of the largest message it carried.
 * (The input buffer is freed whenever it has been fully consumed.) */
#define KEEP_BUFFER_MAX (1u * 1024 * 1024)
#define FLUSH_TIMEOUT_MS 30000
#define LINGER_MS 2000
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ---------------------------------------------------------------- buffers */

struct buf {
  char *data;
  size_t len, cap;
};

struct slice {
  const char *p;
  size_t n;
};

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    /* A demo has no better answer to OOM than stopping loudly. */
    fputs("sy-demo: out of memory\n", stderr);
    abort();
  }
  return q;
}

static void buf_reserve(struct buf *b, size_t extra) {
  size_t cap = b->cap ? b->cap : 256;
  if (b->cap - b->len >= extra) return;
  while (cap - b->len < extra)
    cap *= 2;
  b->data = xrealloc(b->data, cap);
  b->cap = cap;
}

static void buf_append(struct buf *b, const void *p, size_t n) {
  buf_reserve(b, n);
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void buf_puts(struct buf *b, const char *s) {
  buf_append(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void buf_printf(struct buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  buf_reserve(b, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

static void buf_free(struct buf *b) {
  free(b->data);
  *b = (struct buf){0};
}

static int slice_eq(struct slice s, const char *lit) {
  return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

static int slice_ieq(struct slice s, const char *lit) {
  return s.n == strlen(lit) && strncasecmp(s.p, lit, s.n) == 0;
}

static int is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
  return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_token(struct slice s) {
  for (size_t i = 0; i < s.n; i++)
    if (!is_tchar((unsigned char)s.p[i])) return 0;
  return s.n > 0;
}

static struct slice trim_ows(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\t'))
    p++;
  while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
    e--;
  return (struct slice){p, (size_t)(e - p)};
}

/* ------------------------------------------------------------ connections */

enum mode { MODE_HTTP, MODE_WS, MODE_CLOSING };

enum body_state {
  BODY_DONE,
  BODY_FIXED,
  CHUNK_SIZE,
  CHUNK_DATA,
  CHUNK_CRLF,
  CHUNK_TRAILER,
};

struct header {
  struct slice name, value, line;
};

struct request {
  char *head; /* private copy of the head: every slice below points into it */
  struct slice method, target, path;
  int minor;
  struct header hdr[MAX_HEADERS];
  size_t nhdr;
  int keep_alive, chunked, has_length, expect_continue;
  uint64_t content_length;
  enum body_state body;
  uint64_t remaining, body_len, trailer_len;
};

struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer; /* flush deadline, then linger, once we are closing */
  uv_shutdown_t shutdown;
  int open_handles;
  struct conn *prev, *next;
  char peer[64];
  enum mode mode;
  int reading, closing, shutting_down, shut_done, peer_eof;
  struct buf in;
  size_t in_off;
  struct request req;
  struct buf msg; /* fragmented WebSocket message being reassembled */
  int msg_op;
};

struct write_req {
  uv_write_t req;
  struct conn *conn;
  char data[];
};

static struct {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_signal_t sigint, sigterm;
  struct conn *conns;
  int stopping;
} srv;

static void conn_process(struct conn *c);

static void on_handle_closed(uv_handle_t *h) {
  struct conn *c = h->data;
  if (--c->open_handles) return;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv.conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c->req.head);
  buf_free(&c->in);
  buf_free(&c->msg);
  free(c);
}

/* Abrupt close; queued writes are dropped. */
static void conn_close(struct conn *c) {
  if (c->closing) return;
  c->closing = 1;
  c->mode = MODE_CLOSING;
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_timer(uv_timer_t *t) {
  conn_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  struct conn *c = req->data;
  if (c->closing) return;
  c->shut_done = 1;
  if (status < 0 || c->peer_eof) {
    conn_close(c);
    return;
  }
  /* Keep reading (and discarding) briefly: closing with unread input makes
   * the kernel send RST, which can destroy the response we just flushed. */
  uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
}

/* Graceful close: flush what is queued, send FIN, then linger for the peer's. */
static void conn_finish(struct conn *c) {
  if (c->closing || c->shutting_down) return;
  c->mode = MODE_CLOSING;
  c->shutting_down = 1;
  c->shutdown.data = c;
  if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
    conn_close(c);
    return;
  }
  uv_timer_start(&c->timer, on_timer, FLUSH_TIMEOUT_MS, 0);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
  struct conn *c = h->data;
  struct buf *in = &c->in;
  if (c->in_off) {
    memmove(in->data, in->data + c->in_off, in->len - c->in_off);
    in->len -= c->in_off;
    c->in_off = 0;
  }
  buf_reserve(in, READ_CHUNK);
  size_t room = in->cap - in->len;
  *out = uv_buf_init(in->data + in->len, room > UINT_MAX ? UINT_MAX : (unsigned)room);
}

static void release_input_if_empty(struct conn *c) {
  if (c->in_off != c->in.len) return;
  buf_free(&c->in);
  c->in_off = 0;
}

static void on_peer_eof(struct conn *c) {
  c->peer_eof = 1;
  if (c->shut_done)
    conn_close(c);
  else
    conn_finish(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  struct conn *c = s->data;
  if (nread == UV_EOF) {
    on_peer_eof(c);
  } else if (nread < 0) {
    conn_close(c);
  } else if (nread > 0) {
    c->in.len += (size_t)nread;
    if (c->mode == MODE_CLOSING) c->in_off = c->in.len;
    conn_process(c);
  }
  if (!c->closing) release_input_if_empty(c);
}

static void read_start(struct conn *c) {
  if (c->reading || c->closing) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
    c->reading = 1;
  else
    conn_close(c);
}

static void on_write(uv_write_t *req, int status) {
  struct write_req *w = (struct write_req *)req;
  struct conn *c = w->conn;
  free(w);
  if (c->closing) return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (!c->reading && uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < WRITE_LOW_WATER)
    read_start(c);
}

/* Two pieces so a frame header and its payload go out in one copy. */
static void conn_write2(struct conn *c, const void *a, size_t an, const void *b, size_t bn) {
  if (c->closing || c->shutting_down) return;
  struct write_req *w = xrealloc(NULL, sizeof *w + an + bn);
  w->conn = c;
  if (an) memcpy(w->data, a, an);
  if (bn) memcpy(w->data + an, b, bn);
  uv_buf_t ub = uv_buf_init(w->data, (unsigned)(an + bn));
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, on_write) < 0) {
    free(w);
    conn_close(c);
    return;
  }
  if (c->reading && uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > WRITE_HIGH_WATER) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
}

static void conn_write(struct conn *c, const void *p, size_t n) {
  conn_write2(c, p, n, NULL, 0);
}

/* ------------------------------------------------------------ HTTP parser */

enum { NEED_MORE = 0, PROGRESS = 1 }; /* negative: an HTTP status to fail with */

/* Walks the comma-separated tokens of every header line named `name`, in
 * order, because list-valued fields may be split across lines. */
struct tokens {
  const struct request *r;
  const char *name;
  size_t i;
  const char *p, *end;
};

static void tokens_init(struct tokens *t, const struct request *r, const char *name) {
  *t = (struct tokens){.r = r, .name = name};
}

static int tokens_next(struct tokens *t, struct slice *tok) {
  for (;;) {
    if (!t->p) {
      while (t->i < t->r->nhdr && !slice_ieq(t->r->hdr[t->i].name, t->name))
        t->i++;
      if (t->i == t->r->nhdr) return 0;
      t->p = t->r->hdr[t->i].value.p;
      t->end = t->p + t->r->hdr[t->i].value.n;
      t->i++;
    }
    const char *comma = memchr(t->p, ',', (size_t)(t->end - t->p));
    *tok = trim_ows(t->p, comma ? comma : t->end);
    t->p = comma ? comma + 1 : NULL;
    if (tok->n) return 1;
  }
}

static int has_token(const struct request *r, const char *name, const char *token) {
  struct tokens t;
  struct slice tok;
  tokens_init(&t, r, name);
  while (tokens_next(&t, &tok))
    if (slice_ieq(tok, token)) return 1;
  return 0;
}

static size_t count_headers(const struct request *r, const char *name, struct slice *first) {
  size_t n = 0;
  for (size_t i = 0; i < r->nhdr; i++) {
    if (!slice_ieq(r->hdr[i].name, name)) continue;
    if (!n++ && first) *first = r->hdr[i].value;
  }
  return n;
}

static struct slice path_of(struct slice target) {
  const char *p = target.p, *e = target.p + target.n;
  if (target.n && *p != '/') {
    /* absolute-form: skip "scheme://authority" */
    const char *sep = memmem(p, target.n, "://", 3);
    if (!sep) return target;
    p = memchr(sep + 3, '/', (size_t)(e - sep - 3));
    if (!p) return (struct slice){"/", 1};
  }
  const char *q = memchr(p, '?', (size_t)(e - p));
  return (struct slice){p, (size_t)((q ? q : e) - p)};
}

static int parse_request_line(struct request *r, const char *s, size_t n) {
  const char *e = s + n;
  const char *sp1 = memchr(s, ' ', n);
  if (!sp1 || sp1 == s) return -400;
  const char *t = sp1 + 1;
  const char *sp2 = memchr(t, ' ', (size_t)(e - t));
  if (!sp2 || sp2 == t) return -400;
  r->method = (struct slice){s, (size_t)(sp1 - s)};
  r->target = (struct slice){t, (size_t)(sp2 - t)};
  if (!is_token(r->method)) return -400;
  for (const char *p = t; p < sp2; p++)
    if ((unsigned char)*p <= 0x20 || *p == 0x7f) return -400;
  const char *v = sp2 + 1;
  if (e - v != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.') return -400;
  if (v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9') return -400;
  if (v[5] != '1') return -505;
  r->minor = v[7] - '0';
  r->path = path_of(r->target);
  return 0;
}

static int parse_header_line(struct request *r, const char *s, size_t n) {
  if (s[0] == ' ' || s[0] == '\t') return -400; /* obs-fold */
  const char *colon = memchr(s, ':', n);
  if (!colon) return -400;
  struct slice name = {s, (size_t)(colon - s)};
  if (!is_token(name)) return -400;
  struct slice value = trim_ows(colon + 1, s + n);
  for (size_t i = 0; i < value.n; i++) {
    unsigned char ch = (unsigned char)value.p[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return -400;
  }
  if (r->nhdr == MAX_HEADERS) return -431;
  r->hdr[r->nhdr++] = (struct header){name, value, {s, n}};
  return 0;
}

static int parse_content_length(struct request *r) {
  for (size_t i = 0; i < r->nhdr; i++) {
    if (!slice_ieq(r->hdr[i].name, "Content-Length")) continue;
    struct slice v = r->hdr[i].value;
    uint64_t n = 0;
    if (v.n == 0 || v.n > 18) return -400;
    for (size_t k = 0; k < v.n; k++) {
      if (v.p[k] < '0' || v.p[k] > '9') return -400;
      n = n * 10 + (uint64_t)(v.p[k] - '0');
    }
    /* Repeated lines must agree, or the message boundary is ambiguous. */
    if (r->has_length && n != r->content_length) return -400;
    r->has_length = 1;
    r->content_length = n;
  }
  return 0;
}

/* chunked must be the final coding, exactly once; other codings are only
 * counted as bytes, since the demo never looks inside a body. */
static int parse_transfer_encoding(struct request *r) {
  struct tokens t;
  struct slice tok;
  int seen = 0, chunked_last = 0;
  tokens_init(&t, r, "Transfer-Encoding");
  while (tokens_next(&t, &tok)) {
    chunked_last = slice_ieq(tok, "chunked");
    if (chunked_last && seen++) return -400;
  }
  if (!count_headers(r, "Transfer-Encoding", NULL)) return 0;
  /* TE with Content-Length is the classic smuggling vector: refuse it. */
  if (!chunked_last || r->has_length || r->minor == 0) return -400;
  r->chunked = 1;
  return 0;
}

static int header_semantics(struct request *r) {
  int st;
  size_t hosts = count_headers(r, "Host", NULL);
  if (hosts > 1 || (hosts == 0 && r->minor >= 1)) return -400;
  if ((st = parse_content_length(r)) || (st = parse_transfer_encoding(r))) return st;
  if (r->minor >= 1)
    r->keep_alive = !has_token(r, "Connection", "close");
  else
    r->keep_alive = has_token(r, "Connection", "keep-alive");
  struct slice expect = {0};
  r->expect_continue = count_headers(r, "Expect", &expect) && slice_ieq(expect, "100-continue");
  if (r->chunked)
    r->body = CHUNK_SIZE;
  else if (r->content_length)
    r->body = BODY_FIXED;
  r->remaining = r->content_length;
  return 0;
}

/* `len` covers the head including its final empty line. */
static int parse_head(struct request *r, size_t len) {
  const char *p = r->head, *end = r->head + len - 2;
  const char *eol = memmem(p, len, "\r\n", 2);
  int st = parse_request_line(r, p, (size_t)(eol - p));
  for (p = eol + 2; !st && p < end; p = eol + 2) {
    eol = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
    st = parse_header_line(r, p, (size_t)(eol - p));
  }
  return st ? st : header_semantics(r);
}

/* Lets a client that speaks something else entirely (TLS, garbage) get its
 * 400 at once instead of after MAX_HEAD bytes or never. */
static int plausible_start(const char *p, size_t n) {
  for (size_t i = 0; i < n && i < 32; i++) {
    if (p[i] == ' ') return i > 0;
    if (!is_tchar((unsigned char)p[i])) return 0;
  }
  return n < 32;
}

static int read_head(struct conn *c) {
  const char *p = c->in.data + c->in_off;
  size_t n = c->in.len - c->in_off;
  while (n >= 2 && p[0] == '\r' && p[1] == '\n') { /* RFC 9112 2.2: ignore leading CRLF */
    p += 2, n -= 2, c->in_off += 2;
  }
  if (n == 0 || (n == 1 && p[0] == '\r')) return NEED_MORE;
  if (!plausible_start(p, n)) return -400;
  const char *end = memmem(p, n, "\r\n\r\n", 4);
  if (!end) return n > MAX_HEAD ? -431 : NEED_MORE;
  size_t len = (size_t)(end - p) + 4;
  if (len > MAX_HEAD) return -431;
  c->req.head = xrealloc(NULL, len);
  memcpy(c->req.head, p, len);
  c->in_off += len;
  int st = parse_head(&c->req, len);
  if (st) return st;
  if (c->req.expect_continue && c->req.body != BODY_DONE && c->req.minor >= 1) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    conn_write(c, cont, sizeof cont - 1);
  }
  return PROGRESS;
}

static const char *find_crlf(struct conn *c) {
  return memmem(c->in.data + c->in_off, c->in.len - c->in_off, "\r\n", 2);
}

static int skip_body_bytes(struct conn *c, enum body_state next) {
  struct request *r = &c->req;
  size_t avail = c->in.len - c->in_off;
  size_t take = r->remaining < avail ? (size_t)r->remaining : avail;
  if (!take) return NEED_MORE;
  c->in_off += take;
  r->body_len += take;
  r->remaining -= take;
  if (!r->remaining) r->body = next;
  return PROGRESS;
}

static int hex_digit(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

static int read_chunk_size(struct conn *c) {
  const char *p = c->in.data + c->in_off, *eol = find_crlf(c);
  if (!eol) return c->in.len - c->in_off > MAX_CHUNK_LINE ? -400 : NEED_MORE;
  if (eol - p > MAX_CHUNK_LINE) return -400;
  uint64_t size = 0;
  const char *q = p;
  for (int d; q < eol && (d = hex_digit(*q)) >= 0; q++) {
    if (q - p >= 15) return -400;
    size = size * 16 + (uint64_t)d;
  }
  if (q == p) return -400;
  while (q < eol && (*q == ' ' || *q == '\t'))
    q++;
  if (q < eol && *q != ';') return -400; /* chunk extensions are ignored */
  for (; q < eol; q++)
    if ((unsigned char)*q < 0x20 && *q != '\t') return -400;
  c->in_off += (size_t)(eol - p) + 2;
  c->req.remaining = size;
  c->req.body = size ? CHUNK_DATA : CHUNK_TRAILER;
  return PROGRESS;
}

static int read_chunk_crlf(struct conn *c) {
  if (c->in.len - c->in_off < 2) return NEED_MORE;
  if (memcmp(c->in.data + c->in_off, "\r\n", 2) != 0) return -400;
  c->in_off += 2;
  c->req.body = CHUNK_SIZE;
  return PROGRESS;
}

/* Trailer fields are consumed and dropped. */
static int read_trailer_line(struct conn *c) {
  const char *p = c->in.data + c->in_off, *eol = find_crlf(c);
  if (!eol) return c->in.len - c->in_off > MAX_HEAD ? -431 : NEED_MORE;
  size_t n = (size_t)(eol - p) + 2;
  c->req.trailer_len += n;
  if (c->req.trailer_len > MAX_HEAD) return -431;
  c->in_off += n;
  if (n == 2) c->req.body = BODY_DONE;
  return PROGRESS;
}

static int read_body(struct conn *c) {
  switch (c->req.body) {
  case BODY_FIXED:
    return skip_body_bytes(c, BODY_DONE);
  case CHUNK_SIZE:
    return read_chunk_size(c);
  case CHUNK_DATA:
    return skip_body_bytes(c, CHUNK_CRLF);
  case CHUNK_CRLF:
    return read_chunk_crlf(c);
  case CHUNK_TRAILER:
    return read_trailer_line(c);
  case BODY_DONE:
    break;
  }
  return PROGRESS;
}

/* -------------------------------------------------------------- responses */

struct response {
  int status;
  const char *content_type;
  struct buf extra; /* header lines, each ending in CRLF */
  struct buf body;
  int close;
};

static const char *reason(int status) {
  switch (status) {
  case 101:
    return "Switching Protocols";
  case 200:
    return "OK";
  case 400:
    return "Bad Request";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 426:
    return "Upgrade Required";
  case 431:
    return "Request Header Fields Too Large";
  case 505:
    return "HTTP Version Not Supported";
  default:
    return "Unknown";
  }
}

static void res_text(struct response *res, int status, const char *body) {
  res->status = status;
  res->content_type = "text/plain; charset=utf-8";
  buf_puts(&res->body, body);
}

static void send_response(struct conn *c, struct response *res) {
  const struct request *r = &c->req;
  struct buf out = {0};
  buf_printf(&out, "HTTP/1.1 %d %s\r\n", res->status, reason(res->status));
  if (res->status != 101) {
    buf_puts(&out, "Server: sy-demo\r\n");
    if (res->content_type) buf_printf(&out, "Content-Type: %s\r\n", res->content_type);
    buf_printf(&out, "Content-Length: %zu\r\n", res->body.len);
    if (res->close || !r->keep_alive)
      buf_puts(&out, "Connection: close\r\n");
    else if (r->minor == 0)
      buf_puts(&out, "Connection: keep-alive\r\n");
  }
  buf_append(&out, res->extra.data, res->extra.len);
  buf_puts(&out, "\r\n");
  if (!slice_eq(r->method, "HEAD")) buf_append(&out, res->body.data, res->body.len);
  conn_write(c, out.data, out.len);
  buf_free(&out);
}

static void log_request(struct conn *c, int status, size_t body_len) {
  const struct request *r = &c->req;
  if (!r->method.n) {
    fprintf(stderr, "%s \"-\" %d %zu\n", c->peer, status, body_len);
    return;
  }
  int tn = r->target.n > 256 ? 256 : (int)r->target.n;
  fprintf(stderr, "%s \"%.*s %.*s HTTP/1.%d\" %d %zu\n", c->peer, (int)r->method.n, r->method.p, tn,
          r->target.p, r->minor, status, body_len);
}

static void request_reset(struct request *r) {
  free(r->head);
  memset(r, 0, sizeof *r);
}

/* --------------------------------------------------------------- handlers */

static const char page_html[] =
    "<!doctype html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<title>Switchyard demo</title>\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<link rel=\"icon\" href=\"data:,\">\n"
    "<style>\n"
    "body{font-family:system-ui,sans-serif;max-width:42em;margin:2em auto;padding:0 1em}\n"
    "#state{font-weight:bold}#log{font-family:monospace}code{background:#eee;padding:0 .2em}\n"
    "</style></head><body>\n"
    "<h1>Switchyard demo</h1>\n"
    "<p>WebSocket <code id=\"url\"></code>: <span id=\"state\">connecting</span></p>\n"
    "<form id=\"form\"><input id=\"msg\" autocomplete=\"off\" size=\"40\"\n"
    " placeholder=\"type a message\" aria-label=\"message\"> <button>Send</button></form>\n"
    "<p>Echoed messages:</p>\n"
    "<ul id=\"log\"></ul>\n"
    "<script>\n"
    "(function () {\n"
    "  var scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';\n"
    "  var url = scheme + location.host + '/ws/echo';\n"
    "  var state = document.getElementById('state');\n"
    "  var log = document.getElementById('log');\n"
    "  var msg = document.getElementById('msg');\n"
    "  document.getElementById('url').textContent = url;\n"
    "  var ws = new WebSocket(url);\n"
    "  ws.onopen = function () { state.textContent = 'open'; ws.send('hello switchyard'); };\n"
    "  ws.onmessage = function (e) {\n"
    "    var li = document.createElement('li');\n"
    "    li.textContent = typeof e.data === 'string' ? e.data : '[binary]';\n"
    "    log.appendChild(li);\n"
    "  };\n"
    "  ws.onerror = function () { state.textContent = 'error'; };\n"
    "  ws.onclose = function (e) { state.textContent = 'closed (' + e.code + ')'; };\n"
    "  document.getElementById('form').onsubmit = function (e) {\n"
    "    e.preventDefault();\n"
    "    if (ws.readyState === WebSocket.OPEN && msg.value) { ws.send(msg.value); msg.value = ''; "
    "}\n"
    "  };\n"
    "})();\n"
    "</script>\n"
    "</body></html>\n";

static int method_is_get_or_head(const struct request *r) {
  return slice_eq(r->method, "GET") || slice_eq(r->method, "HEAD");
}

static void handle_static(struct conn *c, struct response *res, const char *ctype,
                          const char *body) {
  if (!method_is_get_or_head(&c->req)) {
    res_text(res, 405, "method not allowed\n");
    buf_puts(&res->extra, "Allow: GET, HEAD\r\n");
    return;
  }
  res->status = 200;
  res->content_type = ctype;
  buf_puts(&res->body, body);
}

/* Control bytes are escaped so the body stays valid JSON; other bytes,
 * including non-ASCII, are passed through as received. */
static void json_string(struct buf *b, struct slice s) {
  buf_puts(b, "\"");
  for (size_t i = 0; i < s.n; i++) {
    unsigned char ch = (unsigned char)s.p[i];
    if (ch == '"' || ch == '\\')
      buf_printf(b, "\\%c", ch);
    else if (ch < 0x20 || ch == 0x7f)
      buf_printf(b, "\\u%04x", ch);
    else
      buf_append(b, &ch, 1);
  }
  buf_puts(b, "\"");
}

static void handle_echo(struct conn *c, struct response *res) {
  const struct request *r = &c->req;
  struct buf *b = &res->body;
  res->status = 200;
  res->content_type = "text/plain; charset=utf-8";
  buf_puts(b, "{\n  \"method\": ");
  json_string(b, r->method);
  buf_puts(b, ",\n  \"path\": ");
  json_string(b, r->target);
  buf_printf(b, ",\n  \"version\": \"HTTP/1.%d\",\n  \"headers\": [", r->minor);
  for (size_t i = 0; i < r->nhdr; i++) {
    buf_puts(b, i ? ",\n    " : "\n    ");
    json_string(b, r->hdr[i].line);
  }
  buf_puts(b, r->nhdr ? "\n  ],\n" : "],\n");
  buf_printf(b, "  \"body_framing\": \"%s\",\n",
             r->chunked      ? "chunked"
             : r->has_length ? "content-length"
                             : "none");
  buf_printf(b, "  \"body_length\": %llu\n}\n", (unsigned long long)r->body_len);
}

static int ws_key_valid(struct slice key) {
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  if (key.n != 24 || key.p[22] != '=' || key.p[23] != '=') return 0;
  for (size_t i = 0; i < 22; i++)
    if (!memchr(b64, key.p[i], sizeof b64 - 1)) return 0;
  return 1;
}

static int ws_accept_value(struct slice key, char out[29]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  char in[24 + sizeof WS_GUID];
  memcpy(in, key.p, key.n);
  memcpy(in + key.n, WS_GUID, sizeof WS_GUID - 1);
  if (!EVP_Digest(in, key.n + sizeof WS_GUID - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
    return 0;
  return EVP_EncodeBlock((unsigned char *)out, md, 20) == 28;
}

/* The first offered subprotocol is taken, as long as it is a token we can
 * safely repeat back. */
static void ws_pick_protocol(const struct request *r, struct buf *extra) {
  struct tokens t;
  struct slice tok;
  tokens_init(&t, r, "Sec-WebSocket-Protocol");
  if (tokens_next(&t, &tok) && is_token(tok))
    buf_printf(extra, "Sec-WebSocket-Protocol: %.*s\r\n", (int)tok.n, tok.p);
}

static void handle_ws_upgrade(struct conn *c, struct response *res) {
  const struct request *r = &c->req;
  struct slice version = {0}, key = {0};
  char accept[29];
  if (!slice_eq(r->method, "GET")) {
    res_text(res, 405, "websocket handshake needs GET\n");
    buf_puts(&res->extra, "Allow: GET\r\n");
  } else if (r->minor < 1 || r->chunked || r->content_length ||
             !has_token(r, "Connection", "upgrade") || !has_token(r, "Upgrade", "websocket")) {
    res_text(res, 400, "not a websocket handshake\n");
  } else if (count_headers(r, "Sec-WebSocket-Version", &version) != 1 || !slice_eq(version, "13")) {
    res_text(res, 426, "unsupported websocket version\n");
    buf_puts(&res->extra, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
  } else if (count_headers(r, "Sec-WebSocket-Key", &key) != 1 || !ws_key_valid(key) ||
             !ws_accept_value(key, accept)) {
    res_text(res, 400, "bad Sec-WebSocket-Key\n");
  } else {
    res->status = 101;
    buf_printf(&res->extra,
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n", accept);
    ws_pick_protocol(r, &res->extra);
  }
}

static int path_has_prefix(struct slice path, const char *prefix) {
  size_t n = strlen(prefix);
  return path.n >= n && memcmp(path.p, prefix, n) == 0;
}

static void route(struct conn *c, struct response *res) {
  struct slice path = c->req.path;
  if (path_has_prefix(path, "/ws"))
    handle_ws_upgrade(c, res);
  else if (slice_eq(path, "/echo"))
    handle_echo(c, res);
  else if (slice_eq(path, "/healthz"))
    handle_static(c, res, "text/plain; charset=utf-8", "ok\n");
  else if (slice_eq(path, "/"))
    handle_static(c, res, "text/html; charset=utf-8", page_html);
  else
    res_text(res, 404, "not found\n");
}

static void finish_request(struct conn *c) {
  struct response res = {0};
  route(c, &res);
  send_response(c, &res);
  log_request(c, res.status, res.body.len);
  int keep = c->req.keep_alive && !res.close;
  buf_free(&res.extra);
  buf_free(&res.body);
  request_reset(&c->req);
  if (res.status == 101)
    c->mode = MODE_WS;
  else if (!keep)
    conn_finish(c);
}

static void http_fail(struct conn *c, int status) {
  struct response res = {0};
  res_text(&res, status,
           status == 431   ? "request head too large\n"
           : status == 505 ? "HTTP version not supported\n"
                           : "bad request\n");
  res.close = 1;
  /* Nothing of a rejected request is trusted, not even for the log line. */
  request_reset(&c->req);
  send_response(c, &res);
  log_request(c, status, res.body.len);
  buf_free(&res.body);
  conn_finish(c);
}

static void http_process(struct conn *c) {
  while (c->mode == MODE_HTTP) {
    if (c->req.head && c->req.body == BODY_DONE) {
      finish_request(c);
      continue;
    }
    int r = c->req.head ? read_body(c) : read_head(c);
    if (r == NEED_MORE) return;
    if (r < 0) http_fail(c, -r);
  }
}

/* -------------------------------------------------------------- WebSocket */

enum {
  WS_CONT = 0x0,
  WS_TEXT = 0x1,
  WS_BINARY = 0x2,
  WS_CLOSE = 0x8,
  WS_PING = 0x9,
  WS_PONG = 0xA,
};

struct frame {
  int fin, op;
  unsigned char *payload;
  uint64_t len;
  size_t total; /* header + payload bytes in the input buffer */
};

static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char b = s[i];
    size_t need;
    uint32_t cp, min;
    if (b < 0x80) {
      i++;
      continue;
    }
    if ((b & 0xE0) == 0xC0)
      need = 1, cp = b & 0x1F, min = 0x80;
    else if ((b & 0xF0) == 0xE0)
      need = 2, cp = b & 0x0F, min = 0x800;
    else if ((b & 0xF8) == 0xF0)
      need = 3, cp = b & 0x07, min = 0x10000;
    else
      return 0;
    if (n - i - 1 < need) return 0;
    for (size_t k = 1; k <= need; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    i += need + 1;
  }
  return 1;
}

static void ws_send(struct conn *c, int op, const void *payload, size_t len) {
  unsigned char h[10];
  size_t hn = 2;
  h[0] = (unsigned char)(0x80 | op);
  if (len < 126) {
    h[1] = (unsigned char)len;
  } else if (len <= 0xFFFF) {
    h[1] = 126;
    h[2] = (unsigned char)(len >> 8), h[3] = (unsigned char)len;
    hn = 4;
  } else {
    h[1] = 127;
    for (int i = 0; i < 8; i++)
      h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    hn = 10;
  }
  conn_write2(c, h, hn, payload, len);
}

static void ws_fail(struct conn *c, int code) {
  unsigned char p[2] = {(unsigned char)(code >> 8), (unsigned char)code};
  fprintf(stderr, "%s websocket closed by server: %d\n", c->peer, code);
  ws_send(c, WS_CLOSE, p, 2);
  conn_finish(c);
}

/* Returns NEED_MORE, PROGRESS, or a negated close code. */
static int ws_parse_frame(struct conn *c, struct frame *f) {
  unsigned char *b = (unsigned char *)c->in.data + c->in_off;
  size_t avail = c->in.len - c->in_off, hn = 2;
  if (avail < 2) return NEED_MORE;
  f->fin = b[0] & 0x80;
  f->op = b[0] & 0x0F;
  if ((b[0] & 0x70) || !(b[1] & 0x80)) return -1002; /* no extensions; clients must mask */
  f->len = b[1] & 0x7F;
  hn += f->len == 126 ? 2 : f->len == 127 ? 8 : 0;
  if (avail < hn + 4) return NEED_MORE;
  if (f->len >= 126) {
    f->len = 0;
    for (size_t i = 2; i < hn; i++)
      f->len = (f->len << 8) | b[i];
  }
  if (f->op >= WS_CLOSE) {
    if (f->op > WS_PONG || !f->fin || f->len > 125) return -1002;
  } else if (f->op > WS_BINARY) {
    return -1002;
  }
  /* Checked before waiting for the payload, so an oversized frame is refused
   * without first buffering it. */
  if (f->len > MAX_WS_MESSAGE || (f->op == WS_CONT && c->msg.len + f->len > MAX_WS_MESSAGE))
    return -1009;
  if (avail - hn - 4 < f->len) return NEED_MORE;
  const unsigned char *mask = b + hn;
  f->payload = b + hn + 4;
  for (uint64_t i = 0; i < f->len; i++)
    f->payload[i] ^= mask[i & 3];
  f->total = hn + 4 + (size_t)f->len;
  return PROGRESS;
}

static int ws_close_code_valid(unsigned code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

static void ws_on_close(struct conn *c, const struct frame *f) {
  if (f->len == 1) {
    ws_fail(c, 1002);
    return;
  }
  if (f->len >= 2) {
    unsigned code = (unsigned)f->payload[0] << 8 | f->payload[1];
    if (!ws_close_code_valid(code)) {
      ws_fail(c, 1002);
      return;
    }
    if (!utf8_valid(f->payload + 2, (size_t)f->len - 2)) {
      ws_fail(c, 1007);
      return;
    }
  }
  ws_send(c, WS_CLOSE, f->payload, f->len >= 2 ? 2 : 0);
  conn_finish(c);
}

static void ws_deliver(struct conn *c, int op, const void *p, size_t n) {
  if (op == WS_TEXT && !utf8_valid(p, n))
    ws_fail(c, 1007);
  else
    ws_send(c, op, p, n);
}

static void ws_on_data(struct conn *c, const struct frame *f) {
  if (f->op != WS_CONT) {
    if (c->msg_op) {
      ws_fail(c, 1002); /* a new message may not interrupt a fragmented one */
    } else if (f->fin) {
      ws_deliver(c, f->op, f->payload, (size_t)f->len);
    } else {
      c->msg_op = f->op;
      buf_append(&c->msg, f->payload, (size_t)f->len);
    }
    return;
  }
  if (!c->msg_op) {
    ws_fail(c, 1002);
    return;
  }
  buf_append(&c->msg, f->payload, (size_t)f->len);
  if (!f->fin) return;
  ws_deliver(c, c->msg_op, c->msg.data, c->msg.len);
  c->msg_op = 0;
  if (c->msg.cap > KEEP_BUFFER_MAX)
    buf_free(&c->msg);
  else
    c->msg.len = 0;
}

static void ws_process(struct conn *c) {
  while (c->mode == MODE_WS) {
    struct frame f;
    int r = ws_parse_frame(c, &f);
    if (r == NEED_MORE) return;
    if (r < 0) {
      ws_fail(c, -r);
      return;
    }
    if (f.op == WS_CLOSE)
      ws_on_close(c, &f);
    else if (f.op == WS_PING)
      ws_send(c, WS_PONG, f.payload, (size_t)f.len);
    else if (f.op != WS_PONG)
      ws_on_data(c, &f);
    c->in_off += f.total;
  }
}

static void conn_process(struct conn *c) {
  if (c->mode == MODE_HTTP) http_process(c);
  /* Frames may have arrived in the same read as the handshake. */
  if (c->mode == MODE_WS) ws_process(c);
  if (c->mode == MODE_CLOSING) c->in_off = c->in.len;
}

/* ----------------------------------------------------------------- server */

static void peer_name(struct conn *c) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
      port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
      snprintf(c->peer, sizeof c->peer, "[%s]:%d", host, port);
      return;
    }
    uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  }
  snprintf(c->peer, sizeof c->peer, "%s:%d", host, port);
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) {
    fprintf(stderr, "sy-demo: accept: %s\n", uv_strerror(status));
    return;
  }
  struct conn *c = xrealloc(NULL, sizeof *c);
  memset(c, 0, sizeof *c);
  uv_tcp_init(&srv.loop, &c->tcp);
  uv_timer_init(&srv.loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->open_handles = 2;
  c->next = srv.conns;
  if (srv.conns) srv.conns->prev = c;
  srv.conns = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  peer_name(c);
  read_start(c);
}

static void on_signal(uv_signal_t *s, int signum) {
  if (srv.stopping) return;
  srv.stopping = 1;
  fprintf(stderr, "sy-demo: %s, shutting down\n", signum == SIGINT ? "SIGINT" : "SIGTERM");
  uv_close((uv_handle_t *)&srv.listener, NULL);
  uv_close((uv_handle_t *)&srv.sigint, NULL);
  uv_close((uv_handle_t *)&srv.sigterm, NULL);
  for (struct conn *c = srv.conns; c; c = c->next)
    conn_close(c);
}

/* Accepts "HOST:PORT" and "[V6]:PORT"; HOST may be a name. */
static int resolve_listen(const char *spec, struct sockaddr_storage *out) {
  char host[256];
  const char *colon = strrchr(spec, ':');
  if (!colon || !colon[1]) return -1;
  const char *h = spec, *he = colon;
  if (*h == '[') {
    if (he[-1] != ']') return -1;
    h++, he--;
  }
  if (he - h <= 0 || (size_t)(he - h) >= sizeof host) return -1;
  memcpy(host, h, (size_t)(he - h));
  host[he - h] = '\0';
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai;
  if (getaddrinfo(host, colon + 1, &hints, &ai) != 0) return -1;
  memcpy(out, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  return 0;
}

static void print_listening(void) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char host[INET6_ADDRSTRLEN] = "?";
  uv_tcp_getsockname(&srv.listener, (struct sockaddr *)&ss, &len);
  if (ss.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
    fprintf(stderr, "sy-demo: listening on [%s]:%d\n", host,
            ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
  } else {
    uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
    fprintf(stderr, "sy-demo: listening on %s:%d\n", host,
            ntohs(((struct sockaddr_in *)&ss)->sin_port));
  }
}

static int start_server(const char *spec) {
  struct sockaddr_storage addr;
  int r;
  if (resolve_listen(spec, &addr) < 0) {
    fprintf(stderr, "sy-demo: cannot use listen address '%s'\n", spec);
    return -1;
  }
  uv_tcp_init(&srv.loop, &srv.listener);
  if ((r = uv_tcp_bind(&srv.listener, (struct sockaddr *)&addr, 0)) < 0 ||
      (r = uv_listen((uv_stream_t *)&srv.listener, 511, on_connection)) < 0) {
    fprintf(stderr, "sy-demo: listen on %s: %s\n", spec, uv_strerror(r));
    uv_close((uv_handle_t *)&srv.listener, NULL);
    return -1;
  }
  uv_signal_init(&srv.loop, &srv.sigint);
  uv_signal_init(&srv.loop, &srv.sigterm);
  uv_signal_start(&srv.sigint, on_signal, SIGINT);
  uv_signal_start(&srv.sigterm, on_signal, SIGTERM);
  print_listening();
  return 0;
}

static void usage(FILE *f) {
  fputs("usage: sy-demo [-l ADDRESS:PORT]   (default " DEFAULT_LISTEN ", e.g. -l [::1]:9000)\n", f);
}

int main(int argc, char **argv) {
  const char *listen_spec = DEFAULT_LISTEN;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-l") && i + 1 < argc) {
      listen_spec = argv[++i];
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  /* A peer that vanishes mid-write must cost us an EPIPE, not the process. */
  signal(SIGPIPE, SIG_IGN);
  uv_loop_init(&srv.loop);
  int rc = start_server(listen_spec) < 0 ? 1 : 0;
  uv_run(&srv.loop, UV_RUN_DEFAULT);
  uv_loop_close(&srv.loop);
  return rc;
}
