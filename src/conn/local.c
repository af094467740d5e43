/* Answers the proxy writes itself: errors (400, 404, 408, 426, 431, 5xx...)
 * and the OPTIONS * of RFC 2817. They take the response side's place in the
 * exchange: the upstream connection, if any, is closed. */
#include "internal.h"

/* A local answer ends the connection when the caller says so (the stream
 * cannot be trusted any more), when the exchange must end anyway, when the
 * client asked for it (Connection: close, or HTTP/1.0 without keep-alive;
 * RFC 9112 §9.6) or when the worker drains. */
int local_closing(sy_conn *c, int close) {
  return close || c->x.close_after || c->x.client_close || c->env->stopping;
}

void local_error(sy_conn *c, int status, int close, const char *extra_headers) {
  close = local_closing(c, close);
  sy_buf h = {0}, b = {0};
  if (!close && c->x.keep_alive10) sy_buf_appendf(&h, "Connection: keep-alive\r\n");
  if (c->cfg->forwarding.request_id && c->x.request_id[0]) /* sane: no CR, LF or quote */
    sy_buf_appendf(&h, "%s: %s\r\n", c->cfg->forwarding.request_id_header, c->x.request_id);
  if (extra_headers) sy_buf_appendf(&h, "%s", extra_headers);
  sy_buf_append(&h, "", 1);
  sy_http_error(&b, status, close, h.p);
  local_send(c, status, close, &b);
  sy_buf_free(&b);
  sy_buf_free(&h);
}

void local_response(sy_conn *c, int status, int close) {
  local_error(c, status, close, NULL);
}

void local_send(sy_conn *c, int status, int close, sy_buf *b) {
  sy_flow *rq = &c->fl[SIDE_CLIENT], *rs = &c->fl[SIDE_UPSTREAM];
  conn_xchg *x = &c->x;
  if (c->state > CS_SEND_RESP) return; /* closing, or no longer HTTP: nobody to answer */
  if (x->resp_head_sent && !x->resp_flushed && !rs->writing) {
    /* The upstream's head is still only queued: an error found in the same
     * read (a bad chunk, say) replaces it, so the client sees a clean 502. */
    x->resp_head_sent = 0;
    sy_flow_drop_batch(rs);
  }
  if (x->resp_head_sent) {
    /* Part of an upstream response is already out: the only honest signal
     * left is to cut the connection. */
    conn_close(c);
    return;
  }
  x->status = status;
  x->resp_head_sent = 1;
  upstream_link_close(c);
  if (close) x->close_after = 1;
  if (!rq->msg_done && !x->close_after) {
    /* Read and drop the rest of the request body so keep-alive can go on. */
    rq->discard = 1;
  }
  sy_flow_drop_batch(rs);
  sy_flow_push_copy(rs, b->p, b->len);
  rs->msg_done = 1;
  conn_set_state(c, CS_SEND_RESP);
  conn_timer_arm(c, conn_response_timeout(c));
  http_flush(c, SIDE_UPSTREAM);
  if (rq->discard && !rq->writing && !conn_closed(c)) {
    if (llhttp_get_errno(&rq->parser) == HPE_PAUSED) llhttp_resume(&rq->parser);
    http_feed(c, SIDE_CLIENT);
  }
}

void local_426(sy_conn *c) {
  sy_buf b = {0};
  int close = local_closing(c, 0);
  sy_http_426_tls(&b, close);
  /* The body is read and dropped, so the client can retry on this very
   * connection with the upgrade, as RFC 2817 §4.2 intends. */
  local_send(c, 426, close, &b);
  sy_buf_free(&b);
}
