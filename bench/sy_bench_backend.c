/* sy_bench_backend: the backend for Switchyard's benchmarks (bench/run.sh).
 *
 * One epoll loop, one thread, level-triggered, non-blocking sockets.
 *   - an HTTP request with an Upgrade header gets a 101 (WebSocket accept key
 *     computed from Sec-WebSocket-Key when there is one), then by path:
 *       /sink    reads and discards (recv MSG_TRUNC: no copy)
 *       /source  writes 64 KiB chunks of the test pattern for as long as it can
 *       /echo    writes back what it reads (reads only when nothing is pending)
 *   - any other request gets a small 200 with keep-alive (for wrk); pipelined
 *     requests are answered in order.
 * The byte pattern is pat(o) = o % 251 over the stream offset o, so the load
 * generator can check every byte it gets from /source and /echo.
 * SIGUSR1 prints one line of cumulative counts to stdout, "http=N upgrades=N
 * echoed=BYTES" (bench/callgrind.sh reads it around its callgrind windows: the
 * backend sees every operation a proxy completes, whichever proxy it is).
 *
 *   sy_bench_backend [-a ADDR] -p PORT
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -o sy_bench_backend sy_bench_backend.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define PERIOD 251
#define HEADMAX 8192

enum mode { M_HTTP, M_SINK, M_SOURCE, M_ECHO };

typedef struct bconn {
  int fd;
  enum mode mode;
  uint32_t events;
  char *buf; /* HTTP head accumulation, then echo buffer */
  size_t len, cap;
  size_t off;       /* echo: bytes of buf already written */
  uint64_t src_off; /* source: stream offset */
  char *out;        /* pending HTTP response bytes */
  size_t out_len, out_off;
} bconn;

static char pattern[CHUNK + PERIOD];
static int epfd;
static volatile sig_atomic_t stop;
static volatile sig_atomic_t report;
static unsigned long long n_http, n_upgrades, n_echoed;

static void on_usr1(int sig) {
  (void)sig;
  report = 1;
}

/* ---- SHA-1 + base64 for Sec-WebSocket-Accept (RFC 6455 §4.2.2) -------------- */

static uint32_t rol(uint32_t v, int n) {
  return (v << n) | (v >> (32 - n));
}

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
  uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
  unsigned char block[64];
  size_t total = ((len + 8) / 64 + 1) * 64;
  for (size_t base = 0; base < total; base += 64) {
    for (size_t i = 0; i < 64; i++) {
      size_t p = base + i;
      if (p < len)
        block[i] = msg[p];
      else if (p == len)
        block[i] = 0x80;
      else if (p >= total - 8)
        block[i] = (unsigned char)(((uint64_t)len * 8) >> (8 * (total - 1 - p)));
      else
        block[i] = 0;
    }
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
      w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
             (uint32_t)block[4 * i + 2] << 8 | block[4 * i + 3];
    for (int i = 16; i < 80; i++)
      w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
      uint32_t f, k;
      if (i < 20) {
        f = (b & c) | (~b & d);
        k = 0x5A827999;
      } else if (i < 40) {
        f = b ^ c ^ d;
        k = 0x6ED9EBA1;
      } else if (i < 60) {
        f = (b & c) | (b & d) | (c & d);
        k = 0x8F1BBCDC;
      } else {
        f = b ^ c ^ d;
        k = 0xCA62C1D6;
      }
      uint32_t t = rol(a, 5) + f + e + k + w[i];
      e = d;
      d = c;
      c = rol(b, 30);
      b = a;
      a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
  }
  for (int i = 0; i < 5; i++) {
    out[4 * i] = (unsigned char)(h[i] >> 24);
    out[4 * i + 1] = (unsigned char)(h[i] >> 16);
    out[4 * i + 2] = (unsigned char)(h[i] >> 8);
    out[4 * i + 3] = (unsigned char)h[i];
  }
}

static void ws_accept(const char *key, size_t klen, char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  unsigned char in[128], d[20];
  if (klen > sizeof in - (sizeof guid - 1)) klen = sizeof in - (sizeof guid - 1);
  memcpy(in, key, klen);
  memcpy(in + klen, guid, sizeof guid - 1);
  sha1(in, klen + sizeof guid - 1, d);
  int o = 0;
  for (int i = 0; i < 20; i += 3) {
    uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < 20 ? (uint32_t)d[i + 1] << 8 : 0) |
                 (i + 2 < 20 ? d[i + 2] : 0);
    out[o++] = b64[(v >> 18) & 63];
    out[o++] = b64[(v >> 12) & 63];
    out[o++] = i + 1 < 20 ? b64[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < 20 ? b64[v & 63] : '=';
  }
  out[o] = 0;
}

