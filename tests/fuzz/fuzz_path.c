/* libFuzzer target for sy_path_normalize. The first byte picks the flags, the
 * rest is the path. Invariants: the output fits the documented buffer, is in
 * normal form (rooted, no "." or ".." segment, no empty segment when merging,
 * every escape upper-case and not of an unreserved character) and normalising
 * it again changes nothing; a refusal leaves no output. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/uri.h"

#define FZ_CHECK(cond, ...)                                                                        \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "\nFUZZ INVARIANT FAILED at %s:%d: %s\n  ", __FILE__, __LINE__, #cond);      \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fprintf(stderr, "\n");                                                                       \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static int unreserved(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

static int uphex(int c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  unsigned flags = data[0] & 3u;
  size_t n = size - 1;
  char *in = malloc(n + 1), *out = malloc(n + 1), *again = malloc(n + 1);
  if (!in || !out || !again) abort();
  if (n) memcpy(in, data + 1, n);
  size_t len = 12345, len2 = 0;
  sy_path_result r = sy_path_normalize((sy_str){in, n}, flags, out, n + 1, &len);
  if (r != SY_PATH_OK) {
    FZ_CHECK(len == 0, "refusal %d left len %zu", r, len);
    FZ_CHECK(r != SY_PATH_ESCAPED_SLASH || (flags & SY_PATH_REJECT_ESCAPED_SLASHES),
             "escaped slash refused without the flag");
    FZ_CHECK(r != SY_PATH_NO_ROOM, "no room with cap = len + 1");
  } else {
    FZ_CHECK(len <= n && out[len] == 0 && len > 0 && out[0] == '/', "len %zu of %zu", len, n);
    for (size_t i = 0; i < len;) {
      size_t e = i + 1;
      while (e < len && out[e] != '/')
        e++;
      size_t sl = e - i - 1;
      const char *s = out + i + 1;
      FZ_CHECK(!(sl == 1 && s[0] == '.') && !(sl == 2 && s[0] == '.' && s[1] == '.'),
               "dot segment left at %zu in %.*s", i, (int)len, out);
      FZ_CHECK(!(flags & SY_PATH_MERGE_SLASHES) || sl > 0 || e == len,
               "empty segment left at %zu in %.*s", i, (int)len, out);
      i = e;
    }
    for (size_t i = 0; i < len; i++) {
      if (out[i] != '%') continue;
      FZ_CHECK(i + 2 < len, "truncated escape");
      FZ_CHECK(uphex(out[i + 1]) && uphex(out[i + 2]), "escape not upper-case hex");
      int v = (out[i + 1] <= '9' ? out[i + 1] - '0' : out[i + 1] - 'A' + 10) * 16 +
              (out[i + 2] <= '9' ? out[i + 2] - '0' : out[i + 2] - 'A' + 10);
      FZ_CHECK(!unreserved(v), "escaped unreserved %02X left", v);
    }
    sy_path_result r2 = sy_path_normalize((sy_str){out, len}, flags, again, len + 1, &len2);
    FZ_CHECK(r2 == SY_PATH_OK && len2 == len && memcmp(again, out, len) == 0,
             "not idempotent: %.*s -> %d %.*s", (int)len, out, r2, (int)len2, again);
  }
  free(in);
  free(out);
  free(again);
  return 0;
}
