#include "switchyard/http.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void sy_head_init(sy_head *h, int is_request, size_t max_fields) {
  memset(h, 0, sizeof(*h));
  h->is_request = is_request;
  h->max_fields = max_fields;
}

void sy_head_reset(sy_head *h) {
  sy_field *f = h->fields;
  size_t cap = h->cap, maxf = h->max_fields;
  int req = h->is_request;
  memset(h, 0, sizeof(*h));
  h->fields = f;
  h->cap = cap;
  h->max_fields = maxf;
  h->is_request = req;
}

void sy_head_free(sy_head *h) {
  free(h->fields);
  h->fields = NULL;
  h->cap = h->nfields = 0;
}

void sy_span_extend(sy_span *s, uint32_t off, uint32_t len) {
  /* llhttp hands a span over in pieces when it straddles reads; the pieces are
   * adjacent in our buffer, so extending the end is enough. */
  if (s->len == 0) s->off = off;
  s->len = off + len - s->off;
}

int sy_head_on_field(sy_head *h, uint32_t off, uint32_t len) {
  if (h->nfields == 0 || h->in_value) {
    if (h->nfields >= h->max_fields) {
      h->too_many = 1;
      return -1;
    }
    if (h->nfields == h->cap) {
      size_t ncap = h->cap ? h->cap * 2 : 16;
      if (ncap > h->max_fields) ncap = h->max_fields;
      sy_field *nf = realloc(h->fields, ncap * sizeof(*nf));
      if (!nf) return -1;
      h->fields = nf;
      h->cap = ncap;
    }
    memset(&h->fields[h->nfields++], 0, sizeof(sy_field));
    h->in_value = 0;
  }
  sy_field *f = &h->fields[h->nfields - 1];
  sy_span_extend(&f->name, off, len);
  f->line = f->name;
  return 0;
}

int sy_head_on_value(sy_head *h, uint32_t off, uint32_t len) {
  if (h->nfields == 0) return -1;
  sy_field *f = &h->fields[h->nfields - 1];
  h->in_value = 1;
  sy_span_extend(&f->value, off, len);
  f->line.len = f->value.off + f->value.len - f->line.off;
  return 0;
}

static int is_ows(char c) {
  return c == ' ' || c == '\t';
}

int sy_list_each(sy_str v, int (*fn)(sy_str tok, void *arg), void *arg) {
  size_t i = 0;
  while (i < v.len) {
    size_t start = i;
    while (i < v.len && v.p[i] != ',')
      i++;
    size_t end = i;
    while (start < end && is_ows(v.p[start]))
      start++;
    while (end > start && is_ows(v.p[end - 1]))
      end--;
    if (end > start) {
      sy_str tok = {v.p + start, end - start};
      int r = fn(tok, arg);
      if (r) return r;
    }
    i++; /* skip the comma */
  }
  return 0;
}

static int tok_is(sy_str tok, void *arg) {
  return sy_str_ieq(tok, (const char *)arg);
}

int sy_head_lists(const sy_head *h, const char *base, const char *name, const char *token) {
  for (size_t i = 0; i < h->nfields; i++) {
    if (sy_str_ieq(sy_span_str(base, h->fields[i].name), name) &&
        sy_list_each(sy_span_str(base, h->fields[i].value), tok_is, (void *)token))
      return 1;
  }
  return 0;
}

struct tok_collect {
  sy_str *toks;
  size_t n, max;
};

static int collect_tok(sy_str tok, void *arg) {
  struct tok_collect *tc = arg;
  if (tc->n < tc->max) tc->toks[tc->n++] = tok;
  return 0;
}

size_t sy_head_upgrade_offers(const sy_head *h, const char *base, sy_str *out, size_t max) {
  if (h->major != 1 || h->minor < 1) return 0;
  if (!sy_head_lists(h, base, "connection", "upgrade")) return 0;
  struct tok_collect tc = {out, 0, max};
  for (size_t i = 0; i < h->nfields; i++)
    if (sy_str_ieq(sy_span_str(base, h->fields[i].name), "upgrade"))
      sy_list_each(sy_span_str(base, h->fields[i].value), collect_tok, &tc);
  return tc.n;
}

