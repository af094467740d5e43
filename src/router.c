/* Route selection. Everything here works on borrowed slices of the request so the
 * hot path neither allocates nor copies; case folding is ASCII-only on purpose
 * (header names, host names and upgrade tokens are ASCII by their grammars). */
#include "switchyard/router.h"

#include <string.h>

static int lower(int ch) {
  return ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch;
}

static int eq_nocase(const char *a, size_t alen, const char *b, size_t blen) {
  if (alen != blen) return 0;
  for (size_t i = 0; i < alen; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return 0;
  return 1;
}

static int eq_exact(sy_str s, const char *z) {
  size_t n = strlen(z);
  return s.len == n && (n == 0 || memcmp(s.p, z, n) == 0);
}

/* Host header -> bare host name: brackets and port removed, one trailing dot
 * dropped (it names the same host). Port stripping only applies when there is
 * exactly one colon, so an unbracketed IPv6 literal is left whole. */
static sy_str bare_host(sy_str h) {
  if (!h.p) return (sy_str){"", 0};
  if (h.len && h.p[0] == '[') {
    const char *close = memchr(h.p, ']', h.len);
    if (close) return (sy_str){h.p + 1, (size_t)(close - h.p - 1)};
  } else {
    const char *colon = memchr(h.p, ':', h.len);
    if (colon && !memchr(colon + 1, ':', h.len - (size_t)(colon - h.p) - 1))
      h.len = (size_t)(colon - h.p);
  }
  if (h.len > 1 && h.p[h.len - 1] == '.') h.len--;
  return h;
}

static int host_matches(const char *want, sy_str req_host) {
  sy_str h = bare_host(req_host);
  size_t wlen = strlen(want);
  if (want[0] == '*') {
    /* "*.example.com": the suffix keeps its dot, and at least one byte must
     * precede it, so "example.com" itself does not match. */
    const char *suffix = want + 1;
    size_t slen = wlen - 1;
    return h.len > slen && eq_nocase(h.p + h.len - slen, slen, suffix, slen);
  }
  return eq_nocase(h.p, h.len, want, wlen);
}

static int methods_match(const sy_route_cfg *r, sy_str method) {
  for (size_t i = 0; i < r->nmethods; i++)
    if (eq_exact(method, r->methods[i])) return 1;
  return 0;
}

static sy_str trim(sy_str s) {
  while (s.len && (s.p[0] == ' ' || s.p[0] == '\t')) {
    s.p++;
    s.len--;
  }
  while (s.len && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t'))
    s.len--;
  return s;
}

static int header_matches(const sy_header_match *m, const sy_request_view *req) {
  size_t nlen = strlen(m->name);
  for (size_t i = 0; i < req->nheaders; i++) {
    const sy_header *h = &req->headers[i];
    if (!eq_nocase(h->name.p, h->name.len, m->name, nlen)) continue;
    if (!m->value || eq_exact(trim(h->value), m->value)) return 1;
  }
  return 0;
}

static int headers_match(const sy_route_cfg *r, const sy_request_view *req) {
  for (size_t i = 0; i < r->nheaders; i++)
    if (!header_matches(&r->headers[i], req)) return 0;
  return 1;
}

/* The protocol name of "websocket/13" is "websocket". */
static size_t proto_len(sy_str token) {
  const char *slash = token.p ? memchr(token.p, '/', token.len) : NULL;
  return slash ? (size_t)(slash - token.p) : token.len;
}

/* A configured entry without a version names the protocol at any version; one
 * with a version ("TLS/1.2") names exactly that token. */
static int entry_matches(const char *entry, sy_str token) {
  size_t elen = strlen(entry);
  if (memchr(entry, '/', elen)) return eq_nocase(token.p, token.len, entry, elen);
  return eq_nocase(token.p, proto_len(token), entry, elen);
}

static int upgrade_matches(const sy_route_cfg *r, const sy_request_view *req) {
  for (size_t i = 0; i < req->nupgrades; i++)
    for (size_t j = 0; j < r->nmatch_upgrade; j++)
      if (entry_matches(r->match_upgrade[j], req->upgrades[i])) return 1;
  return 0;
}

static int route_matches(const sy_route_cfg *r, const sy_request_view *req) {
  if (r->host && !host_matches(r->host, req->host)) return 0;
  if (r->path_prefix) {
    size_t n = strlen(r->path_prefix);
    if (req->path.len < n || memcmp(req->path.p, r->path_prefix, n) != 0) return 0;
  }
  if (r->path && !eq_exact(req->path, r->path)) return 0;
  if (r->nmethods && !methods_match(r, req->method)) return 0;
  if (!headers_match(r, req)) return 0;
  if (r->nmatch_upgrade && !upgrade_matches(r, req)) return 0;
  return 1;
}

const sy_route_cfg *sy_route_match(const sy_config *cfg, const sy_request_view *req) {
  for (size_t i = 0; i < cfg->nroutes; i++)
    if (route_matches(&cfg->routes[i], req)) return &cfg->routes[i];
  return NULL;
}

/* h2c is never covered by "*": after the switch the client talks HTTP/2 straight
 * to the backend and every later request bypasses routing (h2c smuggling). */
int sy_route_allows_upgrade(const sy_route_cfg *route, sy_str token) {
  return sy_route_upgrade_entry(route, token) != NULL;
}

const char *sy_route_upgrade_entry(const sy_route_cfg *route, sy_str token) {
  for (size_t i = 0; i < route->nallow_upgrades; i++) {
    const char *e = route->allow_upgrades[i];
    if (strcmp(e, "*") != 0 && entry_matches(e, token)) return e;
  }
  int h2c = eq_nocase(token.p, proto_len(token), "h2c", 3);
  return !h2c && route->allow_any_upgrade ? "*" : NULL;
}