/* ---- connections ---------------------------------------------------------------- */

static void set_events(bconn *c, uint32_t ev) {
  if (c->events == ev) return;
  struct epoll_event e = {.events = ev, .data.ptr = c};
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e);
  c->events = ev;
}

static void conn_free(bconn *c) {
  close(c->fd);
  free(c->buf);
  free(c->out);
  free(c);
}

/* Finds header NAME (case-insensitive) in head [p, end); returns value and length. */
static const char *header(const char *p, const char *end, const char *name, size_t *vlen) {
  size_t nl = strlen(name);
  const char *line = memchr(p, '\n', (size_t)(end - p));
  while (line && line + 1 < end) {
    line++;
    const char *eol = memchr(line, '\n', (size_t)(end - line));
    if (!eol) break;
    if ((size_t)(eol - line) > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0) {
      const char *v = line + nl + 1;
      while (v < eol && (*v == ' ' || *v == '\t'))
        v++;
      const char *ve = eol;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
        ve--;
      *vlen = (size_t)(ve - v);
      return v;
    }
    line = eol;
  }
  return NULL;
}

static void out_append(bconn *c, const char *s, size_t n) {
  if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
  c->out = realloc(c->out, c->out_len + n);
  memcpy(c->out + c->out_len, s, n);
  c->out_len += n;
}

/* 0: keep going, -1: close. */
static int out_flush(bconn *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return 0;
      return -1;
    }
    c->out_off += (size_t)n;
  }
  return 0;
}

static int source_pump(bconn *c) {
  for (int i = 0; i < 16; i++) {
    ssize_t n = send(c->fd, pattern + c->src_off % PERIOD, CHUNK, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN ? 0 : -1;
    }
    c->src_off += (uint64_t)n;
  }
  return 0;
}

/* Echo: write what is pending; read more only when nothing is. */
static int echo_pump(bconn *c) {
  for (int i = 0; i < 16; i++) {
    while (c->off < c->len) {
      ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
          set_events(c, EPOLLOUT);
          return 0;
        }
        return -1;
      }
      c->off += (size_t)n;
      n_echoed += (unsigned long long)n;
    }
    c->off = c->len = 0;
    ssize_t n = recv(c->fd, c->buf, c->cap, 0);
    if (n == 0) return -1;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        set_events(c, EPOLLIN);
        return 0;
      }
      return -1;
    }
    c->len = (size_t)n;
  }
  set_events(c, c->off < c->len ? EPOLLOUT : EPOLLIN);
  return 0;
}

static const char ok_resp[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
    "Connection: keep-alive\r\n\r\nhello, world\n";

/* Parses complete request heads in buf. -1: close. */
static int http_process(bconn *c) {
  for (;;) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) {
      if (c->len >= HEADMAX) return -1;
      return 0;
    }
    size_t hlen = (size_t)(end + 4 - c->buf);
    const char *hend = end + 2;
    size_t vl = 0;
    const char *up = header(c->buf, hend, "Upgrade", &vl);
    if (up) {
      const char *sp = memchr(c->buf, ' ', hlen);
      enum mode m = M_SINK;
      if (sp && strncmp(sp + 1, "/source", 7) == 0)
        m = M_SOURCE;
      else if (sp && strncmp(sp + 1, "/echo", 5) == 0)
        m = M_ECHO;
      char resp[512], acc[29];
      size_t kl = 0;
      const char *key = header(c->buf, hend, "Sec-WebSocket-Key", &kl);
      int n;
      /* Answer with the first token offered. */
      size_t tl = 0;
      while (tl < vl && up[tl] != ',' && up[tl] != ' ')
        tl++;
      if (key) {
        ws_accept(key, kl, acc);
        n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %.*s\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     (int)tl, up, acc);
      } else {
        n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %.*s\r\n"
                     "Connection: Upgrade\r\n\r\n",
                     (int)tl, up);
      }
      out_append(c, resp, (size_t)n);
      n_upgrades++;
      if (out_flush(c) < 0) return -1;
      if (c->out_off < c->out_len) return -1; /* a 101 that does not fit: give up */
      /* Bytes past the head belong to the tunnel. */
      size_t rest = c->len - hlen;
      memmove(c->buf, c->buf + hlen, rest);
      c->len = rest;
      c->mode = m;
      if (m == M_ECHO) {
        if (c->cap < CHUNK) {
          c->buf = realloc(c->buf, CHUNK);
          c->cap = CHUNK;
        }
        c->off = 0;
        set_events(c, EPOLLOUT);
        return echo_pump(c);
      }
      c->len = 0;
      if (m == M_SOURCE) {
        set_events(c, EPOLLOUT);
        return source_pump(c);
      }
      set_events(c, EPOLLIN);
      return 0;
    }
    out_append(c, ok_resp, sizeof ok_resp - 1);
    n_http++;
    memmove(c->buf, c->buf + hlen, c->len - hlen);
    c->len -= hlen;
  }
}

