/* The request side's decisions: what a parsed request head means (route,
 * upgrade tokens, RFC 2817, limits), and the head that goes upstream. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "switchyard/limits.h"
#include "switchyard/log.h"
#include "switchyard/router.h"
#include "switchyard/upstream.h"
#include "switchyard/uri.h"

/* For a request refused before its head was understood. */
void request_remember_method(sy_conn *c) {
  sy_flow *f = &c->fl[SIDE_CLIENT];
  size_t mn = f->head.method.len < 15 ? f->head.method.len : 15;
  memcpy(c->x.method, f->buf + f->head.method.off, mn);
  c->x.method[mn] = 0;
  if (!mn) memcpy(c->x.method, "-", 2);
}

static void remember(sy_conn *c) {
  sy_flow *f = &c->fl[SIDE_CLIENT];
  conn_xchg *x = &c->x;
  sy_str m = sy_span_str(f->buf, f->head.method);
  size_t mn = m.len < sizeof(x->method) - 1 ? m.len : sizeof(x->method) - 1;
  memcpy(x->method, m.p, mn);
  x->method[mn] = 0;
  sy_str t = sy_span_str(f->buf, f->head.target);
  /* absolute-form routes on its path like origin-form (the authority was
   * checked against Host). */
  if (sy_target_authority(t, &t).p != f->buf + f->head.target.off && (!t.len || t.p[0] != '/'))
    t = (sy_str){"/", 1};
  size_t q = 0;
  while (q < t.len && t.p[q] != '?')
    q++;
  free(x->path); /* a request resumed after an RFC 2817 upgrade is seen twice */
  x->path = strndup(t.p, q);
  x->is_head = f->parser.method == HTTP_HEAD;
  x->http10 = f->head.major == 1 && f->head.minor == 0;
  x->client_close = !llhttp_should_keep_alive(&f->parser);
  x->keep_alive10 = x->http10 && !x->client_close;
  x->has_body = (f->parser.flags & (F_CHUNKED | F_CONTENT_LENGTH)) &&
                !((f->parser.flags & F_CONTENT_LENGTH) && f->parser.content_length == 0);
}

/* This listener upgrades to TLS itself (RFC 2817): TLS tokens are for the
 * proxy and never travel upstream. 1 when the request was answered. */
static int tls_offer(sy_conn *c, sy_str *offered, size_t *noffered) {
  int offers_tls = 0;
  size_t k = 0;
  for (size_t i = 0; i < *noffered; i++) {
    if (offered[i].len >= 4 && strncasecmp(offered[i].p, "TLS/", 4) == 0)
      offers_tls = 1;
    else if (!(offered[i].len >= 5 && strncasecmp(offered[i].p, "HTTP/", 5) == 0))
      offered[k++] = offered[i]; /* "HTTP/1.1" beside TLS means: HTTP over it */
  }
  *noffered = k;
  if (!c->tls[SIDE_CLIENT] && offers_tls && !c->x.has_body) {
    conn_tls_upgrade_start(c);
    return 1;
  }
  if (!c->tls[SIDE_CLIENT] && c->lcfg->offer_tls_upgrade == SY_TLS_OFFER_REQUIRED) {
    local_426(c);
    return 1;
  }
  return 0;
}

/* Only a path with an escape, a dot segment or a doubled slash can change. */
static int path_may_change(const char *p) {
  for (; *p; p++)
    if (*p == '%' || (p[0] == '/' && (p[1] == '/' || p[1] == '.'))) return 1;
  return 0;
}

/* RFC 3986 §6 before routing, so a route cannot be walked around with
 * "/x/../admin", "//admin" or "/%61dmin"; the backend gets the same path.
 * 0, or -1 when the path was refused (answered 400). */
