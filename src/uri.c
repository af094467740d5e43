/* Path normalisation: percent-decoding of unreserved characters, then dot
 * segments and empty segments, in place in the caller's buffer. */
#include "switchyard/uri.h"

#include <string.h>

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int unreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

/* Pass one (RFC 3986 §6.2.2.1 and §6.2.2.2): the output is at most as long
 * as the input, since a decoded escape shrinks and a kept one stays 3 bytes. */
static sy_path_result decode(sy_str in, unsigned flags, char *out, size_t *n) {
  static const char hex[] = "0123456789ABCDEF";
  size_t w = 0;
  for (size_t r = 0; r < in.len; r++) {
    char ch = in.p[r];
    if (ch != '%') {
      out[w++] = ch;
      continue;
    }
    if (in.len - r < 3) return SY_PATH_BAD_ESCAPE;
    int a = hexval(in.p[r + 1]), b = hexval(in.p[r + 2]);
    if (a < 0 || b < 0) return SY_PATH_BAD_ESCAPE;
    unsigned char v = (unsigned char)(a << 4 | b);
    r += 2;
    if (unreserved(v)) {
      out[w++] = (char)v;
      continue;
    }
    /* Reading an escaped slash as a separator or not is where proxies and
     * backends disagree; keeping it escaped makes it never one here. */
    if ((v == '/' || v == '\\') && (flags & SY_PATH_REJECT_ESCAPED_SLASHES))
      return SY_PATH_ESCAPED_SLASH;
    out[w++] = '%';
    out[w++] = hex[v >> 4];
    out[w++] = hex[v & 15];
  }
  *n = w;
  return SY_PATH_OK;
}

/* Pass two (RFC 3986 §5.2.4, refusing instead of clamping at the root), in
 * place: the output is a run of "/segment" units, written never ahead of the
 * input read. A final ".", ".." or empty segment leaves a trailing slash. */
static sy_path_result resolve(char *p, size_t n, unsigned flags, size_t *outlen) {
  size_t w = 0, r = 0;
  while (r < n) {
    size_t s = r + 1; /* p[r] is '/' */
    size_t e = s;
    while (e < n && p[e] != '/')
      e++;
    size_t len = e - s;
    int last = e == n;
    r = e;
    if (len == 1 && p[s] == '.') {
      if (last) p[w++] = '/';
      continue;
    }
    if (len == 2 && p[s] == '.' && p[s + 1] == '.') {
      if (w == 0) return SY_PATH_ABOVE_ROOT;
      while (p[--w] != '/')
        ;
      if (last) p[w++] = '/';
      continue;
    }
    if (len == 0 && (flags & SY_PATH_MERGE_SLASHES) && !last) continue;
    memmove(p + w, p + s - 1, len + 1);
    w += len + 1;
  }
  *outlen = w;
  return SY_PATH_OK;
}

sy_path_result sy_path_normalize(sy_str path, unsigned flags, char *out, size_t cap,
                                 size_t *outlen) {
  *outlen = 0;
  if (!path.len || path.p[0] != '/') return SY_PATH_NOT_ABSOLUTE;
  if (cap < path.len + 1) return SY_PATH_NO_ROOM;
  size_t n = 0, len = 0;
  sy_path_result rc = decode(path, flags, out, &n);
  if (rc == SY_PATH_OK) rc = resolve(out, n, flags, &len);
  if (rc != SY_PATH_OK) {
    out[0] = 0;
    return rc;
  }
  out[len] = 0;
  *outlen = len;
  return SY_PATH_OK;
}

const char *sy_path_result_str(sy_path_result r) {
  switch (r) {
  case SY_PATH_OK:
    return "ok";
  case SY_PATH_NOT_ABSOLUTE:
    return "path does not start with /";
  case SY_PATH_BAD_ESCAPE:
    return "bad percent-escape";
  case SY_PATH_ABOVE_ROOT:
    return "path climbs above the root";
  case SY_PATH_ESCAPED_SLASH:
    return "escaped slash refused";
  case SY_PATH_NO_ROOM:
    return "path too long";
  }
  return "?";
}
