#include "switchyard/log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Access-log lines go through a bounded in-memory queue to a writer thread, so
 * a slow or stuck destination (a full pipe, a hung disk) never stalls a
 * worker's loop: when the queue is full, lines are dropped and counted. */
#define SY_LOG_QUEUE (4u << 20)

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int running, stop;
  int fd;      /* where lines go; -1 = off */
  int next_fd; /* set by a reopen, taken by the writer between writes */
  int has_next;
  char *q; /* ring of SY_LOG_QUEUE bytes */
  size_t head, len;
  uint64_t dropped;
  int enabled;
} L = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 1, -1, 0, NULL, 0, 0, 0, 1};

/* Diagnostics settings, read by every thread on every line. */
static int log_level = SY_LOG_INFO;
static int log_format = SY_LOG_TEXT;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void sy_log_configure(enum sy_log_level level, enum sy_log_format format) {
  __atomic_store_n(&log_level, (int)level, __ATOMIC_RELAXED);
  __atomic_store_n(&log_format, (int)format, __ATOMIC_RELAXED);
}

int sy_log_level_parse(const char *s, enum sy_log_level *out) {
  for (int i = 0; i < 4; i++)
    if (s && strcmp(s, level_names[i]) == 0) {
      *out = (enum sy_log_level)i;
      return 0;
    }
  return -1;
}

const char *sy_log_level_name(enum sy_log_level level) {
  return (unsigned)level < 4 ? level_names[level] : "?";
}

int sy_log_on(enum sy_log_level level) {
  return (int)level <= __atomic_load_n(&log_level, __ATOMIC_RELAXED);
}

/* One write per line so lines from several threads never interleave. */
static void emit(const char *p, size_t n) {
  ssize_t w = write(2, p, n);
  (void)w;
}

static void vlog(enum sy_log_level level, uint64_t suppressed, const char *fmt, va_list ap) {
  char msg[1024];
  int m = vsnprintf(msg, sizeof(msg), fmt, ap);
  size_t len = m < 0 ? 0 : (size_t)m < sizeof(msg) ? (size_t)m : sizeof(msg) - 1;
  if (__atomic_load_n(&log_format, __ATOMIC_RELAXED) == SY_LOG_JSON) {
    sy_buf b = {0};
    sy_buf_append(&b, "{", 1);
    sy_json_time(&b, "time", 0);
    sy_json_cstr(&b, "level", sy_log_level_name(level), 1);
    sy_json_str(&b, "msg", msg, len, 1);
    if (suppressed) sy_json_u64(&b, "suppressed", suppressed, 1);
    sy_buf_append(&b, "}\n", 2);
    if (b.p) emit(b.p, b.len);
    sy_buf_free(&b);
    return;
  }
  /* A message may quote what a peer sent: no control character may forge or
   * split a line. */
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)msg[i] < 0x20 || msg[i] == 0x7f) msg[i] = '?';
  char line[1200];
  int n = suppressed
              ? snprintf(line, sizeof(line), "switchyard: %s: %.*s (%llu more suppressed)\n",
                         sy_log_level_name(level), (int)len, msg, (unsigned long long)suppressed)
              : snprintf(line, sizeof(line), "switchyard: %s: %.*s\n", sy_log_level_name(level),
                         (int)len, msg);
  if (n < 0) return;
  if ((size_t)n >= sizeof(line)) {
    n = sizeof(line) - 1;
    line[n - 1] = '\n';
  }
  emit(line, (size_t)n);
}

#define SY_LOG_FN(fn, level)                                                                       \
  void fn(const char *fmt, ...) {                                                                  \
    if (!sy_log_on(level)) return;                                                                 \
    va_list ap;                                                                                    \
    va_start(ap, fmt);                                                                             \
    vlog(level, 0, fmt, ap);                                                                       \
    va_end(ap);                                                                                    \
  }

SY_LOG_FN(sy_log_error, SY_LOG_ERROR)
SY_LOG_FN(sy_log_warn, SY_LOG_WARN)
SY_LOG_FN(sy_log_info, SY_LOG_INFO)
SY_LOG_FN(sy_log_debug, SY_LOG_DEBUG)

void sy_log_at(enum sy_log_level level, const char *fmt, ...) {
  if (!sy_log_on(level)) return;
  va_list ap;
  va_start(ap, fmt);
  vlog(level, 0, fmt, ap);
  va_end(ap);
}

