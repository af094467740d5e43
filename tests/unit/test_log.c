/* Diagnostics levels, the rate-limited log, and the access log's JSON
 * writer: whatever bytes go in, a valid JSON string comes out, with valid
 * UTF-8 kept as it is. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "switchyard/log.h"

static char *esc(const char *s, size_t n) {
  sy_buf b = {0};
  sy_json_str(&b, "k", s, n, 0);
  sy_buf_append(&b, "", 1);
  return b.p;
}

#define ESC_EQ(in, want)                                                                           \
  do {                                                                                             \
    char *got_ = esc(in, sizeof(in) - 1);                                                          \
    ck_assert_str_eq(got_, "\"k\":\"" want "\"");                                                  \
    free(got_);                                                                                    \
  } while (0)

START_TEST(test_json_ascii_and_escapes) {
  ESC_EQ("plain /path?x=1", "plain /path?x=1");
  ESC_EQ("q\"b\\s", "q\\\"b\\\\s");
  ESC_EQ("a\nb\rc\td", "a\\nb\\rc\\td");
  ESC_EQ("\x01\x1f\x7f", "\\u0001\\u001f\\u007f");
  ESC_EQ("nul\0x", "nul\\u0000x");
  char *n = NULL;
  sy_buf b = {0};
  sy_json_str(&b, "route", n, 0, 1);
  sy_buf_append(&b, "", 1);
  ck_assert_str_eq(b.p, ",\"route\":null");
  sy_buf_free(&b);
}
END_TEST

START_TEST(test_json_utf8_kept) {
  ESC_EQ("caf\xc3\xa9", "caf\xc3\xa9");           /* é */
  ESC_EQ("\xe2\x82\xac 5", "\xe2\x82\xac 5");     /* € */
  ESC_EQ("\xf0\x9f\x9a\x82", "\xf0\x9f\x9a\x82"); /* U+1F682 */
  ESC_EQ("\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf"); /* U+10FFFF */
  ESC_EQ("\xed\x9f\xbf", "\xed\x9f\xbf");         /* U+D7FF, last before surrogates */
  ESC_EQ("\xc2\xa0", "\xc2\xa0");                 /* NBSP: not a control */
  ESC_EQ("\xc2\x9b"
         "31m",
         "\\u009b31m"); /* C1 CSI escaped */
  ESC_EQ("a\xe2\x80\xa8"
         "b\xe2\x80\xa9",
         "a\\u2028b\\u2029"); /* JS line terminators */
}
END_TEST

START_TEST(test_json_invalid_bytes) {
  ESC_EQ("\xff", "\\\\xff");
  ESC_EQ("\x80", "\\\\x80");                                  /* stray continuation */
  ESC_EQ("\xc0\xaf", "\\\\xc0\\\\xaf");                       /* overlong '/' */
  ESC_EQ("\xe0\x80\xaf", "\\\\xe0\\\\x80\\\\xaf");            /* overlong, 3 bytes */
  ESC_EQ("\xed\xa0\x80", "\\\\xed\\\\xa0\\\\x80");            /* surrogate U+D800 */
  ESC_EQ("\xf4\x90\x80\x80", "\\\\xf4\\\\x90\\\\x80\\\\x80"); /* > U+10FFFF */
  ESC_EQ("\xf5\x80\x80\x80", "\\\\xf5\\\\x80\\\\x80\\\\x80");
  ESC_EQ("ab\xe2\x82", "ab\\\\xe2\\\\x82"); /* truncated at the end */
  ESC_EQ("\xe2\x82"
         "c\xc3\xa9",
         "\\\\xe2\\\\x82c\xc3\xa9"); /* resynchronises */
}
END_TEST

/* Every string of up to 3 bytes from an alphabet of awkward bytes comes out
 * as a JSON string a strict checker accepts: only escapes JSON knows, no raw
 * control character, valid UTF-8. */