const sy_field *sy_head_find(const sy_head *h, const char *base, const char *name) {
  for (size_t i = 0; i < h->nfields; i++)
    if (sy_str_ieq(sy_span_str(base, h->fields[i].name), name)) return &h->fields[i];
  return NULL;
}

/* With their lengths: the length rejects most names before any byte is compared
 * (every field of both heads is looked up here). */
#define HOP(s)                                                                                     \
  { s, sizeof(s) - 1 }
static const sy_str fixed_hop[] = {HOP("connection"),       HOP("keep-alive"),
                                   HOP("proxy-connection"), HOP("te"),
                                   HOP("trailer"),          HOP("transfer-encoding"),
                                   HOP("upgrade"),          HOP("proxy-authenticate")};
#undef HOP

struct named_arg {
  sy_str name;
};

static int tok_names(sy_str tok, void *arg) {
  return sy_str_ieq2(tok, ((struct named_arg *)arg)->name);
}

int sy_head_is_hop(const sy_head *h, const char *base, sy_str name) {
  for (size_t i = 0; i < sizeof(fixed_hop) / sizeof(fixed_hop[0]); i++)
    if (sy_str_ieq2(name, fixed_hop[i])) return 1;
  /* Framing and routing fields stay whatever Connection names: dropping
   * Content-Length would unframe a body the upstream then reads as the next
   * request, and dropping Host would route there differently than here. */
  if (sy_str_ieq(name, "content-length") || sy_str_ieq(name, "host")) return 0;
  struct named_arg a = {name};
  for (size_t i = 0; i < h->nfields; i++) {
    if (sy_str_ieq(sy_span_str(base, h->fields[i].name), "connection") &&
        sy_list_each(sy_span_str(base, h->fields[i].value), tok_names, &a))
      return 1;
  }
  return 0;
}

/* RFC 9110 §5.6.2 tchar, by table: every byte of every field name is looked up. */
#define T1(c) [c] = 1
static const unsigned char tchar[256] = {
    T1('!'), T1('#'), T1('$'), T1('%'), T1('&'), T1('\''), T1('*'), T1('+'), T1('-'), T1('.'),
    T1('^'), T1('_'), T1('`'), T1('|'), T1('~'), T1('0'),  T1('1'), T1('2'), T1('3'), T1('4'),
    T1('5'), T1('6'), T1('7'), T1('8'), T1('9'), T1('a'),  T1('b'), T1('c'), T1('d'), T1('e'),
    T1('f'), T1('g'), T1('h'), T1('i'), T1('j'), T1('k'),  T1('l'), T1('m'), T1('n'), T1('o'),
    T1('p'), T1('q'), T1('r'), T1('s'), T1('t'), T1('u'),  T1('v'), T1('w'), T1('x'), T1('y'),
    T1('z'), T1('A'), T1('B'), T1('C'), T1('D'), T1('E'),  T1('F'), T1('G'), T1('H'), T1('I'),
    T1('J'), T1('K'), T1('L'), T1('M'), T1('N'), T1('O'),  T1('P'), T1('Q'), T1('R'), T1('S'),
    T1('T'), T1('U'), T1('V'), T1('W'), T1('X'), T1('Y'),  T1('Z')};
#undef T1

static int is_tchar(unsigned char c) {
  return tchar[c];
}

/* field-value = VCHAR / obs-text / SP / HTAB: no CR, LF, NUL or other CTL,
 * which is what splitting and smuggling payloads are made of. */