static int normalize_path(sy_conn *c) {
  conn_xchg *x = &c->x;
  if (!c->cfg->paths.normalize || x->path[0] != '/' || !path_may_change(x->path)) return 0;
  size_t n = strlen(x->path), len = 0;
  char *np = malloc(n + 1);
  sy_path_result r =
      np ? sy_path_normalize((sy_str){x->path, n}, sy_path_flags(&c->cfg->paths), np, n + 1, &len)
         : SY_PATH_NO_ROOM;
  if (r != SY_PATH_OK) {
    free(np);
    char who[80];
    CONN_TRACE("client %s: path refused: %s", conn_client_text(c, who), sy_path_result_str(r));
    x->term = SY_TERM_BAD_REQUEST;
    local_response(c, 400, 1);
    return -1;
  }
  free(x->path);
  x->path = np;
  x->path_normalized = 1;
  return 0;
}

/* RFC 6455 §4.2.1: a route that verifies the handshake refuses a request
 * whose key could not be verified before the backend spends anything. */
static int websocket_ok(sy_conn *c) {
  conn_xchg *x = &c->x;
  int ws = 0;
  for (size_t i = 0; i < x->nup_tokens; i++)
    ws |= sy_str_ieq(x->up_tokens[i], "websocket");
  if (!ws || !x->route->ws_check_accept) return 1;
  sy_flow *f = &c->fl[SIDE_CLIENT];
  sy_ws_check r = sy_ws_check_request(&f->head, f->buf);
  if (r == SY_WS_OK) return 1;
  char who[80];
  CONN_TRACE("client %s: WebSocket handshake refused: %s", conn_client_text(c, who),
             sy_ws_check_str(r));
  x->upgrading = 0; /* counted as rejected by the proxy, not refused upstream */
  x->term = SY_TERM_BAD_REQUEST;
  int version = r == SY_WS_VERSION_MISSING || r == SY_WS_VERSION_UNSUPPORTED;
  local_error(c, 400, 1, version ? "Sec-WebSocket-Version: 13\r\n" : NULL);
  return 0;
}

void request_route(sy_conn *c) {
  sy_flow *f = &c->fl[SIDE_CLIENT];
  conn_xchg *x = &c->x;
  remember(c);
  /* Every logged request has an id; it travels only with
   * forwarding.request_id (request_queue_head, response_on_head, local.c).
   * With neither, finding or making one is work nobody reads. */
  if (c->cfg->forwarding.request_id || sy_access_log_enabled())
    sy_reqid_for_head(&f->head, f->buf, c->cfg->forwarding.request_id_header, x->request_id, NULL);
  if (sy_head_validate(&f->head, f->buf) < 0) {
    x->term = SY_TERM_BAD_REQUEST;
    local_response(c, 400, 1);
    return;
  }
  if (f->parser.method == HTTP_CONNECT) {
    x->term = SY_TERM_BAD_REQUEST;
    local_response(c, 405, 1);
    return;
  }
  sy_str offered[MAX_UPGRADES];
  size_t noffered = sy_head_upgrade_offers(&f->head, f->buf, offered, MAX_UPGRADES);
  if (noffered) {
    size_t n0 = offered[0].len < sizeof(x->offered0) - 1 ? offered[0].len : sizeof(x->offered0) - 1;
    memcpy(x->offered0, offered[0].p, n0);
    x->offered0[n0] = 0;
  }
  if (c->lcfg->offer_tls_upgrade != SY_TLS_OFFER_OFF && tls_offer(c, offered, &noffered)) return;
  if (x->tls_upgrade_now && f->parser.method == HTTP_OPTIONS && f->head.target.len == 1 &&
      f->buf[f->head.target.off] == '*') {
    /* RFC 2817 §3.2's mandatory upgrade: OPTIONS * carried the switch, and
     * is answered by the proxy over the new TLS layer. */
    sy_buf b = {0};
    int close = local_closing(c, 0);
    sy_buf_appendf(&b, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n%s\r\n",
                   close ? "Connection: close\r\n" : "");
    local_send(c, 200, close, &b);
    sy_buf_free(&b);
    return;
  }
  if (normalize_path(c) < 0) return;

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
      .path = {x->path, strlen(x->path)},
      .headers = hv,
      .nheaders = nh,
      .upgrades = offered,
      .nupgrades = noffered,
  };
  x->route = sy_route_match(c->cfg, &rv);
  if (!x->route || !x->route->upstream) {
    x->term = SY_TERM_NO_ROUTE;
    local_response(c, 404, !x->has_body ? 0 : 1);
    return;
  }
  if (x->route->require_tls && !c->tls[SIDE_CLIENT]) {
    local_426(c);
    return;
  }
  /* Keep only the tokens the route lets through, in the client's order. */
  size_t used = 0;
  for (size_t i = 0; i < noffered && x->nup_tokens < MAX_UPGRADES; i++) {
    if (!sy_route_allows_upgrade(x->route, offered[i])) continue;
    if (used + offered[i].len > sizeof(x->up_store)) break;
    memcpy(x->up_store + used, offered[i].p, offered[i].len);
    x->up_tokens[x->nup_tokens++] = (sy_str){x->up_store + used, offered[i].len};
    used += offered[i].len;
  }
  x->upgrading = x->nup_tokens > 0;
  if (x->upgrading && c->cfg->limits.max_tunnels &&
      sy_limits_tunnels() >= c->cfg->limits.max_tunnels) {
    sy_log_every_second(SY_LOG_WARN, "limits.max_tunnels (%llu) reached: upgrade refused",
                        (unsigned long long)c->cfg->limits.max_tunnels);
    x->term = SY_TERM_LIMIT;
    sy_metrics_add(c->env->metrics, "switchyard_upgrades_refused_total", "reason=\"max_tunnels\"",
                   1);
    local_response(c, 503, !x->has_body ? 0 : 1);
    return;
  }
  if (!websocket_ok(c)) return;
  if (x->upgrading && x->route->ws_check_accept) {
    /* Checked whatever the client sent: without a usable key no 101 can be
     * verified, so none is accepted (the client cannot opt out). */
    x->check_accept = 1;
    const sy_field *k = sy_head_find(&f->head, f->buf, "sec-websocket-key");
    if (k && k->value.len < sizeof(x->ws_key)) {
      memcpy(x->ws_key, f->buf + k->value.off, k->value.len);
      x->ws_key[k->value.len] = 0;
    }
  }
  x->key_hash = sy_upstream_key(x->route->upstream, &f->head, f->buf, c->client_ip);
  upstream_connect(c);
}

