/* The HTTP mode's handlers (c->io until a 101): reading, parsing and writing
 * each side with the same code, and the end of an exchange (keep-alive or
 * close). The request and response sides differ only in their rules: when to
 * read, how large a head may grow, what a bad byte is answered with. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "switchyard/log.h"
#include "switchyard/stats.h"

/* ---- when to read -------------------------------------------------------------- */

static int request_wants(sy_conn *c, sy_flow *f) {
  int want;
  if (c->state == CS_READ_HEAD)
    want = !f->head_done;
  else if (c->state == CS_CONNECT)
    want = 0;
  else if (f->msg_done)
    /* Between a request and its answer the client may go on reading into the
     * buffer (pipelining; no poll churn per request), except after an
     * upgrade request, which holds the client until the answer. */
    want = !c->x.upgrading && !c->tls_upgrade_pending;
  else if (c->state == CS_SEND_RESP && c->x.close_after && !f->discard && !c->x.resp_from_upstream)
    want = 0; /* answered locally and closing: the rest of the body is for the linger */
  else
    want = 1; /* the buffer bounds what is read ahead while a batch is written */
  if (want && f->buf && f->len == f->cap && f->pos == f->len && !f->writing && !f->nsegs)
    sy_flow_compact(f);
  return want && !(f->buf && f->len == f->cap);
}

static int response_wants(sy_conn *c, sy_flow *f) {
  if (!c->link || conn_closed(c)) return 0;
  /* A complete response that went out at once, its callback due before the
   * next poll: the read stays armed (no buffer is lent meanwhile), because
   * the connection goes back to the pool, which reads it again; a stop and
   * a start cost two epoll_ctl per request. */
  if (f->msg_done && f->deferred && !c->x.upgrading && !c->x.switching) return 1;
  /* Otherwise the upstream is not read ahead of a batch in flight: how it
   * ends (FIN or RST) must be seen in order with the bytes before it. */
  return !f->writing && c->state >= CS_SEND_BODY && c->state <= CS_SEND_RESP &&
         (!f->buf || f->len < f->cap);
}

static int http_wants(sy_conn *c, conn_side s) {
  return s == SIDE_CLIENT ? request_wants(c, &c->fl[s]) : response_wants(c, &c->fl[s]);
}

static void http_eof(sy_conn *c, conn_side s, ssize_t n);

static void http_read_update(sy_conn *c, conn_side s) {
  sy_flow *f = &c->fl[s];
  sy_sock *st = conn_stream(c, s);
  if (!st || conn_closed(c) || c->state == CS_LINGER || c->state == CS_TUNNEL) return;
  if (f->eof && !f->writing && f->pos == f->len) {
    /* An end read ahead of the parser counts once the bytes before it did. */
    f->eof = 0;
    http_eof(c, s, UV_EOF);
    return;
  }
  if (f->eof) {
    sy_sock_read_stop(st);
    return;
  }
  conn_read_arm(c, s);
}

/* ---- parsing ------------------------------------------------------------------- */

static void bad_request(sy_conn *c, sy_flow_step r, llhttp_errno_t e) {
  sy_flow *f = &c->fl[SIDE_CLIENT];
  c->x.term = f->head.too_many ? SY_TERM_LIMIT : SY_TERM_BAD_REQUEST;
  if (r == SY_STEP_BAD_BYTES) {
    memcpy(c->x.method, "-", 2);
    local_response(c, 400, 1);
  } else if (r == SY_STEP_BAD_CHUNK) {
    local_response(c, 400, 1);
  } else if (c->state != CS_READ_HEAD) {
    /* A broken body after the head went upstream: nothing to resync. */
    if (!c->x.resp_head_sent) {
      local_response(c, 400, 1);
    } else {
      report_cut(c, SY_TERM_BAD_REQUEST);
      conn_close(c);
    }
  } else {
    if (!c->x.method[0]) request_remember_method(c);
    local_response(c, f->head.too_many ? 431 : 400, 1);
  }
}