static int valid_value_byte(unsigned char c) {
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

void sy_headscan_init(sy_headscan *s) {
  memset(s, 0, sizeof(*s));
  s->line_start = 1;
  s->first_line = 1;
}

/* Inside a line only NUL, CR and LF mean anything to the scanner. */
static const unsigned char scan_stop[256] = {[0] = 1, ['\r'] = 1, ['\n'] = 1};

int sy_headscan_run(sy_headscan *s, const char *p, size_t n, size_t *used) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = (unsigned char)p[i];
    if (!s->line_start && s->prev != '\r' && !scan_stop[c]) {
      /* The rest of a line up to its next stop byte, without the per-byte
       * state: a third of a handshake's user-space time went here. */
      size_t j = i + 1;
      while (j < n && !scan_stop[(unsigned char)p[j]])
        j++;
      s->prev = (unsigned char)p[j - 1];
      i = j;
      continue;
    }
    i++;
    if (c == 0) return -1;
    if (c == '\n' && s->prev != '\r') return -1;
    if (s->prev == '\r' && c != '\n') return -1;
    if (s->line_start && c != '\r' && c != '\n') {
      if ((c == ' ' || c == '\t') && !s->first_line) return -1; /* obs-fold */
      s->line_start = 0;
    }
    if (c == '\n') {
      /* An empty line: ends the head, or is one of the CRLFs RFC 9112 §2.2
       * lets a client send before its request line. */
      int empty = s->line_start;
      s->line_start = 1;
      if (empty && !s->first_line) {
        s->done = 1;
        *used = i;
        s->prev = 0;
        return 1;
      }
      if (!empty) s->first_line = 0;
    }
    s->prev = c;
  }
  return 0;
}

/* Host is uri-host [":" port]: reg-name, IPv4 or an IP literal in brackets.
 * Spaces, '/', '@' and the like would make routing and the upstream parse
 * different authorities. */
static int valid_host(sy_str v) {
  static const char ok[] = "-._~!$&'()*+,;=:%[]";
  for (size_t i = 0; i < v.len; i++) {
    unsigned char c = (unsigned char)v.p[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c && strchr(ok, c))))
      return 0;
  }
  return 1;
}

sy_str sy_target_authority(sy_str t, sy_str *rest) {
  size_t skip = 0;
  if (t.len > 7 && strncasecmp(t.p, "http://", 7) == 0)
    skip = 7;
  else if (t.len > 8 && strncasecmp(t.p, "https://", 8) == 0)
    skip = 8;
  size_t e = skip;
  while (skip && e < t.len && t.p[e] != '/' && t.p[e] != '?' && t.p[e] != '#')
    e++;
  if (rest) *rest = skip ? (sy_str){t.p + e, t.len - e} : t;
  return (sy_str){t.p + skip, e - skip};
}

struct last_tok {
  sy_str tok;
};

static int keep_last(sy_str tok, void *arg) {
  ((struct last_tok *)arg)->tok = tok;
  return 0;
}

int sy_head_validate(const sy_head *h, const char *base) {
  int hosts = 0;
  const sy_field *host = NULL;
  struct last_tok te = {{NULL, 0}};
  int has_te = 0;
  if (h->major != 1 || h->minor > 1) return -1; /* HTTP/1.0 and 1.1 only */
  if (!h->is_request) {
    if (h->status < 100 || h->status > 599) return -1;
    sy_str r = sy_span_str(base, h->reason);
    for (size_t k = 0; k < r.len; k++)
      if (!valid_value_byte((unsigned char)r.p[k])) return -1;
  }
  for (size_t i = 0; i < h->nfields; i++) {
    sy_str n = sy_span_str(base, h->fields[i].name);
    sy_str v = sy_span_str(base, h->fields[i].value);
    if (n.len == 0) return -1;
    for (size_t k = 0; k < n.len; k++)
      if (!is_tchar((unsigned char)n.p[k])) return -1;
    for (size_t k = 0; k < v.len; k++)
      if (!valid_value_byte((unsigned char)v.p[k])) return -1;
    if (h->is_request && sy_str_ieq(n, "host")) {
      hosts++;
      host = &h->fields[i];
    }
    if (sy_str_ieq(n, "transfer-encoding")) {
      has_te = 1;
      sy_list_each(v, keep_last, &te);
    }
  }
  /* Transfer-Encoding must end in chunked, and means nothing in 1.0. */
  if (has_te && (h->minor == 0 || !sy_str_ieq(te.tok, "chunked"))) return -1;
  if (host && !valid_host(sy_span_str(base, host->value))) return -1;
  if (h->is_request && host) {
    /* absolute-form: the authority in the target must be the Host. */
    sy_str t = sy_span_str(base, h->target);
    sy_str auth = sy_target_authority(t, NULL);
    if (auth.p != t.p && !sy_str_ieq2(auth, sy_span_str(base, host->value))) return -1;
  }
  if (h->is_request) {
    /* RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request; two Hosts are
     * how routing and the upstream are made to disagree. */
    if (hosts > 1 || (hosts == 0 && h->major == 1 && h->minor >= 1)) return -1;
  }
  return 0;
}

