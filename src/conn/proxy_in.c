/* The PROXY protocol on a listener (listeners[].proxy_protocol): the load
 * balancer in front writes the client's addresses before anything else, and
 * the connection takes them as the client's before TLS or HTTP begins. Its
 * own mode (c->io): read the client side only, until the header is whole. */
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "switchyard/log.h"
#include "switchyard/proxyproto.h"

void conn_pp_failed(sy_conn *c, const char *reason) {
  char l[64];
  snprintf(l, sizeof(l), "reason=\"%s\"", reason);
  sy_metrics_add(c->env->metrics, "switchyard_proxy_protocol_errors_total", l, 1);
  char who[80];
  if (strcmp(reason, "eof") == 0) /* a balancer's plain TCP check */
    CONN_TRACE("client %s: closed before its PROXY protocol header", conn_client_text(c, who));
  else
    sy_log_every_second(SY_LOG_WARN, "client %s: PROXY protocol header %s: connection closed",
                        conn_client_text(c, who), reason);
  conn_close(c);
}

static int pp_wants(sy_conn *c, conn_side s) {
  return s == SIDE_CLIENT;
}

static void pp_input(sy_conn *c, conn_side s, size_t n) {
  sy_flow *f = &c->fl[SIDE_CLIENT];
  f->len += (uint32_t)n;
  sy_pp_header h;
  switch (sy_pp_parse(f->buf + f->pos, f->len - f->pos, c->lcfg->proxy_protocol, &h)) {
  case SY_PP_MORE:
    if (f->len - f->pos >= SY_PP_MAX) conn_pp_failed(c, "bad"); /* cannot happen: a bug guard */
    return;
  case SY_PP_BAD:
    conn_pp_failed(c, "bad");
    return;
  case SY_PP_OK:
    break;
  }
  if (!h.local) conn_set_client(c, &h.src, &h.dst); /* LOCAL: the balancer's own check */
  f->pos += (uint32_t)h.len;
  sy_flow_compact(f);
  conn_start(c);
}

static void pp_eof(sy_conn *c, conn_side s, ssize_t status) {
  /* A balancer's TCP check connects and leaves without a header: not an
   * error worth a line, but counted with the rest. */
  conn_pp_failed(c, status == UV_EOF ? "eof" : "bad");
}

static void pp_written(sy_conn *c, conn_side s, sy_sock_wreq *req, int status) {
  /* Nothing is written before the header: no write completes in this mode. */
}

const conn_io conn_pp_io = {
    .wants = pp_wants,
    .read_update = conn_read_arm,
    .input = pp_input,
    .eof = pp_eof,
    .written = pp_written,
};
