/* Diagnostics (stderr: text or JSON lines, filtered by level) and the access
 * log (one JSON object per line, written by a thread of its own). */
#ifndef SWITCHYARD_LOG_H
#define SWITCHYARD_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "switchyard/base.h"
#include "switchyard/termination.h"

enum sy_log_level { SY_LOG_ERROR = 0, SY_LOG_WARN, SY_LOG_INFO, SY_LOG_DEBUG };
enum sy_log_format { SY_LOG_TEXT = 0, SY_LOG_JSON };

/* From the configuration, at start and after each reload (any thread may log
 * meanwhile: the settings are atomics). Defaults: info, text. */
void sy_log_configure(enum sy_log_level level, enum sy_log_format format);
/* "error", "warn", "info", "debug" -> 0 and *out, anything else -> -1. */
int sy_log_level_parse(const char *s, enum sy_log_level *out);
const char *sy_log_level_name(enum sy_log_level level);
/* 1 when a line at `level` would be written: guard costly arguments with it. */
int sy_log_on(enum sy_log_level level);

void sy_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sy_log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sy_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sy_log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sy_log_at(enum sy_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Rate limit for a diagnostic that can repeat at line rate (accept failures,
 * a dead upstream under load): at most one line per second per limiter, the
 * next line written says how many were suppressed meanwhile. A suppressed
 * call costs a coarse clock read and one atomic add, and nothing at all when
 * the level is filtered out. Shared by every thread that uses the limiter. */
typedef struct sy_log_limit {
  uint64_t next_ms;    /* CLOCK_MONOTONIC_COARSE ms before which lines are suppressed */
  uint64_t suppressed; /* since the last line written */
} sy_log_limit;

void sy_log_limited(sy_log_limit *lim, enum sy_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One limiter per call site: sy_log_every_second(SY_LOG_ERROR, "accept: %s", e); */
#define sy_log_every_second(level, ...)                                                            \
  do {                                                                                             \
    static sy_log_limit sy_log_site_;                                                              \
    sy_log_limited(&sy_log_site_, (level), __VA_ARGS__);                                           \
  } while (0)

/* Where access-log lines go: "stdout"/NULL, "off", or a file path. 0 or -1. */
int sy_access_log_open(const char *where);
void sy_access_log_close(void);
int sy_access_log_enabled(void);
/* Queues one complete line (the caller includes the trailing '\n') for the
 * writer thread; never blocks on the destination. */
void sy_access_log_write(const char *line, size_t len);
/* Lines dropped because the queue was full (a stuck destination). */
uint64_t sy_access_log_dropped(void);

/* Access-log lines with every documented field (docs/OPERATIONS.md, "Access
 * log"), so the format lives here and the connection code only fills a
 * struct. Strings are (pointer, length) where they come from the request
 * head, NUL-terminated otherwise; NULL writes null. Durations are in
 * nanoseconds, < 0 writes null (a phase that did not happen). */
typedef struct sy_access_request {
  const char *client_ip; /* text as accepted: "192.0.2.1", "2001:db8::1" */
  int client_port;
  const char *method; /* NULL -> "-" (head not parsed) */
  const char *host;   /* Host value as sent, NULL = absent */
  size_t host_len;
  const char *path; /* target up to '?' */
  size_t path_len;
  int http_major, http_minor; /* < 0: unknown -> null */
  const char *request_id;
  const char *route;    /* name or "#INDEX" */
  const char *upstream; /* server address text */
  int status;           /* 0 = nothing sent */
  uint64_t bytes_in, bytes_out;
  int64_t duration_ns, upstream_connect_ns, upstream_first_byte_ns;
  enum sy_term termination;
} sy_access_request;

typedef struct sy_access_tunnel {
  const char *client_ip;
  int client_port;
  const char *protocol; /* the token the 101 named */
  const char *host;
  size_t host_len;
  const char *path;
  size_t path_len;
  const char *request_id, *route, *upstream;
  uint64_t duration_ms, bytes_to_upstream, bytes_to_client, spliced, copied;
  const char *closed_by, *reason; /* as before: client|upstream|proxy, eof|reset|... */
  enum sy_term termination;
} sy_access_tunnel;

/* One complete line (with '\n') into b. */
void sy_access_format_request(sy_buf *b, const sy_access_request *r);
void sy_access_format_tunnel(sy_buf *b, const sy_access_tunnel *t);
/* Format and queue (nothing when the access log is off). */
void sy_access_log_request(const sy_access_request *r);
void sy_access_log_tunnel(const sy_access_tunnel *t);

/* JSON helpers for building a line into a sy_buf. Each writes one member,
 * `"key":value`, preceded by ',' when `comma` is set.
 *
 * Strings: always valid JSON whatever the bytes. Valid UTF-8 is kept as
 * UTF-8; control characters (C0, DEL, C1) and U+2028/U+2029 are written as
 * \uXXXX escapes; a byte that is not part of valid UTF-8 (stray continuation,
 * overlong form, surrogate, truncated sequence, > U+10FFFF) becomes the six
 * characters \\xHH, i.e. the decoded string shows the backslash, 'x' and two
 * hex digits. s == NULL writes null. */
void sy_json_str(sy_buf *b, const char *key, const char *s, size_t n, int comma);
/* The same for a NUL-terminated string (or NULL -> null). */
void sy_json_cstr(sy_buf *b, const char *key, const char *s, int comma);
/* Only the escaped string body (no key, no quotes), for callers that frame it. */
void sy_json_escape(sy_buf *b, const char *s, size_t n);
void sy_json_u64(sy_buf *b, const char *key, uint64_t v, int comma);
/* A duration in nanoseconds as milliseconds with 3 decimals; ns < 0 -> null
 * (a phase that did not happen, e.g. no upstream connect). */
void sy_json_ms(sy_buf *b, const char *key, int64_t ns, int comma);
/* "client_ip":"...","client_port":N as two members. IPv6 text as given
 * (no brackets, no port glued on); port < 0 -> null. */
void sy_json_client(sy_buf *b, const char *ip, int port, int comma);
/* Current UTC time, ISO 8601 with milliseconds: "2026-12-02T04:03:59.123Z". */
void sy_json_time(sy_buf *b, const char *key, int comma);

#endif