static int valid_json_string(const char *p, size_t n) {
  if (n < 2 || p[0] != '"' || p[n - 1] != '"') return 0;
  for (size_t i = 1; i + 1 < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c < 0x20 || c == '"') return 0;
    if (c == '\\') {
      char e = p[++i];
      if (e == 'u') {
        for (int k = 1; k <= 4; k++)
          if (!strchr("0123456789abcdef", p[i + k])) return 0;
        i += 4;
      } else if (!strchr("\"\\/bfnrt", e)) {
        return 0;
      }
    } else if (c >= 0x80) {
      size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
      if (!len || i + len > n - 1) return 0;
      for (size_t k = 1; k < len; k++)
        if (((unsigned char)p[i + k] & 0xc0) != 0x80) return 0;
      i += len - 1;
    }
  }
  return 1;
}

START_TEST(test_json_exhaustive_small) {
  static const unsigned char alphabet[] = {0x00, 0x0a, 0x1b, '"',  '\\', 'a',  0x7f, 0x80, 0xbf,
                                           0xc2, 0xc3, 0xe2, 0xed, 0xf0, 0xf4, 0xf5, 0xff, 0xa0};
  size_t na = sizeof(alphabet);
  for (size_t len = 0; len <= 3; len++) {
    size_t total = 1;
    for (size_t k = 0; k < len; k++)
      total *= na;
    for (size_t idx = 0; idx < total; idx++) {
      char in[3];
      size_t x = idx;
      for (size_t k = 0; k < len; k++, x /= na)
        in[k] = (char)alphabet[x % na];
      sy_buf b = {0};
      sy_buf_append(&b, "", 0);
      sy_json_escape(&b, in, len);
      sy_buf q = {0};
      sy_buf_append(&q, "\"", 1);
      sy_buf_append(&q, b.p ? b.p : "", b.len);
      sy_buf_append(&q, "\"", 1);
      ck_assert_msg(valid_json_string(q.p, q.len), "not valid: %.*s", (int)q.len, q.p);
      sy_buf_free(&b);
      sy_buf_free(&q);
    }
  }
}
END_TEST

START_TEST(test_json_numbers_and_client) {
  sy_buf b = {0};
  sy_buf_append(&b, "{", 1);
  sy_json_u64(&b, "bytes_in", 18446744073709551615ull, 0);
  sy_json_ms(&b, "duration_ms", 1234567, 1);
  sy_json_ms(&b, "upstream_connect_ms", -1, 1);
  sy_json_ms(&b, "z", 999, 1);
  sy_json_client(&b, "2001:db8::1", 57728, 1);
  sy_json_client(&b, "", -1, 1);
  sy_json_cstr(&b, "h", "x", 1);
  sy_buf_append(&b, "}", 2);
  ck_assert_str_eq(b.p, "{\"bytes_in\":18446744073709551615,\"duration_ms\":1.234,"
                        "\"upstream_connect_ms\":null,\"z\":0.000,"
                        "\"client_ip\":\"2001:db8::1\",\"client_port\":57728,"
                        "\"client_ip\":null,\"client_port\":null,\"h\":\"x\"}");
  sy_buf_free(&b);
  b = (sy_buf){0};
  sy_json_time(&b, "time", 0);
  sy_buf_append(&b, "", 1);
  /* "time":"2026-12-02T04:03:59.123Z" */
  ck_assert_int_eq(strlen(b.p), 8 + 24 + 1);
  ck_assert_int_eq(b.p[8 + 10], 'T');
  ck_assert_int_eq(b.p[8 + 23], 'Z');
  sy_buf_free(&b);
}
END_TEST

/* The line after its "time" member (which changes from run to run). */
static const char *after_time(const sy_buf *b) {
  ck_assert_msg(b->len > 40 && strncmp(b->p, "{\"time\":\"20", 11) == 0, "%.*s", (int)b->len, b->p);
  return b->p + strlen("{\"time\":\"2026-12-02T04:03:59.123Z\"");
}

