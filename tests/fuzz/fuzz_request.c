/* libFuzzer target: the request path of the proxy without sockets.
 *
 * Input: [ctl][split][request bytes...]
 *   ctl   bit 0: feed in three pieces instead of two; bit 1: listener is TLS
 *         (proto "https"); bits 2-3 unused (kept for seeds' readability)
 *   split where the first piece ends (mod len+1); the second cut is halfway
 *         between it and the end
 * The request bytes go through llhttp (request mode, strict, as in conn.c),
 * sy_head_validate, sy_route_match against a fixed config, and
 * sy_http_build_request without and with the upgrade tokens the route allows.
 * Besides sanitizer reports, the rewritten head must satisfy framing
 * invariants (one head, CRLF only, same method/target, same body framing,
 * Upgrade present exactly when tokens are forwarded, h2c only when named);
 * a violation aborts, which libFuzzer records as a crash. */
#include <strings.h>

#include "fuzz_common.h"
#include "switchyard/config.h"
#include "switchyard/router.h"

static sy_config *g_cfg;

static const char k_yaml[] =
    "listeners:\n"
    "  - address: 127.0.0.1:8080\n"
    "upstreams:\n"
    "  web: { servers: [{address: 127.0.0.1:9000}] }\n"
    "  chat: { servers: [{address: 127.0.0.1:9001}] }\n"
    "  h2: { servers: [{address: 127.0.0.1:9002}] }\n"
    "routes:\n"
    "  - match: { host: chat.example.com, path_prefix: /ws, upgrade: [websocket] }\n"
    "    upstream: chat\n"
    "    allow_upgrades: [\"*\"]\n"
    "    websocket: { check_accept: true, subprotocols: [chat, superchat] }\n"
    "  - match: { host: \"*.example.com\", path_prefix: /api/, methods: [GET, POST],\n"
    "             headers: [{name: X-Env, value: canary}, {name: X-Debug}] }\n"
    "    upstream: h2\n"
    "    allow_upgrades: [websocket, h2c, TLS/1.2]\n"
    "  - match: { path: /status.json }\n"
    "    upstream: web\n"
    "    allow_upgrades: []\n"
    "  - match: { path_prefix: / }\n"
    "    upstream: web\n"
    "limits: { max_headers: 24, max_header_bytes: 4KiB }\n";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  sy_config_error err;
  g_cfg = sy_config_load_string("fuzz_request.yaml", k_yaml, sizeof(k_yaml) - 1, &err);
  if (!g_cfg) {
    fprintf(stderr, "fuzz_request: config did not load: %s\n", err.msg);
    abort();
  }
  return 0;
}

static int route_names(const sy_route_cfg *r, const char *tok) {
  for (size_t i = 0; i < r->nallow_upgrades; i++)
    if (strcasecmp(r->allow_upgrades[i], tok) == 0) return 1;
  return 0;
}

/* The forwarded head must be one well-formed request that frames the body
 * exactly as the client's did. */
