#include "switchyard/flow.h"

#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Larger batch buffers are not kept (a relay's batch of 256 KiB grows its
 * buffer to 512 KiB). */
#define CIPHER_KEEP (512 * 1024)

static inline sy_flow *parser_flow(llhttp_t *p) {
  return (sy_flow *)((char *)p - offsetof(sy_flow, parser));
}

/* ---- the pool ----------------------------------------------------------------- */

void sy_flow_pool_init(sy_flow_pool *p) {
  memset(p, 0, sizeof(*p));
}

/* Only the worker writes the counts (sy_bump); the admin thread reads them.
 * Each move changes one count: what the pool allocated and has not freed
 * (held), and of it what sits in the caches (idle); a request's buffers come
 * from and go back to the cache, one count each. */

/* Debug builds: a move the counts missed (a batch buffer grown unseen) would
 * show as more bytes idle than held once buffers come back. */
static void counts_check(const sy_flow_pool *p) {
  assert(p->bytes_idle <= p->bytes_held);
  (void)p;
}

void sy_flow_pool_bytes(const sy_flow_pool *p, uint64_t *in_use, uint64_t *idle) {
  /* Read while the worker moves buffers, the two counts may be a few moves
   * apart: a gauge may be off by those for one scrape, and never negative. */
  *idle = __atomic_load_n(&p->bytes_idle, __ATOMIC_RELAXED);
  uint64_t held = __atomic_load_n(&p->bytes_held, __ATOMIC_RELAXED);
  *in_use = held > *idle ? held - *idle : 0;
}

void sy_flow_pool_trim(sy_flow_pool *p) {
  while (p->nbuf > 0)
    free(p->buf_cache[--p->nbuf]);
  while (p->nrelay > 0)
    free(p->relay_cache[--p->nrelay]);
  while (p->nblk > 0)
    free(p->blk_cache[--p->nblk]);
  while (p->ncipher > 0)
    free(p->cipher_cache[--p->ncipher].p);
  counts_check(p);
  sy_bump(&p->bytes_held, -(int64_t)p->bytes_idle);
  sy_bump(&p->bytes_idle, -(int64_t)p->bytes_idle);
}

/* Flow buffers of the usual size are recycled through a small stack: a
 * keep-alive request takes and returns two of them, and going through malloc
 * each time made glibc consolidate and trim its heap (madvise, then page
 * faults) on every other request. */
static char *buf_get(sy_flow_pool *p, uint32_t *cap) {
  if (*cap == SY_RELAY_BUF && p->relay_out >= SY_FLOW_RELAY_MAX) *cap = SY_FLOW_BUF;
  char *b = NULL;
  if (*cap == SY_RELAY_BUF && p->nrelay > 0)
    b = p->relay_cache[--p->nrelay];
  else if (*cap == SY_FLOW_BUF && p->nbuf > 0)
    b = p->buf_cache[--p->nbuf];
  if (b)
    sy_bump(&p->bytes_idle, -(int64_t)*cap);
  else if ((b = malloc(*cap)))
    sy_bump(&p->bytes_held, *cap);
  else
    return NULL;
  if (*cap == SY_RELAY_BUF) p->relay_out++;
  return b;
}

static void buf_put(sy_flow_pool *p, char *b, uint32_t cap) {
  if (!b) return;
  if (cap == SY_RELAY_BUF) p->relay_out--;
  if (cap == SY_FLOW_BUF && p->nbuf < SY_FLOW_BUF_CACHE)
    p->buf_cache[p->nbuf++] = b;
  else if (cap == SY_RELAY_BUF && p->nrelay < SY_FLOW_RELAY_CACHE)
    p->relay_cache[p->nrelay++] = b;
  else {
    free(b);
    sy_bump(&p->bytes_held, -(int64_t)cap);
    return;
  }
  sy_bump(&p->bytes_idle, cap);
  counts_check(p);
}

/* TLS moves every byte through two more buffers: the ciphertext read block
 * and the encrypted batch. Both come back to stacks: freeing them between
 * batches (an idle relay holds none) made glibc trim its heap and re-fault
 * the pages on every batch. */
char *sy_flow_block_get(sy_flow_pool *p) {
  char *b = p->nblk ? p->blk_cache[--p->nblk] : NULL;
  if (b)
    sy_bump(&p->bytes_idle, -(int64_t)SY_CIPHER_BLOCK);
  else if ((b = malloc(SY_CIPHER_BLOCK)))
    sy_bump(&p->bytes_held, SY_CIPHER_BLOCK);
  return b;
}

void sy_flow_block_put(sy_flow_pool *p, char *blk) {
  if (!blk) return;
  if (p->nblk < SY_FLOW_BLK_CACHE) {
    p->blk_cache[p->nblk++] = blk;
    sy_bump(&p->bytes_idle, SY_CIPHER_BLOCK);
    counts_check(p);
  } else {
    free(blk);
    sy_bump(&p->bytes_held, -(int64_t)SY_CIPHER_BLOCK);
  }
}