static int append_str(sy_buf *b, sy_str s) {
  return sy_buf_append(b, s.p, s.len);
}

/* "Name: value\r\n"; a formatted append cost a vsnprintf per header per request. */
static int append_line_kv(sy_buf *out, const char *name_colon_sp, const char *value) {
  int rc = sy_buf_append(out, name_colon_sp, strlen(name_colon_sp));
  rc |= sy_buf_append(out, value, strlen(value));
  return rc | sy_buf_append(out, "\r\n", 2);
}

#define CRLF "\r\n"

static int append_field(sy_buf *out, const char *name, const char *value) {
  int rc = sy_buf_append(out, name, strlen(name));
  rc |= sy_buf_append(out, ": ", 2);
  return rc | append_line_kv(out, "", value);
}

static int append_line(sy_buf *b, const char *base, const sy_field *f) {
  if (f->value.len == 0) {
    /* llhttp reports no value span for an empty or all-blank value; the line
     * still ends at its CR/LF in the buffer, so take the bytes up to there. */
    const char *p = base + f->name.off + f->name.len;
    const char *q = p + 1; /* past the colon */
    while (*q == ' ' || *q == '\t')
      q++;
    return sy_buf_append(b, base + f->name.off, (size_t)(q - (base + f->name.off))) |
           sy_buf_append(b, CRLF, 2);
  }
  return sy_buf_append(b, base + f->line.off, f->line.len) | sy_buf_append(b, CRLF, 2);
}

/* Fields a route's Upgrade needs even though the client's Connection names
 * them (RFC 7540 §3.2: HTTP2-Settings travels with h2c). */
static int needed_by_upgrade(sy_str name, const sy_fwd_opts *o) {
  if (!sy_str_ieq(name, "http2-settings")) return 0;
  for (size_t i = 0; i < o->nupgrades; i++)
    if (sy_str_ieq(o->upgrades[i], "h2c")) return 1;
  return 0;
}

struct ws_filter {
  sy_buf kept;
  const sy_fwd_opts *o;
};

static int ws_keep_tok(sy_str tok, void *arg) {
  struct ws_filter *wf = arg;
  for (size_t i = 0; i < wf->o->nws_protocols; i++) {
    if (sy_str_ieq2(tok, wf->o->ws_protocols[i])) {
      if (wf->kept.len) sy_buf_append(&wf->kept, ", ", 2);
      append_str(&wf->kept, tok);
    }
  }
  return 0;
}

static int append_ws_protocols(sy_buf *out, const sy_head *h, const char *base,
                               const sy_fwd_opts *o) {
  struct ws_filter wf = {{0}, o};
  for (size_t i = 0; i < h->nfields; i++)
    if (sy_str_ieq(sy_span_str(base, h->fields[i].name), "sec-websocket-protocol"))
      sy_list_each(sy_span_str(base, h->fields[i].value), ws_keep_tok, &wf);
  int rc = 0;
  if (wf.kept.len) {
    rc |= sy_buf_append(out, "Sec-WebSocket-Protocol: ", 24);
    rc |= sy_buf_append(out, wf.kept.p, wf.kept.len);
    rc |= sy_buf_append(out, CRLF, 2);
  }
  sy_buf_free(&wf.kept);
  return rc;
}

static int append_target(sy_buf *out, sy_str t, const sy_fwd_opts *o) {
  if (!o->path.p) return append_str(out, t);
  sy_str rest;
  sy_target_authority(t, &rest);
  size_t q = 0;
  while (q < rest.len && rest.p[q] != '?')
    q++;
  int rc = sy_buf_append(out, t.p, (size_t)(rest.p - t.p));
  rc |= append_str(out, o->path);
  rc |= sy_buf_append(out, rest.p + q, rest.len - q);
  return rc;
}

