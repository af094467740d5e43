/* The types every module shares, so that none has to include another module's
 * header for them: a borrowed byte string, a growable output buffer and a
 * counter one thread writes. Depends on nothing of the project; pure
 * functions, no I/O. */
#ifndef SWITCHYARD_BASE_H
#define SWITCHYARD_BASE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

/* Bytes owned by someone else (a read buffer, the config), not NUL-terminated. */
typedef struct sy_str {
  const char *p;
  size_t len;
} sy_str;

/* Case-insensitive equality with a literal. Inline, like the buffer's append
 * below: these run per header field, and called across units they cost a
 * fifth of a proxied request's user-space instructions (the literal's strlen
 * no longer folds away). */
static inline int sy_str_ieq(sy_str a, const char *lit) {
  size_t n = strlen(lit);
  return a.len == n && strncasecmp(a.p, lit, n) == 0;
}

static inline int sy_str_ieq2(sy_str a, sy_str b) {
  return a.len == b.len && strncasecmp(a.p, b.p, a.len) == 0;
}

/* An output buffer that grows: heads, error pages, log lines, metrics text and
 * TLS ciphertext are built in one. Zero-initialised is empty. */
typedef struct sy_buf {
  char *p;
  size_t len, cap;
} sy_buf;
/* Room for n more bytes after len (capacity grows by doubling). 0 or -1. */
int sy_buf_reserve(sy_buf *b, size_t n);

static inline int sy_buf_append(sy_buf *b, const void *p, size_t n) {
  if (b->len + n > b->cap && sy_buf_reserve(b, n) < 0) return -1;
  if (n) memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}
int sy_buf_appendf(sy_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sy_buf_free(sy_buf *b);

/* Adds d to a counter only its owner's thread writes and other threads read
 * (a worker's metrics, its buffer pool): a plain load and store, no locked
 * add; relaxed, so a reader sees a whole value. */
static inline void sy_bump(uint64_t *p, int64_t d) {
  __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + (uint64_t)d, __ATOMIC_RELAXED);
}

#endif