static void cipher_get(sy_flow_pool *p, sy_buf *b) {
  if (b->p || !p->ncipher) return;
  p->ncipher--;
  b->p = p->cipher_cache[p->ncipher].p;
  b->cap = p->cipher_cache[p->ncipher].cap;
  b->len = 0;
  sy_bump(&p->bytes_idle, -(int64_t)b->cap);
}

static void cipher_put(sy_flow_pool *p, sy_buf *b) {
  if (!b->p) return;
  if (b->cap <= CIPHER_KEEP && p->ncipher < SY_FLOW_CIPHER_CACHE) {
    p->cipher_cache[p->ncipher].p = b->p;
    p->cipher_cache[p->ncipher].cap = b->cap;
    p->ncipher++;
    sy_bump(&p->bytes_idle, b->cap);
    counts_check(p);
    b->p = NULL;
    b->len = b->cap = 0;
    return;
  }
  sy_bump(&p->bytes_held, -(int64_t)b->cap);
  sy_buf_free(b);
}

/* ---- llhttp glue -------------------------------------------------------------- */

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

/* Fields after the head are a chunked body's trailers, which are not
 * forwarded (the body is re-framed): they are not the head's fields and do
 * not count against limits.max_headers. */
static int cb_field(llhttp_t *p, const char *at, size_t n) {
  sy_flow *f = parser_flow(p);
  if (f->head_done) return 0;
  return sy_head_on_field(&f->head, (uint32_t)(at - f->buf), (uint32_t)n) ? HPE_USER : 0;
}

static int cb_value(llhttp_t *p, const char *at, size_t n) {
  sy_flow *f = parser_flow(p);
  if (f->head_done) return 0;
  return sy_head_on_value(&f->head, (uint32_t)(at - f->buf), (uint32_t)n) ? HPE_USER : 0;
}

static int cb_message_begin(llhttp_t *p) {
  sy_head_reset(&parser_flow(p)->head);
  return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t n) {
  sy_flow *f = parser_flow(p);
  if (f->discard) return 0;
  int rc = 0;
  if (f->chunked_out) {
    char hex[24];
    int k = snprintf(hex, sizeof(hex), "%zx\r\n", n);
    rc |= sy_flow_push_copy(f, hex, (size_t)k);
  }
  rc |= sy_flow_push(f, (uint32_t)(at - f->buf), (uint32_t)n);
  if (f->chunked_out) rc |= sy_flow_push_copy(f, "\r\n", 2);
  return rc ? HPE_USER : 0;
}

static int cb_message_complete(llhttp_t *p) {
  sy_flow *f = parser_flow(p);
  if (f->interim) {
    /* A 1xx ends as a message of its own; the real response follows. */
    f->interim = 0;
    f->head_done = 0;
    sy_headscan_init(&f->scan);
    return HPE_PAUSED;
  }
  if (f->chunked_out && !f->discard && sy_flow_push_copy(f, "0\r\n\r\n", 5)) return HPE_USER;
  f->msg_done = 1;
  f->check_chunk_end = (p->flags & F_CHUNKED) != 0;
  return HPE_PAUSED;
}

/* A request head pauses the parser: routing decides what happens to the body. */
static int cb_req_headers_complete(llhttp_t *p) {
  sy_flow *f = parser_flow(p);
  f->head.major = p->http_major;
  f->head.minor = p->http_minor;
  f->head_done = 1;
  return HPE_PAUSED;
}

static int cb_resp_headers_complete(llhttp_t *p) {
  sy_flow *f = parser_flow(p);
  f->head.major = p->http_major;
  f->head.minor = p->http_minor;
  f->head.status = p->status_code;
  f->head_done = 1;
  return f->on_head ? f->on_head(f) : 0;
}

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

/* ---- the flow ------------------------------------------------------------------ */

void sy_flow_init(sy_flow *f, int response, sy_flow_head_cb on_head, void *owner,
                  size_t max_fields) {
  memset(f, 0, sizeof(*f));
  llhttp_init(&f->parser, response ? HTTP_RESPONSE : HTTP_REQUEST,
              response ? &resp_settings : &req_settings);
  f->parser.data = owner;
  f->on_head = on_head;
  sy_headscan_init(&f->scan);
  sy_head_init(&f->head, !response, max_fields);
}

void sy_flow_restart(sy_flow *f) {
  f->head_start = f->scan_pos = 0;
  f->msg_done = f->chunked_out = f->head_done = f->discard = f->interim = 0;
  f->bytes = 0;
  sy_headscan_init(&f->scan);
  sy_head_reset(&f->head);
}

void sy_flow_new_parser(sy_flow *f) {
  void *owner = f->parser.data;
  int response = f->parser.type == HTTP_RESPONSE;
  llhttp_init(&f->parser, response ? HTTP_RESPONSE : HTTP_REQUEST,
              response ? &resp_settings : &req_settings);
  f->parser.data = owner;
}

void sy_flow_free(sy_flow *f, sy_flow_pool *p) {
  buf_put(p, f->buf, f->cap);
  f->buf = NULL;
  cipher_put(p, &f->cipher);
  free(f->segs);
  free(f->iov);
  sy_buf_free(&f->scratch);
  sy_head_free(&f->head);
  memset(f, 0, sizeof(*f));
}