static void check_forwarded(const sy_buf *out, const fz_msg *in, const sy_fwd_opts *o) {
  if (fz_muted_copy(&in->f.head, in->base) || (in->f.head.major != 1 && fz_known("version")))
    return;
  FZ_CHECK(in->f.head.major == 1, "HTTP/%d.%d request forwarded as HTTP/1.1", in->f.head.major,
           in->f.head.minor);
  FZ_CHECK(!fz_has_ctl(in->base + in->f.head.target.off, in->f.head.target.len, 0),
           "control byte in the forwarded target: %.*s", (int)out->len, out->p);
  fz_check_wire_head(out->p, out->len, "forwarded request");
  fz_msg re;
  fz_msg_init(&re, 1, 100000);
  int rc = fz_parse(&re, out->p, out->len, out->len, out->len);
  FZ_CHECK(rc == 1 && re.head_end == out->len,
           "forwarded request does not re-parse as exactly one head (rc=%d end=%zu len=%zu): %.*s",
           rc, re.head_end, out->len, (int)out->len, out->p);
  FZ_CHECK(re.f.parser.method == in->f.parser.method, "method changed: %.*s", (int)out->len,
           out->p);
  sy_str t0 = sy_span_str(in->base, in->f.head.target), t1 = sy_span_str(re.base, re.f.head.target);
  FZ_CHECK(t0.len == t1.len && memcmp(t0.p, t1.p, t0.len) == 0, "target changed: %.*s",
           (int)out->len, out->p);

  /* Framing: the upstream must see the same body boundaries the proxy parsed. */
  int in_chunked = (in->f.parser.flags & F_CHUNKED) != 0;
  int in_cl = (in->f.parser.flags & F_CONTENT_LENGTH) != 0;
  int out_chunked = (re.f.parser.flags & F_CHUNKED) != 0;
  int out_cl = (re.f.parser.flags & F_CONTENT_LENGTH) != 0;
  if (o->chunked) {
    FZ_CHECK(out_chunked && !out_cl, "chunked body not framed as chunked upstream: %.*s",
             (int)out->len, out->p);
  } else if (in_cl && fz_known("conn-cl") &&
             fz_connection_names(&in->f.head, in->base, "content-length")) {
    /* known: see fz_known() */
  } else if (in_cl) {
    FZ_CHECK(out_cl && !out_chunked && re.f.parser.content_length == in->f.parser.content_length,
             "Content-Length body (%llu bytes) forwarded without the same Content-Length: %.*s",
             (unsigned long long)in->f.parser.content_length, (int)out->len, out->p);
  } else {
    FZ_CHECK(!out_cl && !out_chunked, "bodiless request gained a body framing: %.*s", (int)out->len,
             out->p);
  }
  (void)in_chunked;

  /* Upgrade travels exactly when tokens were forwarded. */
  int ups = fz_count_fields(&re.f.head, re.base, "upgrade");
  FZ_CHECK(ups == (o->nupgrades ? 1 : 0), "Upgrade fields %d with %zu tokens: %.*s", ups,
           o->nupgrades, (int)out->len, out->p);
  FZ_CHECK(!!sy_head_lists(&re.f.head, re.base, "connection", "upgrade") == !!o->nupgrades,
           "Connection: upgrade mismatch: %.*s", (int)out->len, out->p);

  /* One Host in, one Host out (HTTP/1.1 heads are validated to have one). */
  int hosts_in = fz_count_fields(&in->f.head, in->base, "host");
  int hosts_out = fz_count_fields(&re.f.head, re.base, "host");
  if (fz_known("conn-host") && fz_connection_names(&in->f.head, in->base, "host")) {
    fz_msg_free(&re); /* known: see fz_known() */
    return;
  }
  FZ_CHECK(hosts_in == hosts_out, "Host fields %d in, %d out: %.*s", hosts_in, hosts_out,
           (int)out->len, out->p);
  if (hosts_out == 1)
    FZ_CHECK(sy_head_validate(&re.f.head, re.base) == 0, "forwarded head does not validate: %.*s",
             (int)out->len, out->p);
  fz_msg_free(&re);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uint8_t ctl = data[0];
  size_t len = size - 2;
  char *buf = fz_dup(data + 2, len);
  size_t split1 = len ? data[1] % (len + 1) : 0;
  size_t split2 = (ctl & 1) ? split1 + (len - split1) / 2 : len;

  fz_msg m;
  fz_msg_init(&m, 1, g_cfg->limits.max_headers);
  int rc = fz_parse(&m, buf, len, split1, split2);

  /* Differential: the same bytes in one piece give the same head. */
  fz_msg w;
  fz_msg_init(&w, 1, g_cfg->limits.max_headers);
  int rcw = fz_parse(&w, buf, len, len, len);
  FZ_CHECK(rc == rcw, "split parse %d vs whole parse %d", rc, rcw);
  if (rc == 1) {
    FZ_CHECK(m.f.head.nfields == w.f.head.nfields, "fields %zu vs %zu", m.f.head.nfields,
             w.f.head.nfields);
    for (size_t i = 0; i < m.f.head.nfields; i++)
      FZ_CHECK(memcmp(&m.f.head.fields[i], &w.f.head.fields[i], sizeof(sy_field)) == 0,
               "field %zu spans differ when fed in pieces", i);
    FZ_CHECK(memcmp(&m.f.head.target, &w.f.head.target, sizeof(sy_span)) == 0 &&
                 memcmp(&m.f.head.method, &w.f.head.method, sizeof(sy_span)) == 0,
             "request line spans differ when fed in pieces");
  }
  fz_msg_free(&w);

  if (rc != 1 || sy_head_validate(&m.f.head, buf) < 0 || m.f.parser.method == HTTP_CONNECT)
    goto out;

  /* What route_request() in conn.c builds. */
  sy_str t = sy_span_str(buf, m.f.head.target);
  size_t q = 0;
  while (q < t.len && t.p[q] != '?')
    q++;
  if (q > 2048) q = 2048;
  sy_header hv[128];
  size_t nh = m.f.head.nfields < 128 ? m.f.head.nfields : 128;
  for (size_t i = 0; i < nh; i++) {
    hv[i].name = sy_span_str(buf, m.f.head.fields[i].name);
    hv[i].value = sy_span_str(buf, m.f.head.fields[i].value);
  }
  sy_str offered[8];
  size_t noffered = sy_head_upgrade_offers(&m.f.head, buf, offered, 8);
  const sy_field *host = sy_head_find(&m.f.head, buf, "host");
  sy_request_view rv = {
      .method = sy_span_str(buf, m.f.head.method),
      .host = host ? sy_span_str(buf, host->value) : (sy_str){NULL, 0},
      .path = {t.p, q},
      .headers = hv,
      .nheaders = nh,
      .upgrades = offered,
      .nupgrades = noffered,
  };
  const sy_route_cfg *r = sy_route_match(g_cfg, &rv);
  if (!r) goto out; /* 404: "*" and absolute-form targets miss every path_prefix route */

  sy_str toks[8];
  size_t ntoks = 0;
  for (size_t i = 0; i < noffered; i++) {
    if (!sy_route_allows_upgrade(r, offered[i])) continue;
    if (offered[i].len >= 3 && strncasecmp(offered[i].p, "h2c", 3) == 0 &&
        (offered[i].len == 3 || offered[i].p[3] == '/'))
      FZ_CHECK(route_names(r, "h2c"), "h2c let through by a route that does not name it");
    toks[ntoks++] = offered[i];
  }

  sy_str wsp[16];
  size_t nwsp = 0;
  for (size_t i = 0; r->ws_subprotocols_set && i < r->nws_subprotocols && nwsp < 16; i++)
    wsp[nwsp++] = (sy_str){r->ws_subprotocols[i], strlen(r->ws_subprotocols[i])};
  for (int pass = 0; pass < 2; pass++) {
    sy_fwd_opts o = {
        .xff = 1,
        .xfproto = 1,
        .xfhost = 1,
        .via = 1,
        .client_ip = "192.0.2.1",
        .proto = (ctl & 2) ? "https" : "http",
        .chunked = (m.f.parser.flags & F_CHUNKED) != 0,
        .upgrades = pass ? toks : NULL,
        .nupgrades = pass ? ntoks : 0,
        .ws_protocols = wsp,
        .nws_protocols = nwsp,
        .ws_protocols_restricted = pass ? r->ws_subprotocols_set : 0,
    };
    sy_buf b = {0};
    if (sy_http_build_request(&b, &m.f.head, buf, &o) == 0) check_forwarded(&b, &m, &o);
    sy_buf_free(&b);
  }

out:
  fz_msg_free(&m);
  free(buf);
  return 0;
}