static void bad_response(sy_conn *c, sy_flow_step r, llhttp_errno_t e) {
  const char *peer = conn_peer(c, SIDE_UPSTREAM);
  if (r == SY_STEP_BAD_BYTES)
    sy_log_every_second(SY_LOG_ERROR,
                        "upstream %s: invalid response head (bare CR/LF, obs-fold or NUL)", peer);
  else if (r == SY_STEP_BAD_CHUNK)
    sy_log_every_second(SY_LOG_ERROR, "upstream %s: chunked body not ended by CRLF", peer);
  else if (c->x.bad_101)
    sy_log_every_second(SY_LOG_ERROR, "upstream %s: 101 for a protocol the client did not offer",
                        peer);
  else
    sy_log_every_second(SY_LOG_ERROR, "upstream %s: invalid response: %s", peer,
                        llhttp_errno_name(e));
  c->x.term = c->x.bad_101 ? SY_TERM_UPGRADE_REJECTED : SY_TERM_BAD_RESPONSE;
  if (c->x.resp_head_sent && c->x.resp_flushed) report_cut(c, SY_TERM_BAD_RESPONSE);
  local_response(c, 502, 1);
}

/* A head still incomplete (or, for a request, complete) beyond the limit. */
static int head_too_large(sy_conn *c, conn_side s) {
  sy_flow *f = &c->fl[s];
  uint64_t max = c->cfg->limits.max_header_bytes;
  if (s == SIDE_UPSTREAM)
    return !f->head_done && (f->len == f->cap || f->len - f->head_start > max + 1024);
  return c->state == CS_READ_HEAD &&
         (f->pos - f->head_start > max || (!f->head_done && f->len - f->head_start > max));
}

static sy_msec_t flow_timeout(sy_conn *c, conn_side s) {
  if (s == SIDE_CLIENT && !c->fl[s].msg_done && c->state == CS_SEND_BODY)
    return c->cfg->timeouts.body_idle;
  return conn_response_timeout(c);
}

void http_feed(sy_conn *c, conn_side s) {
  sy_flow *f = &c->fl[s];
  /* After a resume the request parser may owe callbacks that need no further
   * byte (message end of a bodiless request), hence one run even on no input. */
  int kick = s == SIDE_CLIENT && f->head_done && c->state != CS_READ_HEAD;
  while (!conn_closed(c) && (f->pos < f->len || kick) && !f->writing && !f->msg_done) {
    kick = 0;
    if (s == SIDE_CLIENT && (c->state == CS_CONNECT || (c->state == CS_READ_HEAD && f->head_done)))
      return;
    uint32_t before = f->pos;
    llhttp_errno_t e = HPE_OK;
    sy_flow_step r = sy_flow_parse(f, &e);
    if (r >= SY_STEP_BAD_BYTES) {
      s == SIDE_CLIENT ? bad_request(c, r, e) : bad_response(c, r, e);
      return;
    }
    if (s == SIDE_CLIENT) c->x.bytes_in += f->pos - before;
    if (r == SY_STEP_AGAIN) continue;
    /* A parser held paused (a request answered locally and closing keeps
     * its parser stopped after the head) takes no byte: feeding it again
     * would spin. The bytes wait for whatever resumes it, if anything. */
    if (r == SY_STEP_PAUSED && f->pos == before) break;
    if (head_too_large(c, s)) {
      if (s == SIDE_UPSTREAM) {
        sy_log_every_second(SY_LOG_ERROR, "upstream %s: response head too large", conn_peer(c, s));
        c->x.term = SY_TERM_BAD_RESPONSE;
        local_response(c, 502, 1);
      } else {
        memcpy(c->x.method, "-", 2);
        c->x.term = SY_TERM_LIMIT;
        local_response(c, 431, 1);
      }
      return;
    }
    if (s == SIDE_CLIENT && c->state == CS_READ_HEAD && f->head_done) {
      conn_timer_arm(c, 0);
      request_route(c);
      c->io->read_update(c, s); /* routing decides whether the client is read on */
      return;
    }
  }
  if (conn_closed(c)) return;
  if (f->discard) { /* the body of a request answered locally: read and dropped */
    sy_flow_drop_batch(f);
    sy_flow_compact(f);
    if (f->msg_done) {
      http_exchange_end(c);
      return;
    }
  } else {
    if (f->nsegs && c->state != CS_READ_HEAD) conn_timer_arm(c, flow_timeout(c, s));
    http_flush(c, s);
  }
  c->io->read_update(c, s);
}

static void http_input(sy_conn *c, conn_side s, size_t n) {
  sy_flow *f = &c->fl[s];
  if (s == SIDE_CLIENT && c->state == CS_READ_HEAD && f->len == f->head_start && !f->head_done) {
    conn_timer_arm(c, c->cfg->timeouts.header);
    c->x.t_start = uv_hrtime(); /* a request's time starts with its first byte */
  }
  if (s == SIDE_UPSTREAM && !f->bytes && c->x.t_sent) {
    /* The upstream's first byte for this request (HAProxy's Tr). */
    c->x.first_byte_ns = (int64_t)(uv_hrtime() - c->x.t_sent);
    c->env->labels.len = 0;
    sy_stats_first_byte(c->env->metrics, &c->env->labels, c->cfg, c->x.route,
                        (uint64_t)c->x.first_byte_ns);
  }
  f->len += (uint32_t)n;
  f->bytes += (uint64_t)n;
  http_feed(c, s);
}