int sy_flow_alloc(sy_flow *f, sy_flow_pool *p, uint32_t cap) {
  if (f->buf) return 0;
  f->buf = buf_get(p, &cap);
  if (!f->buf) return -1;
  f->cap = cap;
  return 0;
}

void sy_flow_release_if_idle(sy_flow *f, sy_flow_pool *p) {
  if (f->len == f->pos && !f->writing) {
    buf_put(p, f->buf, f->cap);
    f->buf = NULL;
    f->cap = f->len = f->pos = 0;
    cipher_put(p, &f->cipher);
  }
}

static int push(sy_flow *f, uint32_t off, uint32_t len, int scratch) {
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

int sy_flow_push(sy_flow *f, uint32_t off, uint32_t len) {
  return push(f, off, len, 0);
}

int sy_flow_push_copy(sy_flow *f, const void *p, size_t n) {
  uint32_t off = (uint32_t)f->scratch.len;
  if (sy_buf_append(&f->scratch, p, n)) return -1;
  return push(f, off, (uint32_t)n, 1);
}

int sy_flow_push_scratch(sy_flow *f, uint32_t off) {
  return push(f, off, (uint32_t)f->scratch.len - off, 1);
}

void sy_flow_drop_batch(sy_flow *f) {
  f->nsegs = 0;
  f->scratch.len = 0;
}

void sy_flow_batch_done(sy_flow *f) {
  f->nsegs = 0;
  f->scratch.len = 0;
  f->cipher.len = 0; /* capacity kept while the flow is busy: no page churn */
}

void sy_flow_compact(sy_flow *f) {
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
 * still in the buffer. */
static int chunk_end_ok(sy_flow *f) {
  if (!f->check_chunk_end) return 1;
  f->check_chunk_end = 0;
  if (f->pos < 4) return 1;
  return memcmp(f->buf + f->pos - 4, "\r\n\r\n", 4) == 0;
}

/* The raw bytes of the head being read (see sy_headscan). */
static int scan_ok(sy_flow *f) {
  if (f->scan.done || f->scan_pos >= f->len) return 1;
  size_t used = 0;
  int r = sy_headscan_run(&f->scan, f->buf + f->scan_pos, f->len - f->scan_pos, &used);
  if (r < 0) return 0;
  f->scan_pos = r ? f->scan_pos + (uint32_t)used : f->len;
  return 1;
}

sy_flow_step sy_flow_parse(sy_flow *f, llhttp_errno_t *err) {
  if (!f->head_done && !scan_ok(f)) return SY_STEP_BAD_BYTES;
  const char *start = f->buf ? f->buf + f->pos : "";
  llhttp_errno_t e = llhttp_execute(&f->parser, start, f->len - f->pos);
  if (e == HPE_OK) {
    f->pos = f->len;
    return SY_STEP_MORE;
  }
  if (e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE) {
    *err = e;
    return SY_STEP_ERROR;
  }
  f->pos = (uint32_t)(llhttp_get_error_pos(&f->parser) - f->buf);
  if (e == HPE_PAUSED_UPGRADE && !f->msg_done) {
    /* The previous message offered an upgrade that did not happen: the
     * connection is plain HTTP again. */
    llhttp_resume_after_upgrade(&f->parser);
    return SY_STEP_AGAIN;
  }
  if (!chunk_end_ok(f)) return SY_STEP_BAD_CHUNK;
  if (!f->msg_done && !f->head_done) {
    llhttp_resume(&f->parser); /* the end of a 1xx: the real response follows */
    f->head_start = f->pos;    /* whose head is measured (and kept in place) from here */
    return SY_STEP_AGAIN;
  }
  return SY_STEP_PAUSED;
}

int sy_flow_write(sy_flow *f, sy_flow_pool *p, sy_sock *dst, sy_tls_conn *tls,
                  sy_sock_write_cb cb) {
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
    /* The whole batch is encrypted into one buffer of records, released when
     * the write completes. */
    cipher_get(p, &f->cipher);
    f->cipher.len = 0;
    size_t had = f->cipher.cap;
    rc = sy_tls_write(tls, f->iov, f->nsegs, &f->cipher);
    sy_bump(&p->bytes_held, (int64_t)(f->cipher.cap - had)); /* the batch may have grown it */
    if (rc < 0) return UV_EPROTO;
    uv_buf_t b = uv_buf_init(f->cipher.p, (unsigned)f->cipher.len);
    rc = sy_sock_write(&f->wreq, dst, &b, 1, cb);
  } else {
    /* The array stays the flow's until the callback: no copy of it. */
    rc = sy_sock_write_inplace(&f->wreq, dst, f->iov, f->nsegs, cb);
  }
  if (rc < 0) return rc;
  f->writing = 1;
  /* Out at once: its callback is due at the end of the turn. */
  f->deferred = f->wreq.later.queued && f->wreq.status == 0;
  return 0;
}