static void on_event(bconn *c, uint32_t ev) {
  int rc = 0;
  switch (c->mode) {
  case M_HTTP:
    if (ev & EPOLLIN) {
      for (;;) {
        if (c->len == c->cap) {
          rc = -1;
          break;
        }
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n == 0) {
          rc = -1;
          break;
        }
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno != EAGAIN) rc = -1;
          break;
        }
        c->len += (size_t)n;
        if ((size_t)n < 4096) break;
      }
      if (rc == 0) rc = http_process(c);
    }
    if (rc == 0 && c->mode == M_HTTP) {
      if (out_flush(c) < 0) rc = -1;
      if (rc == 0) set_events(c, c->out_off < c->out_len ? EPOLLOUT : EPOLLIN);
    }
    if (rc == 0 && (ev & (EPOLLERR | EPOLLHUP)) && c->mode == M_HTTP) rc = -1;
    break;
  case M_SINK:
    for (int i = 0; i < 16; i++) {
      ssize_t n = recv(c->fd, NULL, 1 << 20, MSG_TRUNC);
      if (n == 0) {
        rc = -1;
        break;
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) rc = -1;
        break;
      }
    }
    break;
  case M_SOURCE:
    if (ev & (EPOLLERR | EPOLLHUP))
      rc = -1;
    else
      rc = source_pump(c);
    break;
  case M_ECHO:
    rc = echo_pump(c);
    break;
  }
  if (rc < 0) conn_free(c);
}

int main(int argc, char **argv) {
  const char *addr = "127.0.0.1";
  int port = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-a") && i + 1 < argc)
      addr = argv[++i];
    else if (!strcmp(argv[i], "-p") && i + 1 < argc)
      port = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [-a ADDR] -p PORT\n", argv[0]);
      return 2;
    }
  }
  if (port <= 0) {
    fprintf(stderr, "usage: %s [-a ADDR] -p PORT\n", argv[0]);
    return 2;
  }
  for (size_t i = 0; i < sizeof pattern; i++)
    pattern[i] = (char)(i % PERIOD);
  signal(SIGPIPE, SIG_IGN);
  /* SIGUSR1 stays blocked except inside epoll_pwait: a report never waits for the
   * next event (under callgrind the proxy may send none for a while). */
  sigset_t usr1, waitmask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, &waitmask);
  sigdelset(&waitmask, SIGUSR1);
  struct sigaction sa_usr1 = {.sa_handler = on_usr1};
  sigaction(SIGUSR1, &sa_usr1, NULL);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1 ||
      bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 4096) < 0) {
    perror("listen");
    return 1;
  }
  epfd = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(epfd, EPOLL_CTL_ADD, ls, &le);
  struct epoll_event evs[256];
  while (!stop) {
    if (report) {
      report = 0;
      printf("http=%llu upgrades=%llu echoed=%llu\n", n_http, n_upgrades, n_echoed);
      fflush(stdout);
    }
    int n = epoll_pwait(epfd, evs, 256, -1, &waitmask);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      if (!evs[i].data.ptr) {
        for (int k = 0; k < 64; k++) {
          int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          bconn *c = calloc(1, sizeof *c);
          c->fd = fd;
          c->mode = M_HTTP;
          c->cap = HEADMAX;
          c->buf = malloc(c->cap);
          c->events = EPOLLIN;
          struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
          epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
        }
        continue;
      }
      on_event(evs[i].data.ptr, evs[i].events);
    }
  }
  return 0;
}