START_TEST(test_access_lines) {
  const char *host = "h\xc3\xa9.example:8080 junk";
  sy_access_request r = {.client_ip = "2001:db8::7",
                         .client_port = 57728,
                         .method = "GET",
                         .host = host,
                         .host_len = 16,
                         .path = "/ws\xff",
                         .path_len = 4,
                         .http_major = 1,
                         .http_minor = 1,
                         .request_id = "abc",
                         .route = "ws",
                         .upstream = "127.0.0.1:19000",
                         .status = 200,
                         .bytes_in = 142,
                         .bytes_out = 150,
                         .duration_ns = 1195000,
                         .upstream_connect_ns = 112400,
                         .upstream_first_byte_ns = -1,
                         .termination = SY_TERM_UPSTREAM_CLOSED};
  sy_buf b = {0};
  sy_access_format_request(&b, &r);
  sy_buf_append(&b, "", 1);
  ck_assert_str_eq(
      after_time(&b),
      ",\"type\":\"request\",\"client_ip\":\"2001:db8::7\",\"client_port\":57728,"
      "\"method\":\"GET\",\"host\":\"h\xc3\xa9.example:8080\",\"path\":\"/ws\\\\xff\","
      "\"http_version\":\"1.1\",\"request_id\":\"abc\",\"route\":\"ws\","
      "\"upstream\":\"127.0.0.1:19000\",\"status\":200,\"bytes_in\":142,\"bytes_out\":150,"
      "\"duration_ms\":1.195,\"upstream_connect_ms\":0.112,"
      "\"upstream_first_byte_ms\":null,\"termination\":\"upstream_closed\"}\n");
  sy_buf_free(&b);

  sy_access_request empty = {.client_port = -1,
                             .http_major = -1,
                             .http_minor = -1,
                             .duration_ns = 0,
                             .upstream_connect_ns = -1,
                             .upstream_first_byte_ns = -1};
  b = (sy_buf){0};
  sy_access_format_request(&b, &empty);
  sy_buf_append(&b, "", 1);
  ck_assert_str_eq(after_time(&b),
                   ",\"type\":\"request\",\"client_ip\":null,\"client_port\":null,"
                   "\"method\":\"-\",\"host\":null,\"path\":null,\"http_version\":null,"
                   "\"request_id\":null,\"route\":null,\"upstream\":null,\"status\":0,"
                   "\"bytes_in\":0,\"bytes_out\":0,\"duration_ms\":0.000,"
                   "\"upstream_connect_ms\":null,\"upstream_first_byte_ms\":null,"
                   "\"termination\":\"ok\"}\n");
  sy_buf_free(&b);

  sy_access_tunnel t = {.client_ip = "127.0.0.1",
                        .client_port = 1,
                        .protocol = "websocket",
                        .path = "/ws",
                        .path_len = 3,
                        .route = "ws",
                        .duration_ms = 5406,
                        .bytes_to_upstream = 8,
                        .bytes_to_client = 4,
                        .copied = 12,
                        .closed_by = "client",
                        .reason = "eof",
                        .termination = SY_TERM_CLIENT_CLOSED};
  b = (sy_buf){0};
  sy_access_format_tunnel(&b, &t);
  sy_buf_append(&b, "", 1);
  ck_assert_str_eq(
      after_time(&b),
      ",\"type\":\"tunnel\",\"client_ip\":\"127.0.0.1\",\"client_port\":1,"
      "\"protocol\":\"websocket\",\"host\":null,\"path\":\"/ws\",\"request_id\":null,"
      "\"route\":\"ws\",\"upstream\":null,\"duration_ms\":5406,"
      "\"bytes_to_upstream\":8,\"bytes_to_client\":4,\"spliced\":0,\"copied\":12,"
      "\"closed_by\":\"client\",\"reason\":\"eof\",\"termination\":\"client_closed\"}\n");
  sy_buf_free(&b);
}
END_TEST

/* Runs fn with stderr sent to a file; returns what was written. */
static char *capture_stderr(void (*fn)(void)) {
  char path[] = "/tmp/sy-log-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  int saved = dup(2);
  dup2(fd, 2);
  fn();
  dup2(saved, 2);
  close(saved);
  off_t n = lseek(fd, 0, SEEK_END);
  char *out = calloc(1, (size_t)n + 1);
  ck_assert_int_eq(pread(fd, out, (size_t)n, 0), n);
  close(fd);
  unlink(path);
  return out;
}

static size_t count(const char *hay, const char *needle) {
  size_t n = 0;
  for (const char *p = hay; (p = strstr(p, needle)); p++)
    n++;
  return n;
}

