/* Path normalisation: the routing bypasses, RFC 3986's dot-segment and
 * normalisation examples, and every refusal. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/uri.h"

#define MERGE SY_PATH_MERGE_SLASHES
#define REJECT SY_PATH_REJECT_ESCAPED_SLASHES

/* Normalises into a buffer sized exactly as documented (len + 1), so an
 * overrun shows under ASan. */
static sy_path_result norm(const char *in, unsigned flags, char **out) {
  size_t n = strlen(in), len = 99;
  char *buf = malloc(n + 1);
  ck_assert_ptr_nonnull(buf);
  sy_path_result r = sy_path_normalize((sy_str){in, n}, flags, buf, n + 1, &len);
  if (r == SY_PATH_OK) {
    ck_assert_uint_eq(len, strlen(buf));
    ck_assert_uint_le(len, n);
  } else {
    ck_assert_uint_eq(len, 0);
  }
  *out = buf;
  return r;
}

static void expect(const char *in, unsigned flags, const char *want) {
  char *out;
  sy_path_result r = norm(in, flags, &out);
  ck_assert_msg(r == SY_PATH_OK, "%s: refused (%s)", in, sy_path_result_str(r));
  ck_assert_msg(strcmp(out, want) == 0, "%s -> %s, want %s", in, out, want);
  free(out);
}

static void refuse(const char *in, unsigned flags, sy_path_result want) {
  char *out;
  sy_path_result r = norm(in, flags, &out);
  ck_assert_msg(r == want, "%s: got %d (%s), want %d", in, r, sy_path_result_str(r), want);
  free(out);
}

START_TEST(routing_bypasses) {
  expect("/x/../admin/secret", MERGE, "/admin/secret");
  expect("//admin/secret", MERGE, "/admin/secret");
  expect("/%61dmin/secret", MERGE, "/admin/secret");
  /* and their combinations, encoded dots included */
  expect("/x/%2e%2E/admin/secret", MERGE, "/admin/secret");
  expect("/x/.%2e/admin/secret", MERGE, "/admin/secret");
  expect("/./%2E/admin//./secret", MERGE, "/admin/secret");
  expect("///x///..//%41dmin", MERGE, "/Admin");
  expect("/%7e%5Fu%2d%2E", MERGE, "/~_u-.");
}
END_TEST

/* RFC 3986 §5.4.1 / §5.4.2, base "http://a/b/c/d;p?q": the merged paths
 * (base directory + reference) before remove_dot_segments, and its results.
 * Where the RFC clamps "/.." to the root, this proxy refuses (below). */
START_TEST(rfc3986_dot_segments) {
  static const char *const t[][2] = {
      {"/b/c/g", "/b/c/g"},
      {"/b/c/./g", "/b/c/g"},
      {"/b/c/g/", "/b/c/g/"},
      {"/g", "/g"},
      {"/b/c/d;p", "/b/c/d;p"},
      {"/b/c/g;x", "/b/c/g;x"},
      {"/b/c/.", "/b/c/"},
      {"/b/c/./", "/b/c/"},
      {"/b/c/..", "/b/"},
      {"/b/c/../", "/b/"},
      {"/b/c/../g", "/b/g"},
      {"/b/c/../..", "/"},
      {"/b/c/../../", "/"},
      {"/b/c/../../g", "/g"},
      {"/./g", "/g"},
      {"/b/c/g.", "/b/c/g."},
      {"/b/c/.g", "/b/c/.g"},
      {"/b/c/g..", "/b/c/g.."},
      {"/b/c/..g", "/b/c/..g"},
      {"/b/c/./../g", "/b/g"},
      {"/b/c/./g/.", "/b/c/g/"},
      {"/b/c/g/./h", "/b/c/g/h"},
      {"/b/c/g/../h", "/b/c/h"},
      {"/b/c/g;x=1/./y", "/b/c/g;x=1/y"},
      {"/b/c/g;x=1/../y", "/b/c/y"},
      /* §5.2.4's own examples */
      {"/a/b/c/./../../g", "/a/g"},
      {"/mid/content=5/../6", "/mid/6"},
      /* §6.2.2: case of escapes, unreserved decoded, dot segments */
      {"/./b/../b/%63/%7bfoo%7d", "/b/c/%7Bfoo%7D"},
      {"/%7Esmith/home.html", "/~smith/home.html"},
      {"/", "/"},
  };
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
    expect(t[i][0], MERGE, t[i][1]);
    expect(t[i][0], 0, t[i][1]);
  }
}
END_TEST