int sy_http_build_request(sy_buf *out, const sy_head *h, const char *base, const sy_fwd_opts *o) {
  int rc = 0;
  rc |= append_str(out, sy_span_str(base, h->method));
  rc |= sy_buf_append(out, " ", 1);
  rc |= append_target(out, sy_span_str(base, h->target), o);
  rc |= sy_buf_append(out, " HTTP/1.1" CRLF, 11);
  const sy_field *host = sy_head_find(h, base, "host");
  int ws_written = 0;
  for (size_t i = 0; i < h->nfields; i++) {
    const sy_field *f = &h->fields[i];
    sy_str name = sy_span_str(base, f->name);
    if (sy_head_is_hop(h, base, name) && !needed_by_upgrade(name, o)) continue;
    if (o->xfproto && sy_str_ieq(name, "x-forwarded-proto")) continue;
    if (o->xfhost && sy_str_ieq(name, "x-forwarded-host")) continue;
    if (o->request_id && sy_str_ieq(name, o->request_id_name)) continue;
    if (o->nupgrades && o->ws_protocols_restricted && sy_str_ieq(name, "sec-websocket-protocol")) {
      /* The route narrows the offers: one line with what survives, where the
       * first offer line stood, so the field keeps its place. */
      if (!ws_written) rc |= append_ws_protocols(out, h, base, o);
      ws_written = 1;
      continue;
    }
    rc |= append_line(out, base, f);
  }
  if (o->nupgrades) {
    rc |= sy_buf_append(out, "Connection: upgrade", 19);
    for (size_t i = 0; i < h->nfields; i++) {
      sy_str name = sy_span_str(base, h->fields[i].name);
      if (needed_by_upgrade(name, o) && sy_head_is_hop(h, base, name)) {
        rc |= sy_buf_append(out, ", ", 2);
        rc |= append_str(out, name);
        break;
      }
    }
    rc |= sy_buf_append(out, CRLF "Upgrade: ", 11);
    for (size_t i = 0; i < o->nupgrades; i++) {
      if (i) rc |= sy_buf_append(out, ", ", 2);
      rc |= append_str(out, o->upgrades[i]);
    }
    rc |= sy_buf_append(out, CRLF, 2);
  }
  if (o->chunked) rc |= sy_buf_append(out, "Transfer-Encoding: chunked" CRLF, 28);
  if (!host && o->default_host) rc |= append_line_kv(out, "Host: ", o->default_host);
  if (o->xff) rc |= append_line_kv(out, "X-Forwarded-For: ", o->client_ip);
  if (o->xfproto) rc |= append_line_kv(out, "X-Forwarded-Proto: ", o->proto);
  if (o->xfhost && host) {
    rc |= sy_buf_append(out, "X-Forwarded-Host: ", 18);
    rc |= append_str(out, sy_span_str(base, host->value));
    rc |= sy_buf_append(out, CRLF, 2);
  }
  if (o->via) rc |= sy_buf_append(out, "Via: 1.1 switchyard" CRLF, 21);
  if (o->request_id) rc |= append_field(out, o->request_id_name, o->request_id);
  rc |= sy_buf_append(out, CRLF, 2);
  return rc ? -1 : 0;
}

