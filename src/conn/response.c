/* The response side's decisions: what a parsed response head means for the
 * exchange (a 101 that may switch, an interim answer, framing towards the
 * client, keep-alive) and the head that goes to the client. */
#include <string.h>

#include "internal.h"

int response_on_head(sy_flow *f) {
  sy_conn *c = f->parser.data;
  conn_xchg *x = &c->x;
  llhttp_t *p = &f->parser;
  int status = p->status_code;
  sy_resp_opts o = {
      .via = c->cfg->forwarding.via,
      .request_id_name =
          c->cfg->forwarding.request_id ? c->cfg->forwarding.request_id_header : NULL,
      .request_id = c->cfg->forwarding.request_id ? x->request_id : NULL,
  };
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
    sy_str chosen = {0};
    if (!x->upgrading || !sy_http_switch_ok(&f->head, f->buf, x->up_tokens, x->nup_tokens,
                                            x->check_accept ? x->ws_key : NULL, &chosen)) {
      x->bad_101 = 1; /* the "fake 101" smuggling class: 502, never a tunnel */
      return HPE_USER;
    }
    size_t n = chosen.len < sizeof(x->proto) - 1 ? chosen.len : sizeof(x->proto) - 1;
    memcpy(x->proto, chosen.p, n);
    x->proto[n] = 0;
    o.upgrade = 1;
    x->switching = 1;
  } else if (status >= 100 && status < 200) {
    f->interim = 1;
  } else {
    int bodyless = x->is_head || status == 204 || status == 304;
    int framed = (p->flags & (F_CHUNKED | F_CONTENT_LENGTH)) != 0;
    if (!bodyless && (!framed || (p->flags & F_CHUNKED))) {
      /* Chunked, or delimited by the upstream closing: re-framed as chunked
       * for HTTP/1.1; an HTTP/1.0 client learns the end from the close. */
      if (x->http10)
        x->close_after = 1;
      else
        f->chunked_out = 1;
    }
    if (x->client_close) x->close_after = 1;
    /* An answer before the request's end: the exchange will close (the rest
     * of the body cannot be told from a next request), so the head says so. */
    if (!c->fl[SIDE_CLIENT].msg_done) x->close_after = 1;
    o.chunked = f->chunked_out;
    o.conn_close = x->close_after || c->env->stopping; /* a drain closes after it */
    o.keep_alive10 = x->keep_alive10 && !x->close_after;
    x->status = status;
    x->resp_from_upstream = 1;
    /* llhttp would read a body announced on a 304; RFC 9110 §6.4.1 says none
     * follows, whatever Content-Length claims. */
    skip_body = bodyless;
    conn_set_state(c, CS_SEND_RESP);
  }
  /* RFC 9110 §15.2: no 1xx to an HTTP/1.0 client, which would take it for
   * the answer. */
  if (f->interim && x->http10) return 0;
  /* Built straight into the scratch buffer it is written from. */
  uint32_t off = (uint32_t)f->scratch.len;
  int rc = sy_http_build_response(&f->scratch, &f->head, f->buf, &o);
  if (rc == 0) rc = sy_flow_push_scratch(f, off);
  if (rc) return HPE_USER;
  if (!f->interim) x->resp_head_sent = 1;
  return skip_body ? 1 : 0;
}