/* ---- the end of a side --------------------------------------------------------- */

static void http_eof(sy_conn *c, conn_side s, ssize_t n) {
  sy_flow *f = &c->fl[s];
  sy_sock *st = conn_stream(c, s);
  if (s == SIDE_UPSTREAM && f->msg_done && f->writing) {
    /* The response is whole and being written: its end only means the
     * connection cannot carry another request. */
    f->eof = 1;
    if (st) sy_sock_read_stop(st);
    return;
  }
  if (st) sy_sock_read_stop(st);
  if (s == SIDE_CLIENT && c->state == CS_READ_HEAD && f->len == f->pos) {
    conn_close(c); /* a clean end between requests */
    return;
  }
  if (s == SIDE_UPSTREAM && upstream_retry_stale(c)) return;
  if (s == SIDE_UPSTREAM && c->state == CS_CONNECT && c->tls[s]) {
    sy_log_every_second(SY_LOG_ERROR, "upstream %s: TLS handshake failed: connection %s",
                        conn_peer(c, s), n == UV_EOF ? "closed" : uv_strerror((int)n));
    upstream_link_close(c);
    upstream_failed(c, SY_TERM_UPSTREAM_TLS);
    return;
  }
  if (n == UV_EOF && (f->writing || f->pos < f->len)) {
    /* Read ahead of the parser: the message may still be whole, and a
     * client's pipelined requests before its half-close are all answered.
     * The end counts once the buffer is parsed (read_update comes back here). */
    f->eof = 1;
    return;
  }
  if (f->msg_done && (s == SIDE_UPSTREAM || (n == UV_EOF && c->state != CS_READ_HEAD))) {
    /* Upstream: the response is whole; the connection just is not reusable.
     * Client: a half-close after a whole request: answer it, then close. An
     * upgrade carries on: the FIN is still there for the tunnel to read. */
    if (s == SIDE_CLIENT) c->x.close_after = 1;
    return;
  }
  int delimited = s == SIDE_UPSTREAM ? f->head_done : c->state >= CS_SEND_BODY;
  if (n == UV_EOF && delimited && llhttp_message_needs_eof(&f->parser)) {
    llhttp_finish(&f->parser); /* a message delimited by the close */
    http_flush(c, s);
    return;
  }
  if (s == SIDE_UPSTREAM) {
    sy_log_every_second(SY_LOG_ERROR, "upstream %s: connection closed before the response ended",
                        conn_peer(c, s));
    enum sy_term why = n == UV_EOF ? SY_TERM_UPSTREAM_CLOSED : SY_TERM_UPSTREAM_RESET;
    c->x.term = why;
    if (!c->x.resp_head_sent) {
      local_response(c, 502, 1);
    } else {
      report_cut(c, why); /* a backend that died mid-response: its line and its count */
      conn_close(c);
    }
    return;
  }
  /* The client left mid-request; nobody is there to read an answer. Logged
   * as nginx does, with 499 (client closed request). */
  char who[80];
  CONN_TRACE("client %s: connection %s mid-request", conn_client_text(c, who),
             n == UV_EOF ? "closed" : uv_strerror((int)n));
  enum sy_term why = n == UV_EOF ? SY_TERM_CLIENT_CLOSED : SY_TERM_CLIENT_RESET;
  if (c->x.method[0] && !c->x.resp_flushed) {
    c->x.status = 499;
    c->x.term = why;
    report_request(c);
  } else {
    report_cut(c, why);
  }
  conn_close(c);
}

/* ---- writing ------------------------------------------------------------------- */

void http_flush(sy_conn *c, conn_side s) {
  sy_flow *f = &c->fl[s];
  if (s == SIDE_UPSTREAM && f->nsegs && !f->writing && !conn_closed(c)) {
    if (c->x.resp_head_sent) c->x.resp_flushed = 1;
    for (uint32_t i = 0; i < f->nsegs; i++)
      c->x.bytes_out += f->segs[i].len;
  }
  int r = conn_flush(c, s);
  if (r == 0 && s == SIDE_UPSTREAM && f->msg_done) {
    http_exchange_end(c);
  } else if (r < 0) {
    if (s == SIDE_UPSTREAM || c->x.resp_head_sent)
      conn_close(c);
    else
      local_response(c, 502, 1);
  }
}

