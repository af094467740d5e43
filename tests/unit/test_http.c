/* Head rewriting: hop-by-hop removal, forwarding fields, upgrade heads,
 * response heads, error responses, the WebSocket accept key. */
#include <check.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/http.h"

typedef struct parsed {
  char *base;
  sy_head head;
} parsed;

static int on_method(llhttp_t *p, const char *at, size_t n) {
  parsed *ps = p->data;
  sy_span_extend(&ps->head.method, (uint32_t)(at - ps->base), (uint32_t)n);
  return 0;
}
static int on_url(llhttp_t *p, const char *at, size_t n) {
  parsed *ps = p->data;
  sy_span_extend(&ps->head.target, (uint32_t)(at - ps->base), (uint32_t)n);
  return 0;
}
static int on_status(llhttp_t *p, const char *at, size_t n) {
  parsed *ps = p->data;
  sy_span_extend(&ps->head.reason, (uint32_t)(at - ps->base), (uint32_t)n);
  return 0;
}
static int on_field(llhttp_t *p, const char *at, size_t n) {
  parsed *ps = p->data;
  return sy_head_on_field(&ps->head, (uint32_t)(at - ps->base), (uint32_t)n);
}
static int on_value(llhttp_t *p, const char *at, size_t n) {
  parsed *ps = p->data;
  return sy_head_on_value(&ps->head, (uint32_t)(at - ps->base), (uint32_t)n);
}
static int on_done(llhttp_t *p) {
  parsed *ps = p->data;
  ps->head.major = p->http_major;
  ps->head.minor = p->http_minor;
  ps->head.status = p->status_code;
  return HPE_PAUSED;
}

static void parse(parsed *ps, const char *raw, int request) {
  static llhttp_settings_t st;
  llhttp_settings_init(&st);
  st.on_method = on_method;
  st.on_url = on_url;
  st.on_status = on_status;
  st.on_header_field = on_field;
  st.on_header_value = on_value;
  st.on_headers_complete = on_done;
  ps->base = strdup(raw);
  sy_head_init(&ps->head, request, 100);
  llhttp_t p;
  llhttp_init(&p, request ? HTTP_REQUEST : HTTP_RESPONSE, &st);
  p.data = ps;
  ck_assert_int_eq(llhttp_execute(&p, ps->base, strlen(ps->base)), HPE_PAUSED);
}

static void done(parsed *ps) {
  sy_head_free(&ps->head);
  free(ps->base);
}

static sy_fwd_opts plain_opts(void) {
  sy_fwd_opts o = {
      .xff = 1, .xfproto = 1, .xfhost = 1, .via = 1, .client_ip = "10.1.2.3", .proto = "http"};
  return o;
}

static void expect_request(const char *raw, const sy_fwd_opts *o, const char *want) {
  parsed ps;
  parse(&ps, raw, 1);
  sy_buf out = {0};
  ck_assert_int_eq(sy_http_build_request(&out, &ps.head, ps.base, o), 0);
  ck_assert_uint_eq(out.len, strlen(want));
  ck_assert_mem_eq(out.p, want, out.len);
  sy_buf_free(&out);
  done(&ps);
}

START_TEST(hop_by_hop_removed_order_kept) {
  sy_fwd_opts o = plain_opts();
  expect_request(
      "GET /a?b HTTP/1.1\r\nhost: x.test\r\nX-B:  2 \r\nConnection: keep-alive, X-Secret\r\n"
      "X-Secret: s\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\n"
      "Trailer: X-T\r\nUpgrade: websocket\r\nX-A: 1\r\nX-B: 3\r\nconnection: x-other\r\n"
      "X-Other: o\r\n\r\n",
      &o,
      "GET /a?b HTTP/1.1\r\nhost: x.test\r\nX-B:  2 \r\nX-A: 1\r\nX-B: 3\r\n"
      "X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\n"
      "X-Forwarded-Host: x.test\r\nVia: 1.1 switchyard\r\n\r\n");
}
END_TEST