static uint64_t coarse_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void sy_log_limited(sy_log_limit *lim, enum sy_log_level level, const char *fmt, ...) {
  if (!sy_log_on(level)) return;
  uint64_t now = coarse_ms(), next = __atomic_load_n(&lim->next_ms, __ATOMIC_RELAXED);
  /* Of the threads that find the second over, the one whose exchange wins
   * writes the line; the others count themselves as suppressed. */
  if (now < next || !__atomic_compare_exchange_n(&lim->next_ms, &next, now + 1000, 0,
                                                 __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    __atomic_add_fetch(&lim->suppressed, 1, __ATOMIC_RELAXED);
    return;
  }
  uint64_t n = __atomic_exchange_n(&lim->suppressed, 0, __ATOMIC_RELAXED);
  va_list ap;
  va_start(ap, fmt);
  vlog(level, n, fmt, ap);
  va_end(ap);
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0 && fd >= 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      /* A non-blocking destination (a stdout some parent made so): wait
       * here, on the writer thread, rather than cut a line in two. */
      struct pollfd pf = {.fd = fd, .events = POLLOUT};
      if (poll(&pf, 1, -1) >= 0 || errno == EINTR) continue;
    }
    if (w <= 0) return; /* a broken destination loses lines, never the proxy */
    p += w;
    n -= (size_t)w;
  }
}

static void *writer(void *arg) {
  char *chunk = malloc(64 * 1024);
  pthread_mutex_lock(&L.mu);
  for (;;) {
    while (!L.len && !L.has_next && !L.stop)
      pthread_cond_wait(&L.cv, &L.mu);
    if (L.has_next) {
      if (L.fd > 2) close(L.fd);
      L.fd = L.next_fd;
      L.has_next = 0;
    }
    if (!L.len && L.stop) break;
    size_t n = L.len < 64 * 1024 ? L.len : 64 * 1024;
    for (size_t i = 0; i < n; i++)
      chunk[i] = L.q[(L.head + i) % SY_LOG_QUEUE];
    L.head = (L.head + n) % SY_LOG_QUEUE;
    L.len -= n;
    int fd = L.fd;
    pthread_mutex_unlock(&L.mu);
    write_all(fd, chunk, n);
    pthread_mutex_lock(&L.mu);
  }
  if (L.fd > 2) close(L.fd);
  L.fd = -1;
  pthread_mutex_unlock(&L.mu);
  free(chunk);
  return NULL;
}

int sy_access_log_open(const char *where) {
  int fd;
  if (!where || strcmp(where, "stdout") == 0)
    fd = 1;
  else if (strcmp(where, "off") == 0)
    fd = -1;
  else {
    fd = open(where, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      sy_log_error("access log %s: %s", where, strerror(errno));
      return -1;
    }
  }
  pthread_mutex_lock(&L.mu);
  if (!L.q && !(L.q = malloc(SY_LOG_QUEUE))) {
    pthread_mutex_unlock(&L.mu);
    if (fd > 2) close(fd);
    return -1;
  }
  __atomic_store_n(&L.enabled, fd >= 0, __ATOMIC_RELAXED);
  if (!L.running) {
    L.fd = fd;
    L.stop = 0;
    if (pthread_create(&L.thread, NULL, writer, NULL) == 0) L.running = 1;
  } else {
    if (L.has_next && L.next_fd > 2) close(L.next_fd);
    L.next_fd = fd;
    L.has_next = 1;
    pthread_cond_signal(&L.cv);
  }
  pthread_mutex_unlock(&L.mu);
  return 0;
}

void sy_access_log_close(void) {
  pthread_mutex_lock(&L.mu);
  int running = L.running;
  L.stop = 1;
  pthread_cond_signal(&L.cv);
  pthread_mutex_unlock(&L.mu);
  if (running) pthread_join(L.thread, NULL); /* lines queued before the exit are written */
  pthread_mutex_lock(&L.mu);
  L.running = 0;
  free(L.q);
  L.q = NULL;
  L.head = L.len = 0;
  pthread_mutex_unlock(&L.mu);
}

int sy_access_log_enabled(void) {
  return __atomic_load_n(&L.enabled, __ATOMIC_RELAXED);
}

uint64_t sy_access_log_dropped(void) {
  return __atomic_load_n(&L.dropped, __ATOMIC_RELAXED);
}