START_TEST(above_root_refused) {
  static const char *const t[] = {
      "/..",
      "/../g",
      "/b/c/../../../g",
      "/b/c/../../../../g",
      "/%2e%2e/etc/passwd",
      "/a/../../b",
      "/./..",
      "/a/./../..",
      "//../a",
  };
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
    refuse(t[i], MERGE, SY_PATH_ABOVE_ROOT);
  /* Without merging, "//" holds an empty segment that ".." may remove. */
  expect("//../a", 0, "/a");
  refuse("//../../a", 0, SY_PATH_ABOVE_ROOT);
}
END_TEST

START_TEST(slashes_merged_or_kept) {
  expect("/a//b///c", MERGE, "/a/b/c");
  expect("/a//b///c", 0, "/a//b///c");
  expect("/a//", MERGE, "/a/");
  expect("//", MERGE, "/");
  expect("/a//", 0, "/a//");
  expect("/a//../b", 0, "/a/b"); /* RFC 3986 §5.2.4: ".." removes the empty segment */
  expect("/a//../b", MERGE, "/b");
  expect("/a//..", 0, "/a/");
}
END_TEST

START_TEST(escaped_slashes) {
  /* Kept escaped (hex upper-cased): never a separator, so "..%2F" is a name. */
  expect("/a%2fb", MERGE, "/a%2Fb");
  expect("/a%2Fb/..%2F..%2Fetc", MERGE, "/a%2Fb/..%2F..%2Fetc");
  expect("/a/%2E%2E%2fb", MERGE, "/a/..%2Fb");
  expect("/a%5cb", MERGE, "/a%5Cb");
  refuse("/a%2fb", MERGE | REJECT, SY_PATH_ESCAPED_SLASH);
  refuse("/a%2Fb", REJECT, SY_PATH_ESCAPED_SLASH);
  refuse("/a%5Cb", REJECT, SY_PATH_ESCAPED_SLASH);
  expect("/a/b", MERGE | REJECT, "/a/b");
  /* other reserved or non-ASCII escapes stay escaped, whatever the flags */
  expect("/q%3fx%23y%25z%20%00%C3%a9", MERGE | REJECT, "/q%3Fx%23y%25z%20%00%C3%A9");
  expect("/%2541", MERGE, "/%2541"); /* no double decoding */
}
END_TEST

START_TEST(bad_input_refused) {
  static const char *const bad[] = {"/%zz", "/%", "/a%2", "/a%g1", "/%%41", "/a%2/", "/%1"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    refuse(bad[i], MERGE, SY_PATH_BAD_ESCAPE);
  refuse("", MERGE, SY_PATH_NOT_ABSOLUTE);
  refuse("a/b", MERGE, SY_PATH_NOT_ABSOLUTE);
  refuse("*", MERGE, SY_PATH_NOT_ABSOLUTE);
  char small[4];
  size_t len = 7;
  ck_assert_int_eq(sy_path_normalize((sy_str){"/abcd", 5}, MERGE, small, sizeof(small), &len),
                   SY_PATH_NO_ROOM);
  ck_assert_uint_eq(len, 0);
  /* a long path of merged slashes: one pass, output within the input */
  size_t n = 30000;
  char *big = malloc(n + 1);
  for (size_t i = 0; i < n; i += 3)
    memcpy(big + i, "/a/", 3);
  big[n] = 0;
  char *out;
  ck_assert_int_eq(norm(big, MERGE, &out), SY_PATH_OK);
  ck_assert_uint_eq(strlen(out), n / 3 * 2 + 1); /* "/a" each, and the final "/" */
  free(out);
  free(big);
}
END_TEST

int main(void) {
  Suite *s = suite_create("uri");
  TCase *tc = tcase_create("normalize");
  tcase_add_test(tc, routing_bypasses);
  tcase_add_test(tc, rfc3986_dot_segments);
  tcase_add_test(tc, above_root_refused);
  tcase_add_test(tc, slashes_merged_or_kept);
  tcase_add_test(tc, escaped_slashes);
  tcase_add_test(tc, bad_input_refused);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