START_TEST(forwarding_fields_switchable) {
  sy_fwd_opts o = {.client_ip = "1.2.3.4", .proto = "http"};
  expect_request("POST / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 9.9.9.9\r\nX-Forwarded-Proto: "
                 "https\r\nVia: 1.0 other\r\n\r\n",
                 &o,
                 "POST / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 9.9.9.9\r\nX-Forwarded-Proto: "
                 "https\r\nVia: 1.0 other\r\n\r\n");
  o = plain_opts();
  expect_request("POST / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 9.9.9.9\r\nX-Forwarded-Proto: "
                 "https\r\nX-Forwarded-Host: evil\r\nVia: 1.0 other\r\n\r\n",
                 &o,
                 "POST / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 9.9.9.9\r\nVia: 1.0 other\r\n"
                 "X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
                 "Via: 1.1 switchyard\r\n\r\n");
}
END_TEST

START_TEST(chunked_reframed) {
  sy_fwd_opts o = {.chunked = 1, .client_ip = "x", .proto = "http"};
  expect_request("PUT /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n", &o,
                 "PUT /u HTTP/1.1\r\nHost: h\r\nX: y\r\nTransfer-Encoding: chunked\r\n\r\n");
}
END_TEST

START_TEST(upgrade_head) {
  sy_str toks[] = {{"websocket", 9}};
  sy_fwd_opts o = {.client_ip = "x", .proto = "http", .upgrades = toks, .nupgrades = 1};
  expect_request(
      "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
      "Upgrade: websocket, foo/2\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Extensions: a\r\n"
      "Sec-WebSocket-Extensions: b\r\n\r\n",
      &o,
      "GET /ws HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Extensions: "
      "a\r\nSec-WebSocket-Extensions: b\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
}
END_TEST

START_TEST(h2c_keeps_http2_settings) {
  sy_str toks[] = {{"h2c", 3}};
  sy_fwd_opts o = {.client_ip = "x", .proto = "http", .upgrades = toks, .nupgrades = 1};
  expect_request("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                 "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
                 &o,
                 "GET / HTTP/1.1\r\nHost: h\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
                 "Connection: upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n");
  /* Without h2c forwarded, the field the client's Connection named goes. */
  sy_str ws[] = {{"websocket", 9}};
  o.upgrades = ws;
  expect_request("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                 "Upgrade: websocket\r\nHTTP2-Settings: AA\r\n\r\n",
                 &o,
                 "GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
}
END_TEST

START_TEST(subprotocols_restricted) {
  sy_str toks[] = {{"websocket", 9}};
  sy_str keep[] = {{"chat", 4}, {"superchat", 9}};
  sy_fwd_opts o = {.client_ip = "x",
                   .proto = "http",
                   .upgrades = toks,
                   .nupgrades = 1,
                   .ws_protocols = keep,
                   .nws_protocols = 2,
                   .ws_protocols_restricted = 1};
  expect_request(
      "GET / HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Protocol: evil, chat\r\nX: 1\r\n"
      "Sec-WebSocket-Protocol: superchat\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
      &o,
      "GET / HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Protocol: chat, superchat\r\nX: 1\r\n"
      "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n");
}
END_TEST

START_TEST(response_head) {
  parsed ps;
  parse(&ps,
        "HTTP/1.1 200 Fine Thanks\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nSet-Cookie: a\r\n"
        "Transfer-Encoding: chunked\r\nSet-Cookie: b\r\nKeep-Alive: 1\r\n\r\n",
        0);
  sy_resp_opts o = {.via = 1, .chunked = 1, .conn_close = 1};
  sy_buf out = {0};
  ck_assert_int_eq(sy_http_build_response(&out, &ps.head, ps.base, &o), 0);
  const char *want =
      "HTTP/1.1 200 Fine Thanks\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n"
      "Transfer-Encoding: chunked\r\nConnection: close\r\nVia: 1.1 switchyard\r\n\r\n";
  ck_assert_uint_eq(out.len, strlen(want));
  ck_assert_mem_eq(out.p, want, out.len);
  sy_buf_free(&out);
  done(&ps);
}
END_TEST

START_TEST(switching_head) {
  parsed ps;
  parse(&ps,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: abc\r\n\r\n",
        0);
  sy_resp_opts o = {.upgrade = 1};
  sy_buf out = {0};
  ck_assert_int_eq(sy_http_build_response(&out, &ps.head, ps.base, &o), 0);
  const char *want = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\n"
                     "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n";
  ck_assert_uint_eq(out.len, strlen(want));
  ck_assert_mem_eq(out.p, want, out.len);
  sy_buf_free(&out);
  done(&ps);
}
END_TEST

START_TEST(validation) {
  const char *bad[] = {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                       "GET / HTTP/1.1\r\nX: y\r\n\r\n"};
  for (size_t i = 0; i < 2; i++) {
    parsed ps;
    parse(&ps, bad[i], 1);
    ck_assert_int_eq(sy_head_validate(&ps.head, ps.base), -1);
    done(&ps);
  }
  parsed ok;
  parse(&ok, "GET / HTTP/1.0\r\nX: y\r\n\r\n", 1);
  ck_assert_int_eq(sy_head_validate(&ok.head, ok.base), 0);
  done(&ok);
}
END_TEST

START_TEST(list_and_lookup) {
  parsed ps;
  parse(&ps,
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nconnection: , UPGRADE \r\n\r\n", 1);
  ck_assert(sy_head_lists(&ps.head, ps.base, "connection", "upgrade"));
  ck_assert(!sy_head_lists(&ps.head, ps.base, "connection", "close"));
  ck_assert(sy_head_is_hop(&ps.head, ps.base, (sy_str){"UPGRADE", 7}));
  ck_assert(!sy_head_is_hop(&ps.head, ps.base, (sy_str){"Host", 4}));
  ck_assert_ptr_nonnull(sy_head_find(&ps.head, ps.base, "HOST"));
  done(&ps);
}
END_TEST

START_TEST(error_response) {
  sy_buf b = {0};
  ck_assert_int_eq(sy_http_error(&b, 431, 1, NULL), 0);
  ck_assert(b.len > 40);
  ck_assert_mem_eq(b.p, "HTTP/1.1 431 Request Header Fields Too Large\r\n", 46);
  ck_assert_ptr_nonnull(memmem(b.p, b.len, "\r\nConnection: close\r\n", 21));
  const char *body = memmem(b.p, b.len, "\r\n\r\n", 4) + 4;
  char cl[64];
  snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", (size_t)(b.p + b.len - body));
  ck_assert_ptr_nonnull(memmem(b.p, b.len, cl, strlen(cl)));
  sy_buf_free(&b);
}
END_TEST

START_TEST(ws_accept_rfc6455_example) {
  char out[29];
  sy_ws_accept((sy_str){"dGhlIHNhbXBsZSBub25jZQ==", 24}, out);
  ck_assert_str_eq(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}
END_TEST

START_TEST(path_replaced_query_kept) {
  sy_fwd_opts o = {.client_ip = "x", .proto = "http"};
  o.path = (sy_str){"/admin/secret", 13};
  expect_request("GET /x/../admin/secret?a=/../b&c HTTP/1.1\r\nHost: h\r\n\r\n", &o,
                 "GET /admin/secret?a=/../b&c HTTP/1.1\r\nHost: h\r\n\r\n");
  expect_request("GET //admin/secret HTTP/1.1\r\nHost: h\r\n\r\n", &o,
                 "GET /admin/secret HTTP/1.1\r\nHost: h\r\n\r\n");
  expect_request("GET /%61dmin/secret? HTTP/1.1\r\nHost: h\r\n\r\n", &o,
                 "GET /admin/secret? HTTP/1.1\r\nHost: h\r\n\r\n");
  /* absolute-form: scheme and authority kept, only the path replaced */
  expect_request("GET http://h/a/./%62?q HTTP/1.1\r\nHost: h\r\n\r\n",
                 &(sy_fwd_opts){.path = {"/a/b", 4}},
                 "GET http://h/a/b?q HTTP/1.1\r\nHost: h\r\n\r\n");
  expect_request("GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n", &(sy_fwd_opts){.path = {"/", 1}},
                 "GET http://h/?q HTTP/1.1\r\nHost: h\r\n\r\n");
  /* no replacement: the target as sent, unnormalised */
  expect_request("GET //a/../b?%7e HTTP/1.1\r\nHost: h\r\n\r\n", &(sy_fwd_opts){0},
                 "GET //a/../b?%7e HTTP/1.1\r\nHost: h\r\n\r\n");
}
END_TEST

static sy_ws_check ws_check(const char *fields) {
  char raw[40000];
  snprintf(raw, sizeof raw,
           "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n%s\r\n",
           fields);
  parsed ps;
  parse(&ps, raw, 1);
  sy_ws_check r = sy_ws_check_request(&ps.head, ps.base);
  done(&ps);
  return r;
}

#define KEY "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
#define V13 "Sec-WebSocket-Version: 13\r\n"

START_TEST(ws_request_checks) {
  ck_assert_int_eq(ws_check(KEY V13), SY_WS_OK);
  ck_assert_int_eq(ws_check("sec-websocket-version: 13\r\nsec-websocket-key: "
                            "AAAAAAAAAAAAAAAAAAAAAA==  \r\n"),
                   SY_WS_OK);
  ck_assert_int_eq(ws_check("Sec-WebSocket-Key: ++++++++++++++++++++/w==\r\n" V13), SY_WS_OK);
  ck_assert_int_eq(ws_check(V13), SY_WS_KEY_MISSING);
  ck_assert_int_eq(ws_check(KEY KEY V13), SY_WS_KEY_DUPLICATE);
  ck_assert_int_eq(ws_check(KEY "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n" V13),
                   SY_WS_KEY_DUPLICATE);
  static const char *const bad[] = {
      "",                                                   /* empty */
      "dGhlIHNhbXBsZSBub25jZQ=",                            /* 23 */
      "dGhlIHNhbXBsZSBub25jZQ===",                          /* 25 */
      "dGhlIHNhbXBsZSBub25jZQAA",                           /* 18 bytes, no padding */
      "dGhlIHNhbXBsZSBub25jZR==",                           /* R: non-zero pad bits */
      "dGhlIHNhbXBsZSBub25j*Q==",                           /* not base64 */
      "dGhlIHNhbXBsZSBub25jZ==Q",                           /* padding in the middle */
      "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==", /* a list in one line */
      "dGhlIHNhbXB sZSBub25jZQ==",                          /* inner space */
      "dGhlIHNhbXBsZSBub25jZQ",                             /* no padding */
      "dGhlIHNhbXBsZSBub25jZQ-_",                           /* base64url alphabet */
  };
  char f[200];
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    snprintf(f, sizeof f, "Sec-WebSocket-Key: %s\r\n" V13, bad[i]);
    ck_assert_msg(ws_check(f) == SY_WS_KEY_MALFORMED, "key \"%s\" accepted", bad[i]);
  }
  /* a 30 KB key */
  static char big[31000];
  strcpy(big, "Sec-WebSocket-Key: ");
  memset(big + strlen(big), 'A', 30000);
  strcat(big, "==\r\n" V13);
  ck_assert_int_eq(ws_check(big), SY_WS_KEY_MALFORMED);
  ck_assert_int_eq(ws_check(KEY), SY_WS_VERSION_MISSING);
  ck_assert_int_eq(ws_check(KEY "Sec-WebSocket-Version: 8\r\n"), SY_WS_VERSION_UNSUPPORTED);
  ck_assert_int_eq(ws_check(KEY "Sec-WebSocket-Version: 13, 8\r\n"), SY_WS_VERSION_UNSUPPORTED);
  ck_assert_int_eq(ws_check(KEY "Sec-WebSocket-Version: 130\r\n"), SY_WS_VERSION_UNSUPPORTED);
  ck_assert_int_eq(ws_check(KEY V13 V13), SY_WS_VERSION_UNSUPPORTED);
  /* the key is judged first */
  ck_assert_int_eq(ws_check("Sec-WebSocket-Version: 8\r\n"), SY_WS_KEY_MISSING);
  ck_assert_str_eq(sy_ws_check_str(SY_WS_KEY_MALFORMED), "key_malformed");
  ck_assert_str_eq(sy_ws_check_str(SY_WS_VERSION_UNSUPPORTED), "version_unsupported");
}
END_TEST

/* Moved out of the connection code: which methods may be retried once on a
 * fresh connection after a stale pooled one failed. */
START_TEST(idempotent_methods) {
  const char *yes[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
  const char *no[] = {"POST", "PATCH", "CONNECT", "get", ""};
  for (size_t i = 0; i < sizeof(yes) / sizeof(*yes); i++)
    ck_assert_int_eq(sy_http_method_idempotent(yes[i]), 1);
  for (size_t i = 0; i < sizeof(no) / sizeof(*no); i++)
    ck_assert_int_eq(sy_http_method_idempotent(no[i]), 0);
}
END_TEST

static int cookie(const char *v, const char *name, char *out) {
  sy_str r;
  if (!sy_http_cookie((sy_str){v, strlen(v)}, name, &r)) return 0;
  memcpy(out, r.p, r.len);
  out[r.len] = 0;
  return 1;
}

START_TEST(cookie_scan) {
  char v[64];
  ck_assert(cookie("sid=abc", "sid", v) && strcmp(v, "abc") == 0);
  ck_assert(cookie("a=1; sid=xyz; b=2", "sid", v) && strcmp(v, "xyz") == 0);
  ck_assert(cookie("a=1;sid=", "sid", v) && strcmp(v, "") == 0);
  ck_assert(!cookie("xsid=1", "sid", v)); /* a longer name is another cookie */
  ck_assert(!cookie("sidx=1", "sid", v));
  ck_assert(!cookie("a=1; sid", "sid", v)); /* no '=': no value */
  ck_assert(!cookie("", "sid", v));
}
END_TEST

static int switch_ok(const char *resp_fields, const char *ws_key, char *chosen_out) {
  char raw[1024];
  snprintf(raw, sizeof raw, "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n%s\r\n",
           resp_fields);
  parsed ps;
  parse(&ps, raw, 0);
  sy_str offered[] = {{"websocket", 9}, {"foo/2", 5}};
  sy_str chosen = {0};
  int ok = sy_http_switch_ok(&ps.head, ps.base, offered, 2, ws_key, &chosen);
  if (ok && chosen_out) {
    memcpy(chosen_out, chosen.p, chosen.len);
    chosen_out[chosen.len] = 0;
  }
  done(&ps);
  return ok;
}

/* The "fake 101" class: a 101 naming a token the client did not offer, or
 * a WebSocket switch whose accept does not match the key, is no tunnel. */
START_TEST(switch_acceptable) {
  const char *key = "dGhlIHNhbXBsZSBub25jZQ==", *acc = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
  char f[256], chosen[32];
  ck_assert(switch_ok("Upgrade: WebSocket\r\n", NULL, chosen) && strcmp(chosen, "WebSocket") == 0);
  ck_assert(switch_ok("Upgrade: foo/2\r\n", NULL, chosen) && strcmp(chosen, "foo/2") == 0);
  ck_assert(!switch_ok("Upgrade: h2c\r\n", NULL, NULL));
  ck_assert(!switch_ok("Upgrade: foo/3, websocket\r\n", NULL, NULL)); /* the first token counts */
  ck_assert(!switch_ok("X: y\r\n", NULL, NULL));
  snprintf(f, sizeof f, "Upgrade: websocket\r\nSec-WebSocket-Accept: %s\r\n", acc);
  ck_assert(switch_ok(f, key, NULL));
  ck_assert(!switch_ok(f, "", NULL)); /* checked, but the request had no usable key */
  ck_assert(!switch_ok(
      "Upgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n", key, NULL));
  ck_assert(!switch_ok("Upgrade: websocket\r\n", key, NULL));
  ck_assert(switch_ok("Upgrade: foo/2\r\n", key, NULL)); /* the accept is WebSocket's only */
}
END_TEST

int main(void) {
  Suite *s = suite_create("http");
  TCase *tc = tcase_create("rewrite");
  tcase_add_test(tc, hop_by_hop_removed_order_kept);
  tcase_add_test(tc, forwarding_fields_switchable);
  tcase_add_test(tc, chunked_reframed);
  tcase_add_test(tc, upgrade_head);
  tcase_add_test(tc, h2c_keeps_http2_settings);
  tcase_add_test(tc, subprotocols_restricted);
  tcase_add_test(tc, response_head);
  tcase_add_test(tc, switching_head);
  tcase_add_test(tc, validation);
  tcase_add_test(tc, list_and_lookup);
  tcase_add_test(tc, error_response);
  tcase_add_test(tc, ws_accept_rfc6455_example);
  tcase_add_test(tc, path_replaced_query_kept);
  tcase_add_test(tc, ws_request_checks);
  tcase_add_test(tc, idempotent_methods);
  tcase_add_test(tc, cookie_scan);
  tcase_add_test(tc, switch_acceptable);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