static void http_written(sy_conn *c, conn_side s, sy_sock_wreq *req, int status) {
  sy_flow *f = &c->fl[s];
  if (req->handle != conn_stream(c, 1 - s)) {
    /* The write was for an upstream connection already given up (a local
     * answer, or a stale pooled connection being retried): carry on with
     * whatever waits for the current one. */
    if (c->link && f->nsegs)
      http_flush(c, s);
    else if (f->discard)
      http_feed(c, s);
    return;
  }
  if (status < 0) {
    if (s == SIDE_UPSTREAM) { /* the client went away mid-response */
      report_cut(c, SY_TERM_CLIENT_RESET);
      conn_close(c);
    } else if (upstream_retry_stale(c))
      ;
    else if (!c->x.resp_head_sent)
      local_response(c, 502, 1);
    else
      c->x.close_after = 1;
    return;
  }
  /* After a 1xx the final head may be half read: its fields are offsets into
   * the buffer, which must not move under them. */
  if (f->head_done || f->pos == f->head_start) sy_flow_compact(f);
  sy_flow_batch_done(f);
  if (f->msg_done) {
    if (s == SIDE_CLIENT && c->state == CS_SEND_BODY) {
      conn_set_state(c, CS_READ_RESP);
      conn_timer_arm(c, conn_response_timeout(c)); /* the body is out: now the answer */
    }
    http_exchange_end(c);
  } else if (f->len > f->pos) {
    http_feed(c, s);
  }
  c->io->read_update(c, s);
}

/* ---- the end of an exchange ---------------------------------------------------- */

/* Both halves done (or the request abandoned): log, then keep-alive or close. */
void http_exchange_end(sy_conn *c) {
  sy_flow *rq = &c->fl[SIDE_CLIENT], *rs = &c->fl[SIDE_UPSTREAM];
  sy_flow_pool *pool = &c->env->flows;
  if (c->state > CS_SEND_RESP) return; /* tunnel, relay, linger, closed */
  if (!rs->msg_done || rs->writing) return;
  if (c->x.switching) {
    /* Splice needs both sides in cleartext; TLS on either side is copied. */
    if (!rq->writing)
      (c->tls[SIDE_CLIENT] || c->tls[SIDE_UPSTREAM]) ? relay_start(c) : handoff_start(c);
    return;
  }
  if (!rq->msg_done && !c->x.close_after) {
    if (rq->discard) return; /* still swallowing the body of a request answered locally */
    /* The upstream answered before the request ended: the stream cannot be
     * resynchronised, so this connection ends with the response. */
    c->x.close_after = 1;
  }
  report_request(c);
  upstream_link_release(c);
  if (c->x.close_after || c->env->stopping) {
    conn_linger(c);
    return;
  }
  /* Keep-alive: the request parser sits paused right after the message. */
  if (llhttp_get_errno(&rq->parser) == HPE_PAUSED_UPGRADE)
    llhttp_resume_after_upgrade(&rq->parser);
  else if (llhttp_get_errno(&rq->parser) == HPE_PAUSED)
    llhttp_resume(&rq->parser);
  /* The response flow is reset, not freed: its small arrays serve the next
   * exchange; only the data buffer goes when empty (idle holds none). */
  rs->pos = rs->len = 0;
  rs->eof = 0;
  sy_flow_batch_done(rs);
  sy_flow_release_if_idle(rs, pool);
  sy_flow_restart(rs);
  sy_flow_new_parser(rs);
  sy_flow_compact(rq);
  sy_flow_batch_done(rq);
  sy_flow_restart(rq);
  conn_xchg_reset(c);
  conn_set_state(c, CS_READ_HEAD);
  c->x.t_start = uv_hrtime();
  sy_flow_release_if_idle(rq, pool);
  if (!rq->buf) sy_buf_free(&c->x.retry_head); /* an idle connection holds no buffer at all */
  conn_timer_arm(c, rq->len ? c->cfg->timeouts.header : c->cfg->timeouts.client_idle);
  if (rq->len)
    http_feed(c, SIDE_CLIENT);
  else
    c->io->read_update(c, SIDE_CLIENT);
}

const conn_io conn_http_io = {
    .wants = http_wants,
    .read_update = http_read_update,
    .input = http_input,
    .eof = http_eof,
    .written = http_written,
};
