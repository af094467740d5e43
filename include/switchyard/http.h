/* HTTP/1.1 message heads: collection from llhttp callbacks and the rewriting a
 * proxy owes both directions (RFC 9110 §7.6.1 hop-by-hop rules, forwarding
 * fields, re-framing). Pure functions over byte spans: no I/O. */
#ifndef SWITCHYARD_HTTP_H
#define SWITCHYARD_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "switchyard/base.h"

/* A span stored as an offset into the buffer the head was read into, so the
 * head survives the buffer being appended to; resolved with sy_span_str(). */
typedef struct sy_span {
  uint32_t off, len;
} sy_span;

typedef struct sy_field {
  sy_span name, value;
  sy_span line; /* from the first byte of the name to the last of the value */
} sy_field;

typedef struct sy_head {
  int is_request;
  sy_span method, target, reason;
  int status;
  uint8_t major, minor;
  sy_field *fields;
  size_t nfields, cap;
  size_t max_fields; /* collection refuses more (-> 431) */
  int in_value;      /* last span callback was a value */
  int too_many;
} sy_head;

void sy_head_init(sy_head *h, int is_request, size_t max_fields);
void sy_head_reset(sy_head *h); /* keeps the field array for reuse */
void sy_head_free(sy_head *h);
/* Span callbacks: `off` is the offset of the bytes in the buffer. 0 or -1. */
int sy_head_on_field(sy_head *h, uint32_t off, uint32_t len);
int sy_head_on_value(sy_head *h, uint32_t off, uint32_t len);
void sy_span_extend(sy_span *s, uint32_t off, uint32_t len);

static inline sy_str sy_span_str(const char *base, sy_span s) {
  sy_str r = {base + s.off, s.len};
  return r;
}

/* Calls fn for each comma-separated token of a list field value (trimmed, empty
 * elements skipped); stops early when fn returns non-zero and returns that. */
int sy_list_each(sy_str value, int (*fn)(sy_str tok, void *arg), void *arg);
/* An absolute-form request target ("http://host/path"): its authority
 * (len 0 for any other form) and, in *rest, what follows it. */
sy_str sy_target_authority(sy_str target, sy_str *rest);

/* Does any field `name` list `token` (case-insensitive)? */
int sy_head_lists(const sy_head *h, const char *base, const char *name, const char *token);
/* The Upgrade tokens a request offers (at most max, in order), when it is an
 * upgrade request at all: HTTP/1.1 or later, Connection lists "upgrade" and
 * Upgrade is present. 0 otherwise. */
size_t sy_head_upgrade_offers(const sy_head *h, const char *base, sy_str *out, size_t max);
/* First field named `name`, or NULL. */
const sy_field *sy_head_find(const sy_head *h, const char *base, const char *name);

/* Is `name` hop-by-hop for this head: one of the fixed set or named by a
 * Connection field? */
int sy_head_is_hop(const sy_head *h, const char *base, sy_str name);

/* Field names are tokens, values hold no CTL but HTAB, and a request has
 * exactly one Host (none allowed for HTTP/1.0). 0 valid, -1 invalid. */
int sy_head_validate(const sy_head *h, const char *base);

/* Raw head scanner, run over a head's bytes before llhttp sees them: it
 * refuses what llhttp would let through but a peer could read differently —
 * bare LF, bare CR, obs-fold (a line starting with SP/HTAB) and NUL. */
typedef struct sy_headscan {
  uint8_t prev;       /* last byte seen */
  uint8_t line_start; /* the next byte starts a line */
  uint8_t first_line; /* still before the end of the start line */
  uint8_t done;       /* the empty line ending the head was seen */
} sy_headscan;

void sy_headscan_init(sy_headscan *s);
/* Scans n more bytes. Returns -1 on a violation, 1 when the head ended
 * (*used = bytes of p that belong to it), 0 when more is needed. */
int sy_headscan_run(sy_headscan *s, const char *p, size_t n, size_t *used);