int sy_http_build_response(sy_buf *out, const sy_head *h, const char *base, const sy_resp_opts *o) {
  /* The status is three digits (the parser accepts no other). */
  char line[13] = "HTTP/1.1 000 ";
  unsigned st = h->status < 1000 ? (unsigned)h->status : 999;
  line[9] = (char)('0' + st / 100);
  line[10] = (char)('0' + st / 10 % 10);
  line[11] = (char)('0' + st % 10);
  int rc = sy_buf_append(out, line, sizeof(line));
  rc |= append_str(out, sy_span_str(base, h->reason));
  rc |= sy_buf_append(out, CRLF, 2);
  const sy_field *upgrade = NULL;
  for (size_t i = 0; i < h->nfields; i++) {
    const sy_field *f = &h->fields[i];
    sy_str name = sy_span_str(base, f->name);
    if (o->upgrade && !upgrade && sy_str_ieq(name, "upgrade")) upgrade = f;
    /* RFC 9110 §15.5.22: a 426 names the protocols it wants in Upgrade; the
     * client needs that line, so it passes. */
    if (h->status == 426 && sy_str_ieq(name, "upgrade")) {
      rc |= append_line(out, base, f);
      continue;
    }
    if (sy_head_is_hop(h, base, name)) continue;
    rc |= append_line(out, base, f);
  }
  if (o->upgrade) {
    rc |= sy_buf_append(out, "Connection: upgrade" CRLF, 21);
    if (upgrade) rc |= append_line(out, base, upgrade);
  }
  if (o->chunked) rc |= sy_buf_append(out, "Transfer-Encoding: chunked" CRLF, 28);
  if (o->conn_close)
    rc |= sy_buf_append(out, "Connection: close" CRLF, 19);
  else if (o->keep_alive10)
    rc |= sy_buf_append(out, "Connection: keep-alive" CRLF, 24);
  if (o->via) rc |= sy_buf_append(out, "Via: 1.1 switchyard" CRLF, 21);
  if (o->request_id && !sy_head_find(h, base, o->request_id_name))
    rc |= append_field(out, o->request_id_name, o->request_id);
  rc |= sy_buf_append(out, CRLF, 2);
  return rc ? -1 : 0;
}

const char *sy_http_reason(int status) {
  switch (status) {
  case 101:
    return "Switching Protocols";
  case 400:
    return "Bad Request";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 413:
    return "Content Too Large";
  case 426:
    return "Upgrade Required";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  default:
    return "Error";
  }
}

static const char *error_body(int status) {
  switch (status) {
  case 400:
    return "bad request: the request is not valid HTTP/1.1\n";
  case 404:
    return "no route matches this request\n";
  case 405:
    return "method not allowed on this proxy\n";
  case 408:
    return "request head not received in time\n";
  case 431:
    return "request head too large\n";
  case 502:
    return "bad gateway: the upstream failed or answered invalidly\n";
  case 503:
    return "no upstream server available\n";
  case 504:
    return "gateway timeout: the upstream did not answer in time\n";
  default:
    return "error\n";
  }
}

int sy_http_error(sy_buf *out, int status, int close, const char *extra_headers) {
  const char *body = error_body(status);
  return sy_buf_appendf(out,
                        "HTTP/1.1 %d %s" CRLF "Content-Type: text/plain; charset=utf-8" CRLF
                        "Content-Length: %zu" CRLF "%s%s" CRLF "%s",
                        status, sy_http_reason(status), strlen(body),
                        close ? "Connection: close" CRLF : "", extra_headers ? extra_headers : "",
                        body);
}

int sy_http_426_tls(sy_buf *out, int close) {
  static const char body[] =
      "<!DOCTYPE html>\n<html><head><title>426 Upgrade Required</title></head><body>\n"
      "<h1>426 Upgrade Required</h1>\n<p>This resource is only served over TLS. Reconnect "
      "with https://, or upgrade this connection in place (RFC 2817) by sending the request "
      "with <code>Upgrade: TLS/1.2</code> and <code>Connection: Upgrade</code>.</p>\n"
      "</body></html>\n";
  return sy_buf_appendf(out,
                        "HTTP/1.1 426 Upgrade Required" CRLF "Upgrade: TLS/1.2, HTTP/1.1" CRLF
                        "Connection: Upgrade%s" CRLF "Content-Type: text/html; charset=utf-8" CRLF
                        "Content-Length: %zu" CRLF CRLF "%s",
                        close ? ", close" : "", sizeof(body) - 1, body);
}

void sy_ws_accept(sy_str key, char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha1(), NULL);
  EVP_DigestUpdate(ctx, key.p, key.len);
  EVP_DigestUpdate(ctx, guid, sizeof(guid) - 1);
  EVP_DigestFinal_ex(ctx, md, &mdlen);
  EVP_MD_CTX_free(ctx);
  EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
}