void sy_access_log_write(const char *line, size_t len) {
  pthread_mutex_lock(&L.mu);
  if (!L.running || !L.q || L.len + len > SY_LOG_QUEUE) {
    if (L.running) __atomic_add_fetch(&L.dropped, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&L.mu);
    return;
  }
  size_t tail = (L.head + L.len) % SY_LOG_QUEUE;
  size_t first = len < SY_LOG_QUEUE - tail ? len : SY_LOG_QUEUE - tail;
  memcpy(L.q + tail, line, first);
  memcpy(L.q, line + first, len - first);
  L.len += len;
  pthread_cond_signal(&L.cv);
  pthread_mutex_unlock(&L.mu);
}

/* Bytes copied as they are inside a JSON string: printable ASCII but '"' and
 * '\\'. Everything else goes through the slow path below. */
static int json_plain(unsigned char c) {
  return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
}

static const char hexdig[] = "0123456789abcdef";

/* Length of the valid UTF-8 sequence at p (2..4), or 0 (RFC 3629: no
 * overlongs, no surrogates, nothing above U+10FFFF). */
static size_t utf8_len(const unsigned char *p, size_t n) {
  unsigned c = p[0];
  if (c >= 0xc2 && c <= 0xdf) return n >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (n < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80) return 0;
    if (c == 0xe0 && p[1] < 0xa0) return 0; /* overlong */
    if (c == 0xed && p[1] > 0x9f) return 0; /* surrogate */
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (n < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80) return 0;
    if (c == 0xf0 && p[1] < 0x90) return 0; /* overlong */
    if (c == 0xf4 && p[1] > 0x8f) return 0; /* > U+10FFFF */
    return 4;
  }
  return 0;
}

static void u_escape(sy_buf *b, unsigned cp) {
  char e[6] = {
      '\\',           'u', hexdig[(cp >> 12) & 15], hexdig[(cp >> 8) & 15], hexdig[(cp >> 4) & 15],
      hexdig[cp & 15]};
  sy_buf_append(b, e, 6);
}

void sy_json_escape(sy_buf *b, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t from = 0, i = 0;
  while (i < n) {
    if (json_plain(u[i])) {
      i++;
      continue;
    }
    sy_buf_append(b, s + from, i - from);
    unsigned c = u[i];
    size_t step = 1;
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      sy_buf_append(b, e, 2);
    } else if (c == '\n') {
      sy_buf_append(b, "\\n", 2);
    } else if (c == '\r') {
      sy_buf_append(b, "\\r", 2);
    } else if (c == '\t') {
      sy_buf_append(b, "\\t", 2);
    } else if (c < 0x20 || c == 0x7f) {
      u_escape(b, c);
    } else if ((step = utf8_len(u + i, n - i)) == 0) {
      char e[6] = {'\\', '\\', 'x', hexdig[c >> 4], hexdig[c & 15]};
      sy_buf_append(b, e, 5);
      step = 1;
    } else if (step == 2 && c == 0xc2 && u[i + 1] < 0xa0) {
      u_escape(b, u[i + 1]); /* C1 control (U+0080..U+009F): a terminal reads CSI */
    } else if (step == 3 && c == 0xe2 && u[i + 1] == 0x80 && (u[i + 2] | 1) == 0xa9) {
      u_escape(b, 0x2000u + (u[i + 2] & 0x3fu)); /* U+2028/9: line ends to JS */
    } else {
      sy_buf_append(b, s + i, step);
    }
    i += step;
    from = i;
  }
  sy_buf_append(b, s + from, n - from);
}

void sy_json_str(sy_buf *b, const char *key, const char *s, size_t n, int comma) {
  if (comma) sy_buf_append(b, ",", 1);
  sy_buf_append(b, "\"", 1);
  sy_buf_append(b, key, strlen(key));
  if (!s) {
    sy_buf_append(b, "\":null", 6);
    return;
  }
  sy_buf_append(b, "\":\"", 3);
  sy_json_escape(b, s, n);
  sy_buf_append(b, "\"", 1);
}

void sy_json_cstr(sy_buf *b, const char *key, const char *s, int comma) {
  sy_json_str(b, key, s, s ? strlen(s) : 0, comma);
}

void sy_json_u64(sy_buf *b, const char *key, uint64_t v, int comma) {
  sy_buf_appendf(b, "%s\"%s\":%llu", comma ? "," : "", key, (unsigned long long)v);
}

void sy_json_ms(sy_buf *b, const char *key, int64_t ns, int comma) {
  if (ns < 0) {
    sy_buf_appendf(b, "%s\"%s\":null", comma ? "," : "", key);
    return;
  }
  uint64_t us = (uint64_t)ns / 1000;
  sy_buf_appendf(b, "%s\"%s\":%llu.%03u", comma ? "," : "", key, (unsigned long long)(us / 1000),
                 (unsigned)(us % 1000));
}