static void levels_warn_text(void) {
  sy_log_configure(SY_LOG_WARN, SY_LOG_TEXT);
  sy_log_error("e1 %d", 1);
  sy_log_warn("w1");
  sy_log_info("i1");
  sy_log_debug("d1");
  sy_log_at(SY_LOG_ERROR, "peer said \"%s\"", "a\nswitchyard: error: forged");
}

START_TEST(test_levels_text) {
  char *out = capture_stderr(levels_warn_text);
  ck_assert_str_eq(out, "switchyard: error: e1 1\n"
                        "switchyard: warn: w1\n"
                        "switchyard: error: peer said \"a?switchyard: error: forged\"\n");
  free(out);
  enum sy_log_level l;
  ck_assert_int_eq(sy_log_level_parse("debug", &l), 0);
  ck_assert_int_eq(l, SY_LOG_DEBUG);
  ck_assert_int_eq(sy_log_level_parse("Debug", &l), -1);
  ck_assert_int_eq(sy_log_level_parse(NULL, &l), -1);
}
END_TEST

static void levels_debug_json(void) {
  sy_log_configure(SY_LOG_DEBUG, SY_LOG_JSON);
  sy_log_debug("d \xff \"q\"");
  sy_log_configure(SY_LOG_INFO, SY_LOG_TEXT);
}

START_TEST(test_json_lines) {
  char *out = capture_stderr(levels_debug_json);
  ck_assert_msg(strncmp(out, "{\"time\":\"", 9) == 0, "%s", out);
  ck_assert_msg(strstr(out, ",\"level\":\"debug\",\"msg\":\"d \\\\xff \\\"q\\\"\"}\n") != NULL,
                "%s", out);
  ck_assert_int_eq(count(out, "\n"), 1);
  free(out);
}
END_TEST

static void burst(void) {
  sy_log_configure(SY_LOG_INFO, SY_LOG_TEXT);
  for (int i = 0; i < 1000; i++)
    sy_log_every_second(SY_LOG_ERROR, "accept failed: %d", i);
}

static sy_log_limit shared_lim;

static void after_a_second(void) {
  sy_log_limited(&shared_lim, SY_LOG_ERROR, "first");
  for (int i = 0; i < 5; i++)
    sy_log_limited(&shared_lim, SY_LOG_ERROR, "again");
  /* the window is over once the coarse clock passed next_ms: wait for that
   * (bounded; the coarse clock ticks every few ms) */
  struct timespec ts;
  for (int i = 0; i < 300; i++) {
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    if ((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 >=
        __atomic_load_n(&shared_lim.next_ms, __ATOMIC_RELAXED))
      break;
    usleep(10000);
  }
  sy_log_limited(&shared_lim, SY_LOG_ERROR, "later");
  sy_log_configure(SY_LOG_ERROR, SY_LOG_TEXT);
  sy_log_limited(&shared_lim, SY_LOG_WARN, "filtered out: not even counted");
  sy_log_configure(SY_LOG_INFO, SY_LOG_TEXT);
}

START_TEST(test_rate_limit) {
  char *out = capture_stderr(burst);
  ck_assert_str_eq(out, "switchyard: error: accept failed: 0\n");
  free(out);
  out = capture_stderr(after_a_second);
  ck_assert_str_eq(out, "switchyard: error: first\n"
                        "switchyard: error: later (5 more suppressed)\n");
  ck_assert_int_eq(shared_lim.suppressed, 0);
  free(out);
}
END_TEST

static Suite *log_suite(void) {
  Suite *s = suite_create("log");
  TCase *tc = tcase_create("json");
  tcase_add_test(tc, test_json_ascii_and_escapes);
  tcase_add_test(tc, test_json_utf8_kept);
  tcase_add_test(tc, test_json_invalid_bytes);
  tcase_add_test(tc, test_json_exhaustive_small);
  tcase_add_test(tc, test_json_numbers_and_client);
  tcase_add_test(tc, test_access_lines);
  suite_add_tcase(s, tc);
  tc = tcase_create("diagnostics");
  tcase_add_test(tc, test_levels_text);
  tcase_add_test(tc, test_json_lines);
  tcase_add_test(tc, test_rate_limit);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(log_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