typedef struct sy_fwd_opts {
  int xff, xfproto, xfhost, via; /* forwarding switches */
  const char *client_ip;         /* for X-Forwarded-For */
  const char *proto;             /* "http" | "https" */
  const char *default_host;      /* Host to send when the client (HTTP/1.0) sent none */
  int chunked;                   /* body re-framed as chunked: add Transfer-Encoding */
  /* Upgrade tokens to forward (already filtered by the route), in the client's
   * order; none -> plain request without Upgrade/Connection. */
  const sy_str *upgrades;
  size_t nupgrades;
  /* Sec-WebSocket-Protocol offers to keep when the route restricts them
   * (NULL = keep the client's lines as they are). */
  const sy_str *ws_protocols;
  size_t nws_protocols;
  int ws_protocols_restricted;
  /* The path the route matched (normalised), sent in place of the target's
   * path part so the upstream acts on what was checked; the query ('?' on)
   * and an absolute-form's scheme and authority are kept as sent.
   * .p == NULL: the target goes as sent. */
  sy_str path;
  /* forwarding.request_id: the client's fields named request_id_name are
   * dropped and "request_id_name: request_id" is added (NULL = leave as is). */
  const char *request_id_name, *request_id;
} sy_fwd_opts;

/* The request head the upstream gets. */
int sy_http_build_request(sy_buf *out, const sy_head *h, const char *base, const sy_fwd_opts *o);

typedef struct sy_resp_opts {
  int via;
  int chunked;      /* add Transfer-Encoding: chunked (re-framed body) */
  int conn_close;   /* add Connection: close */
  int keep_alive10; /* HTTP/1.0 client keeps alive: add Connection: keep-alive */
  int upgrade;      /* a 101 being relayed: Connection: upgrade + the Upgrade field */
  /* forwarding.request_id: "request_id_name: request_id" is added unless the
   * upstream's response has a field of that name (NULL = nothing added). */
  const char *request_id_name, *request_id;
} sy_resp_opts;

/* The response head the client gets. */
int sy_http_build_response(sy_buf *out, const sy_head *h, const char *base, const sy_resp_opts *o);

/* A complete short error response (status line, Content-Type, Content-Length,
 * optional Connection: close, body). */
int sy_http_error(sy_buf *out, int status, int close, const char *extra_headers);
const char *sy_http_reason(int status);

/* RFC 2817 §4.2: the server demands TLS on this connection. */
int sy_http_426_tls(sy_buf *out, int close);

/* Sec-WebSocket-Accept for a key: base64(SHA-1(key + GUID)); out >= 29 bytes. */
void sy_ws_accept(sy_str key, char out[29]);

/* RFC 9110 §9.2.2: may the request be sent again after a failure? */
int sy_http_method_idempotent(const char *method);

/* The value of cookie `name` in one Cookie field value: 1 and *out, or 0. */
int sy_http_cookie(sy_str value, const char *name, sy_str *out);

/* Is this 101 response one the proxy may turn into a tunnel? Its Upgrade
 * must name (first) one of the `offered` tokens; with `ws_key` (NULL: not
 * checked; "": checked, but the request had no usable key) a websocket
 * switch must also carry the matching Sec-WebSocket-Accept. 1 with the token
 * in *chosen, or 0: the "fake 101" smuggling class, answered 502. */
int sy_http_switch_ok(const sy_head *h, const char *base, const sy_str *offered, size_t noffered,
                      const char *ws_key, sy_str *chosen);

/* RFC 6455 §4.2.1 checks of a WebSocket opening request, for routes that
 * verify the handshake (websocket.check_accept): exactly one
 * Sec-WebSocket-Key whose value is the base64 of 16 bytes (24 characters,
 * canonical, "==" padded), and exactly one Sec-WebSocket-Version of 13. */
typedef enum sy_ws_check {
  SY_WS_OK = 0,
  SY_WS_KEY_MISSING,
  SY_WS_KEY_DUPLICATE,
  SY_WS_KEY_MALFORMED,
  SY_WS_VERSION_MISSING,
  SY_WS_VERSION_UNSUPPORTED, /* other value, or more than one field */
} sy_ws_check;

/* The key is checked first. Any result but SY_WS_OK is answered 400 before
 * anything goes upstream; the two version results carry
 * "Sec-WebSocket-Version: 13" (RFC 6455 §4.4). */
sy_ws_check sy_ws_check_request(const sy_head *h, const char *base);
/* Short text for logs and metrics labels ("key_missing", ...). */
const char *sy_ws_check_str(sy_ws_check r);

#endif