void sy_json_client(sy_buf *b, const char *ip, int port, int comma) {
  sy_json_cstr(b, "client_ip", ip && *ip ? ip : NULL, comma);
  if (port < 0)
    sy_buf_append(b, ",\"client_port\":null", 19);
  else
    sy_buf_appendf(b, ",\"client_port\":%d", port);
}

void sy_json_time(sy_buf *b, const char *key, int comma) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[64];
  size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));
  sy_buf_appendf(b, "%s\"%s\":\"%s\"", comma ? "," : "", key, ts);
}

/* ---- access-log lines ------------------------------------------------------------ */

static void json_http_version(sy_buf *b, int major, int minor) {
  if (major < 0 || minor < 0 || major > 9 || minor > 9) {
    sy_buf_append(b, ",\"http_version\":null", 20);
    return;
  }
  char v[] = ",\"http_version\":\"M.m\"";
  v[17] = (char)('0' + major);
  v[19] = (char)('0' + minor);
  sy_buf_append(b, v, sizeof(v) - 1);
}

void sy_access_format_request(sy_buf *b, const sy_access_request *r) {
  sy_buf_append(b, "{", 1);
  sy_json_time(b, "time", 0);
  sy_buf_append(b, ",\"type\":\"request\"", 17);
  sy_json_client(b, r->client_ip, r->client_port, 1);
  sy_json_cstr(b, "method", r->method ? r->method : "-", 1);
  sy_json_str(b, "host", r->host, r->host_len, 1);
  sy_json_str(b, "path", r->path, r->path_len, 1);
  json_http_version(b, r->http_major, r->http_minor);
  sy_json_cstr(b, "request_id", r->request_id, 1);
  sy_json_cstr(b, "route", r->route, 1);
  sy_json_cstr(b, "upstream", r->upstream, 1);
  sy_buf_appendf(b, ",\"status\":%d", r->status);
  sy_json_u64(b, "bytes_in", r->bytes_in, 1);
  sy_json_u64(b, "bytes_out", r->bytes_out, 1);
  sy_json_ms(b, "duration_ms", r->duration_ns, 1);
  sy_json_ms(b, "upstream_connect_ms", r->upstream_connect_ns, 1);
  sy_json_ms(b, "upstream_first_byte_ms", r->upstream_first_byte_ns, 1);
  sy_json_cstr(b, "termination", sy_term_name(r->termination), 1);
  sy_buf_append(b, "}\n", 2);
}

void sy_access_format_tunnel(sy_buf *b, const sy_access_tunnel *t) {
  sy_buf_append(b, "{", 1);
  sy_json_time(b, "time", 0);
  sy_buf_append(b, ",\"type\":\"tunnel\"", 16);
  sy_json_client(b, t->client_ip, t->client_port, 1);
  sy_json_cstr(b, "protocol", t->protocol, 1);
  sy_json_str(b, "host", t->host, t->host_len, 1);
  sy_json_str(b, "path", t->path, t->path_len, 1);
  sy_json_cstr(b, "request_id", t->request_id, 1);
  sy_json_cstr(b, "route", t->route, 1);
  sy_json_cstr(b, "upstream", t->upstream, 1);
  sy_json_u64(b, "duration_ms", t->duration_ms, 1);
  sy_json_u64(b, "bytes_to_upstream", t->bytes_to_upstream, 1);
  sy_json_u64(b, "bytes_to_client", t->bytes_to_client, 1);
  sy_json_u64(b, "spliced", t->spliced, 1);
  sy_json_u64(b, "copied", t->copied, 1);
  sy_json_cstr(b, "closed_by", t->closed_by, 1);
  sy_json_cstr(b, "reason", t->reason, 1);
  sy_json_cstr(b, "termination", sy_term_name(t->termination), 1);
  sy_buf_append(b, "}\n", 2);
}

void sy_access_log_request(const sy_access_request *r) {
  if (!sy_access_log_enabled()) return;
  sy_buf b = {0};
  sy_access_format_request(&b, r);
  if (b.p) sy_access_log_write(b.p, b.len);
  sy_buf_free(&b);
}

void sy_access_log_tunnel(const sy_access_tunnel *t) {
  if (!sy_access_log_enabled()) return;
  sy_buf b = {0};
  sy_access_format_tunnel(&b, t);
  if (b.p) sy_access_log_write(b.p, b.len);
  sy_buf_free(&b);
}