/* Queue the rewritten request head; the body follows as the parser yields it. */
int request_queue_head(sy_conn *c) {
  sy_flow *f = &c->fl[SIDE_CLIENT];
  f->chunked_out = (f->parser.flags & F_CHUNKED) != 0;
  sy_str wsp[SY_WS_SUBPROTOCOLS_MAX];
  size_t nwsp = 0;
  const sy_route_cfg *r = c->x.route;
  if (r->ws_subprotocols_set) {
    for (size_t i = 0; i < r->nws_subprotocols && nwsp < SY_WS_SUBPROTOCOLS_MAX; i++)
      wsp[nwsp++] = (sy_str){r->ws_subprotocols[i], strlen(r->ws_subprotocols[i])};
  }
  sy_fwd_opts o = {
      .xff = c->cfg->forwarding.x_forwarded_for,
      .xfproto = c->cfg->forwarding.x_forwarded_proto,
      .xfhost = c->cfg->forwarding.x_forwarded_host,
      .via = c->cfg->forwarding.via,
      .client_ip = c->client_ip,
      .proto = c->tls[SIDE_CLIENT] ? "https" : "http",
      .default_host = c->x.server ? c->x.server->addr.text : NULL,
      .chunked = f->chunked_out,
      .upgrades = c->x.up_tokens,
      .nupgrades = c->x.nup_tokens,
      .ws_protocols = wsp,
      .nws_protocols = nwsp,
      .ws_protocols_restricted = r->ws_subprotocols_set,
      .path = c->x.path_normalized ? (sy_str){c->x.path, strlen(c->x.path)} : (sy_str){NULL, 0},
      .request_id_name =
          c->cfg->forwarding.request_id ? c->cfg->forwarding.request_id_header : NULL,
      .request_id = c->cfg->forwarding.request_id ? c->x.request_id : NULL,
  };
  uint32_t off = (uint32_t)f->scratch.len;
  int rc = sy_http_build_request(&f->scratch, &f->head, f->buf, &o);
  return rc ? rc : sy_flow_push_scratch(f, off);
}