int sy_http_method_idempotent(const char *method) {
  static const char *const m[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", NULL};
  for (const char *const *p = m; *p; p++)
    if (strcmp(method, *p) == 0) return 1;
  return 0;
}

int sy_http_cookie(sy_str v, const char *name, sy_str *out) {
  size_t nl = strlen(name);
  for (size_t p = 0; p + nl < v.len; p++) {
    if ((p == 0 || v.p[p - 1] == ' ' || v.p[p - 1] == ';') && memcmp(v.p + p, name, nl) == 0 &&
        v.p[p + nl] == '=') {
      size_t e = p + nl + 1;
      while (e < v.len && v.p[e] != ';')
        e++;
      *out = (sy_str){v.p + p + nl + 1, e - p - nl - 1};
      return 1;
    }
  }
  return 0;
}

static int first_tok(sy_str tok, void *arg) {
  *(sy_str *)arg = tok;
  return 1;
}

int sy_http_switch_ok(const sy_head *h, const char *base, const sy_str *offered, size_t noffered,
                      const char *ws_key, sy_str *chosen) {
  const sy_field *up = sy_head_find(h, base, "upgrade");
  if (!up) return 0;
  sy_str tok = {0};
  sy_list_each(sy_span_str(base, up->value), first_tok, &tok);
  size_t i = 0;
  while (i < noffered && !(tok.len && sy_str_ieq2(offered[i], tok)))
    i++;
  if (i == noffered) return 0;
  *chosen = tok;
  if (ws_key && sy_str_ieq(tok, "websocket")) {
    const sy_field *acc = sy_head_find(h, base, "sec-websocket-accept");
    if (!ws_key[0]) return 0;
    char want[29];
    sy_ws_accept((sy_str){ws_key, strlen(ws_key)}, want);
    if (!acc || acc->value.len != 28 || memcmp(base + acc->value.off, want, 28) != 0) return 0;
  }
  return 1;
}

static int b64_index(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

static sy_str trim_ows(sy_str v) {
  while (v.len && (v.p[0] == ' ' || v.p[0] == '\t')) {
    v.p++;
    v.len--;
  }
  while (v.len && (v.p[v.len - 1] == ' ' || v.p[v.len - 1] == '\t'))
    v.len--;
  return v;
}

/* 16 bytes are 22 base64 digits and "==": the 22nd digit carries 2 bits, its
 * 4 low bits must be zero or the text is not what an encoder writes. */
static int ws_key_ok(sy_str k) {
  if (k.len != 24 || k.p[22] != '=' || k.p[23] != '=') return 0;
  for (size_t i = 0; i < 22; i++)
    if (b64_index((unsigned char)k.p[i]) < 0) return 0;
  return (b64_index((unsigned char)k.p[21]) & 15) == 0;
}

sy_ws_check sy_ws_check_request(const sy_head *h, const char *base) {
  const sy_field *key = NULL, *ver = NULL;
  int nkeys = 0, nvers = 0;
  for (size_t i = 0; i < h->nfields; i++) {
    sy_str name = sy_span_str(base, h->fields[i].name);
    if (sy_str_ieq(name, "sec-websocket-key")) {
      key = &h->fields[i];
      nkeys++;
    } else if (sy_str_ieq(name, "sec-websocket-version")) {
      ver = &h->fields[i];
      nvers++;
    }
  }
  if (!nkeys) return SY_WS_KEY_MISSING;
  if (nkeys > 1) return SY_WS_KEY_DUPLICATE;
  if (!ws_key_ok(trim_ows(sy_span_str(base, key->value)))) return SY_WS_KEY_MALFORMED;
  if (!nvers) return SY_WS_VERSION_MISSING;
  sy_str v = trim_ows(sy_span_str(base, ver->value));
  if (nvers > 1 || v.len != 2 || memcmp(v.p, "13", 2) != 0) return SY_WS_VERSION_UNSUPPORTED;
  return SY_WS_OK;
}

const char *sy_ws_check_str(sy_ws_check r) {
  switch (r) {
  case SY_WS_OK:
    return "ok";
  case SY_WS_KEY_MISSING:
    return "key_missing";
  case SY_WS_KEY_DUPLICATE:
    return "key_duplicate";
  case SY_WS_KEY_MALFORMED:
    return "key_malformed";
  case SY_WS_VERSION_MISSING:
    return "version_missing";
  case SY_WS_VERSION_UNSUPPORTED:
    return "version_unsupported";
  }
  return "?";
}
