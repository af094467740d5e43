/* sy_load: the load generator of Switchyard's benchmarks (bench/run.sh).
 *
 * One epoll loop, one thread. Every connection opens with a WebSocket upgrade
 * request and expects a 101; what follows depends on the mode:
 *
 *   handshake  N connections: upgrade (to /sink), read the 101, close, repeat.
 *              Result: handshakes/s and handshake latency percentiles.
 *   sink       N tunnels to /sink, 64 KiB writes client -> backend.
 *   source     N tunnels to /source, the backend writes 64 KiB chunks; every
 *              byte received is checked against the pattern.
 *   echo       N tunnels to /echo, writes and reads at once; every byte echoed
 *              is checked. Throughput counts the bytes that came back.
 *   rtt        N (1 by default) tunnels to /echo, SIZE-byte (32) ping-pong;
 *              latency percentiles p50/p90/p99/p99.9.
 *   idle       N tunnels to /echo, opened (source addresses spread over
 *              127.0.0.2..127.0.0.K with bind() before connect()), held idle;
 *              the VmRSS of --pid before/after gives bytes per tunnel; then one
 *              ping on every tunnel checks that all of them still work.
 *
 * TLS (--tls): every connection is a TLS client first (OpenSSL, non-blocking SSL
 * over the same epoll sockets; SNI from --tls-sni, the chain and name checked
 * against --tls-ca when given), then the same upgrade and tunnel over it. Works
 * in every mode; the handshake mode then measures a full TLS handshake (no
 * session resumption) plus the upgrade. read_ahead is on: a read loop always
 * runs until OpenSSL reports WANT_READ (the socket is drained and what OpenSSL
 * holds is at most a partial record), or the connection goes on a "pending"
 * list served before the next epoll_wait, so no byte waits in OpenSSL's buffer
 * for an epoll event that will not come.
 *
 * --procs K (handshake, sink, source, echo): K processes share the N
 * connections, as wrk -t K does, so that a many-CPU proxy sees connections
 * made on more than one CPU; their counts and latencies are summed into the
 * one JSON line, the proxy's CPU read by the first over its window.
 *
 * --rate MB (sink, source, echo): the tunnels together move at most MB
 * megabytes per second (sink and echo: sent, source: read; a token bucket
 * per tunnel, each an equal share, refilled every millisecond), so that
 * proxies are compared at the same offered load below their saturation,
 * where CPU per GB is the cost of the traffic and not of how far each one
 * was pushed. The result says the rate asked (rate_gbytes_per_s) next to the
 * rate reached (gbytes_per_s).
 *
 * Measurement: --warmup seconds are run first and not counted; then --duration
 * seconds. With --pid, utime+stime of that process (/proc/PID/stat, all its
 * threads) is read at both ends of the measured window; --pid A,B,... sums the
 * processes listed (a proxy running several worker processes), and the idle
 * mode's memory figures read the first one. One JSON line goes to stdout.
 * Exit 0 when a result was produced, 1 when not (no progress, all connections
 * failed, bad bytes), 2 on usage errors.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -o sy_load sy_load.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define PERIOD 251
#define RBUF (256 * 1024)
#define ECHO_WINDOW (4u << 20) /* bytes in flight per echo tunnel at most */

enum mode { MODE_HANDSHAKE, MODE_SINK, MODE_SOURCE, MODE_ECHO, MODE_RTT, MODE_IDLE };
static const char *mode_names[] = {"handshake", "sink", "source", "echo", "rtt", "idle"};

enum cstate { CS_CONNECTING, CS_TLS, CS_HEAD, CS_TUNNEL, CS_DONE };

typedef struct lconn {
  int fd;
  int idx;
  enum cstate st;
  uint32_t events;                     /* the mask registered with epoll */
  uint32_t want;                       /* the mask the mode wants (TLS may add to it) */
  SSL *ssl;                            /* --tls */
  uint8_t w_wants_read, r_wants_write; /* TLS: SSL_write needs EPOLLIN / SSL_read EPOLLOUT */
  uint8_t pending;                     /* TLS: on the pending list (read more without an event) */
  char head[4096];
  size_t hlen;
  uint64_t t_open;
  uint64_t sent, rcvd; /* tunnel bytes */
  uint64_t ping_t;     /* rtt: when the outstanding ping went out (0: none) */
  size_t ping_got;
  int pinged;        /* idle: final ping done */
  uint8_t throttled; /* --rate: waits for the bucket to refill, no events armed */
  double tokens;     /* --rate: bytes this tunnel may still move now */
  uint64_t tokens_t; /* when tokens was last refilled (0: not yet) */
} lconn;

/* ---- options and state ----------------------------------------------------------- */

static enum mode mode = MODE_HANDSHAKE;
static const char *host = "127.0.0.1";
static int port = 0;
static int nconns = 0;
static double duration = 5, warmup = 1, hold = 1;
static size_t wsize = CHUNK;
static int pid = 0; /* the first of pids[] */
static int pids[16], npids;
static int spread = 0;        /* source addresses 127.0.0.2 .. 127.0.0.(1+spread); 0: none */
static int max_pending = 256; /* handshakes in flight at most (idle) */
static int nprocs = 1;
static int use_tls = 0;
static const char *tls_ca = NULL, *tls_sni = NULL;
static SSL_CTX *tls_ctx;
static int npend_tls; /* connections with pending set */
static char tls_version[32], tls_cipher[64], tls_group[32];
/* --rate: a token bucket per tunnel, each the rate's equal share (one bucket for
 * all let a few tunnels take every refill, and the others stalled in short runs).
 * Sink and echo spend it on the bytes sent, source on the bytes read (the backend
 * is held back by TCP's flow control through the proxy). It may go into debt by
 * one read or write, and holds at most 4 ms' worth, so the rate is kept over every
 * few ms. */
static double rate_bps; /* bytes/s of this process's tunnels; 0: as fast as possible */
static int nthrottled;

static char pattern[CHUNK + PERIOD];
static char rbuf[RBUF];
static int epfd;
static struct sockaddr_in dst;
static char request[512];
static size_t request_len;
static lconn **conns;
static int nopen, npending, established;
static uint64_t open_seq;

/* counters (cumulative; snapshots taken at the start of the measured window) */
static uint64_t c_ops, c_bytes, c_errors, c_bad, c_connect_fail;
static const char *first_error = NULL;
static char first_error_buf[320];
static uint64_t *lat; /* ns samples in the measured window */
static size_t nlat, caplat;
static int measuring;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void note_error(const char *what, int err) {
  c_errors++;
  if (!first_error) {
    snprintf(first_error_buf, sizeof first_error_buf, "%s%s%s", what, err ? ": " : "",
             err ? strerror(err) : "");
    first_error = first_error_buf;
  }
}

static void add_lat(uint64_t ns) {
  if (!measuring) return;
  if (nlat == caplat) {
    caplat = caplat ? caplat * 2 : 65536;
    lat = realloc(lat, caplat * sizeof *lat);
  }
  lat[nlat++] = ns;
}

static double cpu_seconds(int p) {
  if (p <= 0) return -1;
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", p);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *s = strrchr(buf, ')'); /* comm may hold spaces */
  if (!s) return -1;
  unsigned long long ut = 0, st = 0;
  /* after ')': state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
   */
  if (sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU seconds of every --pid together; -1 when one cannot be read (a sum
 * missing a worker would look like a cheaper proxy). */
static double cpu_seconds_all(void) {
  if (!npids) return -1;
  double sum = 0;
  for (int i = 0; i < npids; i++) {
    double v = cpu_seconds(pids[i]);
    if (v < 0) return -1;
    sum += v;
  }
  return sum;
}

static long status_kb(int p, const char *key) {
  if (p <= 0) return -1;
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", p);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  long v = -1;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, key, kl) && line[kl] == ':') {
      v = atol(line + kl + 1);
      break;
    }
  fclose(f);
  return v;
}

static long meminfo_kb(const char *key) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, key, kl) && line[kl] == ':') {
      v = atol(line + kl + 1);
      break;
    }
  fclose(f);
  return v;
}

/* "TCP: inuse X orphan X tw X alloc X mem PAGES" */
static long sockstat_tcp_mem_pages(void) {
  FILE *f = fopen("/proc/net/sockstat", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  while (fgets(line, sizeof line, f)) {
    char *m;
    if (!strncmp(line, "TCP:", 4) && (m = strstr(line, " mem "))) v = atol(m + 5);
  }
  fclose(f);
  return v;
}

/* ---- connections ------------------------------------------------------------------ */

static void set_events(lconn *c, uint32_t ev) {
  c->want = ev;
  if (c->ssl && c->st == CS_TUNNEL) { /* a blocked SSL op waits for the other direction */
    if (c->w_wants_read) ev |= EPOLLIN;
    if (c->r_wants_write) ev |= EPOLLOUT;
  }
  if (c->events == ev) return;
  struct epoll_event e = {.events = ev, .data.ptr = c};
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e);
  c->events = ev;
}

static void conn_close(lconn *c) {
  if (c->st == CS_CONNECTING || c->st == CS_TLS || c->st == CS_HEAD) npending--;
  if (c->st == CS_TUNNEL) established--;
  if (c->pending) npend_tls--;
  if (c->throttled) nthrottled--;
  if (c->ssl) {
    if (c->st == CS_TUNNEL || c->st == CS_DONE)
      SSL_shutdown(c->ssl); /* close_notify, best effort */
    SSL_free(c->ssl);
  }
  close(c->fd);
  conns[c->idx] = NULL;
  nopen--;
  free(c);
}

/* ---- I/O: plain sockets or TLS ----------------------------------------------------------
 * io_send/io_recv return > 0 bytes, 0 on EOF (recv), IO_AGAIN when it would block,
 * IO_ERR on an error, whose text is in io_err. */
#define IO_AGAIN (-1)
#define IO_ERR (-2)
static char io_err[200];

static void note_error_s(const char *what, const char *why) {
  c_errors++;
  if (!first_error) {
    snprintf(first_error_buf, sizeof first_error_buf, "%s: %s", what, why);
    first_error = first_error_buf;
  }
}

static void mark_pending(lconn *c) {
  if (!c->pending) {
    c->pending = 1;
    npend_tls++;
  }
}

/* An SSL call returned rc <= 0: IO_AGAIN (noting what it waits for) or IO_ERR. */
static int tls_fail(lconn *c, int rc, int writing) {
  int e = SSL_get_error(c->ssl, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    if (writing)
      c->w_wants_read = e == SSL_ERROR_WANT_READ;
    else
      c->r_wants_write = e == SSL_ERROR_WANT_WRITE;
    return IO_AGAIN;
  }
  if (e == SSL_ERROR_ZERO_RETURN) return 0;
  unsigned long le = ERR_get_error();
  if (e == SSL_ERROR_SYSCALL && !le) {
    if (!writing && errno == 0) return 0; /* EOF without close_notify */
    snprintf(io_err, sizeof io_err, "%s", errno ? strerror(errno) : "EOF");
  } else {
    char b[160] = "";
    if (le) ERR_error_string_n(le, b, sizeof b);
    snprintf(io_err, sizeof io_err, "TLS error %d: %s", e, b);
  }
  ERR_clear_error();
  return IO_ERR;
}

static ssize_t io_send(lconn *c, const void *p, size_t n) {
  if (c->ssl) {
    ERR_clear_error();
    int rc = SSL_write(c->ssl, p, (int)n);
    if (rc > 0) {
      c->w_wants_read = 0;
      return rc;
    }
    rc = tls_fail(c, rc, 1);
    return rc == 0 ? IO_ERR : rc;
  }
  for (;;) {
    ssize_t r = send(c->fd, p, n, MSG_NOSIGNAL);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return IO_AGAIN;
    snprintf(io_err, sizeof io_err, "%s", strerror(errno));
    return IO_ERR;
  }
}

static ssize_t io_recv(lconn *c, void *p, size_t n) {
  if (c->ssl) {
    ERR_clear_error();
    int rc = SSL_read(c->ssl, p, (int)(n > 0x40000000 ? 0x40000000 : n));
    if (rc > 0) {
      c->r_wants_write = 0;
      return rc;
    }
    return tls_fail(c, rc, 0);
  }
  for (;;) {
    ssize_t r = recv(c->fd, p, n, 0);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return IO_AGAIN;
    snprintf(io_err, sizeof io_err, "%s", strerror(errno));
    return IO_ERR;
  }
}

static int send_request(lconn *c) {
  ssize_t n = io_send(c, request, request_len);
  if (n != (ssize_t)request_len) {
    note_error_s("send request", n == IO_ERR ? io_err : n == IO_AGAIN ? "would block" : "short");
    return -1;
  }
  c->st = CS_HEAD;
  set_events(c, EPOLLIN);
  if (c->ssl) mark_pending(c); /* the 101 may already sit in OpenSSL's read-ahead */
  return 0;
}

/* TLS: sets up the SSL of a connected socket, or continues its handshake. */
static int tls_step(lconn *c) {
  if (!c->ssl) {
    c->ssl = SSL_new(tls_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
      note_error("SSL_new", 0);
      return -1;
    }
    if (tls_sni) {
      SSL_set_tlsext_host_name(c->ssl, tls_sni);
      if (tls_ca) SSL_set1_host(c->ssl, tls_sni);
    }
    c->st = CS_TLS;
  }
  ERR_clear_error();
  int rc = SSL_connect(c->ssl);
  if (rc == 1) {
    if (!tls_version[0]) {
      snprintf(tls_version, sizeof tls_version, "%s", SSL_get_version(c->ssl));
      snprintf(tls_cipher, sizeof tls_cipher, "%s", SSL_get_cipher_name(c->ssl));
      const char *g = SSL_group_to_name(c->ssl, SSL_get_negotiated_group(c->ssl));
      snprintf(tls_group, sizeof tls_group, "%s", g ? g : "");
    }
    return send_request(c);
  }
  int e = SSL_get_error(c->ssl, rc);
  if (e == SSL_ERROR_WANT_READ) {
    set_events(c, EPOLLIN);
    return 0;
  }
  if (e == SSL_ERROR_WANT_WRITE) {
    set_events(c, EPOLLOUT);
    return 0;
  }
  unsigned long le = ERR_get_error();
  char b[160] = "";
  if (le) ERR_error_string_n(le, b, sizeof b);
  long vr = SSL_get_verify_result(c->ssl);
  if (vr != X509_V_OK)
    snprintf(io_err, sizeof io_err, "certificate: %s", X509_verify_cert_error_string(vr));
  else
    snprintf(io_err, sizeof io_err, "error %d: %s", e, le ? b : errno ? strerror(errno) : "EOF");
  ERR_clear_error();
  note_error_s("TLS handshake", io_err);
  return -1;
}

/* After the TCP connect: TLS first, or the request. */
static int connected(lconn *c) {
  return use_tls ? tls_step(c) : send_request(c);
}

static int conn_open(int idx) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    note_error("socket", errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (spread > 0) {
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(open_seq % (uint64_t)spread));
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
      note_error("bind", errno);
      close(fd);
      return -1;
    }
  }
  open_seq++;
  lconn *c = calloc(1, sizeof *c);
  c->fd = fd;
  c->idx = idx;
  c->st = CS_CONNECTING;
  c->t_open = now_ns();
  conns[idx] = c;
  nopen++;
  npending++;
  int rc = connect(fd, (struct sockaddr *)&dst, sizeof dst);
  struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
  c->events = EPOLLOUT;
  epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
  if (rc < 0 && errno != EINPROGRESS) {
    c_connect_fail++;
    note_error("connect", errno);
    conn_close(c);
    return -1;
  }
  if (rc == 0 && connected(c) < 0) {
    conn_close(c);
    return -1;
  }
  return 0;
}

/* Checks n received bytes at stream offset off against the pattern. */
static void verify(const char *p, size_t n, uint64_t off) {
  while (n > 0) {
    size_t ph = (size_t)(off % PERIOD);
    size_t k = n < CHUNK ? n : CHUNK;
    if (memcmp(p, pattern + ph, k) != 0) {
      for (size_t i = 0; i < k; i++)
        if (p[i] != pattern[ph + i]) {
          if (!c_bad) {
            snprintf(first_error_buf, sizeof first_error_buf,
                     "wrong byte at stream offset %llu: got %u want %u",
                     (unsigned long long)(off + i), (unsigned char)p[i],
                     (unsigned char)pattern[ph + i]);
            first_error = first_error_buf;
          }
          c_bad++;
          break;
        }
    }
    p += k;
    n -= k;
    off += k;
  }
}

static void tunnel_start(lconn *c);

/* Bytes of the tunnel that arrived with the 101 head. */
static void tunnel_bytes(lconn *c, const char *p, size_t n) {
  if (mode == MODE_SOURCE || mode == MODE_ECHO) verify(p, n, c->rcvd);
  c->rcvd += n;
  if (mode == MODE_SOURCE || mode == MODE_ECHO) c_bytes += n;
}

static int on_head(lconn *c) {
  for (;;) {
    ssize_t n = io_recv(c, c->head + c->hlen, sizeof c->head - c->hlen);
    if (n == IO_AGAIN) return 0;
    if (n == IO_ERR) {
      note_error_s("recv head", io_err);
      return -1;
    }
    if (n == 0) {
      note_error("EOF before the 101", 0);
      return -1;
    }
    c->hlen += (size_t)n;
    char *end = memmem(c->head, c->hlen, "\r\n\r\n", 4);
    if (!end) {
      if (c->hlen == sizeof c->head) {
        note_error("response head too long", 0);
        return -1;
      }
      continue;
    }
    if (c->hlen < 12 || (memcmp(c->head, "HTTP/1.1 101", 12) != 0)) {
      if (!first_error) {
        char *eol = memchr(c->head, '\r', c->hlen);
        snprintf(first_error_buf, sizeof first_error_buf, "not a 101: %.*s",
                 (int)((eol ? eol : c->head + c->hlen) - c->head), c->head);
        first_error = first_error_buf;
      }
      c_errors++;
      return -1;
    }
    size_t hl = (size_t)(end + 4 - c->head);
    npending--;
    if (mode == MODE_HANDSHAKE) {
      if (measuring) c_ops++;
      add_lat(now_ns() - c->t_open);
      c->st = CS_DONE;
      return -1; /* close, and open the next one */
    }
    c->st = CS_TUNNEL;
    established++;
    if (c->hlen > hl) tunnel_bytes(c, c->head + hl, c->hlen - hl);
    tunnel_start(c);
    if (c->ssl && (c->want & EPOLLIN)) mark_pending(c); /* more may sit in OpenSSL */
    return 0;
  }
}

static void tunnel_start(lconn *c) {
  switch (mode) {
  case MODE_SINK:
    set_events(c, EPOLLOUT);
    break;
  case MODE_SOURCE:
  case MODE_IDLE:
    set_events(c, EPOLLIN);
    break;
  case MODE_ECHO:
    set_events(c, EPOLLIN | EPOLLOUT);
    break;
  case MODE_RTT:
    set_events(c, EPOLLIN | EPOLLOUT); /* the first ping goes when writable */
    break;
  case MODE_HANDSHAKE:
    break;
  }
}

/* The events a tunnel of this mode waits for while it runs. */
static uint32_t tunnel_events(void) {
  return mode == MODE_SINK ? EPOLLOUT : mode == MODE_SOURCE ? EPOLLIN : EPOLLIN | EPOLLOUT;
}

/* --rate: with the bucket empty the tunnel stops moving its paced direction (echo
 * still reads what comes back) until pace_refill gives it tokens again. */
static int paced_out(lconn *c) {
  if (!rate_bps || c->tokens > 0) return 0;
  if (!c->throttled) {
    c->throttled = 1;
    nthrottled++;
  }
  set_events(c, mode == MODE_ECHO ? EPOLLIN : 0);
  return 1;
}

static void on_event(lconn *c, uint32_t ev);

static void pace_refill(void) {
  if (!rate_bps) return;
  uint64_t t = now_ns();
  double share = rate_bps / nconns;
  for (int i = 0; i < nconns; i++) {
    lconn *c = conns[i];
    if (!c || c->st != CS_TUNNEL) continue;
    if (c->tokens_t) c->tokens += share * (double)(t - c->tokens_t) / 1e9;
    c->tokens_t = t;
    if (c->tokens > share / 250) c->tokens = share / 250; /* a late wakeup loses nothing */
    if (!c->throttled || c->tokens <= 0) continue;
    c->throttled = 0;
    nthrottled--;
    set_events(c, tunnel_events());
    on_event(c, tunnel_events()); /* TLS: OpenSSL may hold bytes no event announces */
  }
}

static int tun_send(lconn *c, size_t max) {
  if (paced_out(c)) return 0;
  size_t ph = (size_t)(c->sent % PERIOD);
  ssize_t n = io_send(c, pattern + ph, max);
  if (n == IO_AGAIN) return 0;
  if (n < 0) {
    note_error_s("send", io_err);
    return -1;
  }
  c->sent += (uint64_t)n;
  if (rate_bps) c->tokens -= (double)n;
  return (int)(n > 0);
}

static int tun_recv(lconn *c) {
  /* TLS: a record (16 KiB) per SSL_read; read until WANT_READ, or go pending. */
  int rounds = c->ssl ? 64 : 8;
  for (int i = 0; i < rounds; i++) {
    if (mode == MODE_SOURCE && paced_out(c)) return 0;
    ssize_t n = io_recv(c, rbuf, sizeof rbuf);
    if (n == IO_AGAIN) return 0;
    if (n == IO_ERR) {
      note_error_s("recv", io_err);
      return -1;
    }
    if (n == 0) {
      note_error("EOF in the tunnel", 0);
      return -1;
    }
    if (mode == MODE_SOURCE && rate_bps) c->tokens -= (double)n;
    if (mode == MODE_SINK) continue;
    verify(rbuf, (size_t)n, c->rcvd);
    c->rcvd += (uint64_t)n;
    if (mode != MODE_RTT && mode != MODE_IDLE) c_bytes += (uint64_t)n;
    if (!c->ssl && (size_t)n < sizeof rbuf) return 0;
  }
  if (c->ssl) mark_pending(c);
  return 0;
}

static int on_tunnel(lconn *c, uint32_t ev) {
  switch (mode) {
  case MODE_SINK:
    if (ev & (EPOLLERR | EPOLLHUP)) {
      note_error("tunnel closed", 0);
      return -1;
    }
    for (int i = 0; i < 16; i++) {
      uint64_t before = c->sent;
      int r = tun_send(c, wsize);
      if (r < 0) return -1;
      c_bytes += c->sent - before;
      if (r == 0) break;
    }
    return 0;
  case MODE_SOURCE:
    return tun_recv(c);
  case MODE_ECHO:
    if ((ev & EPOLLIN) && tun_recv(c) < 0) return -1;
    if (ev & EPOLLOUT) {
      for (int i = 0; i < 16 && c->sent - c->rcvd < ECHO_WINDOW; i++) {
        int r = tun_send(c, wsize);
        if (r < 0) return -1;
        if (r == 0) break;
      }
    }
    set_events(c, !c->throttled && c->sent - c->rcvd < ECHO_WINDOW ? EPOLLIN | EPOLLOUT : EPOLLIN);
    if (ev & (EPOLLERR | EPOLLHUP)) {
      note_error("tunnel closed", 0);
      return -1;
    }
    return 0;
  case MODE_RTT:
  case MODE_IDLE:
    if (ev & EPOLLIN) {
      uint64_t before = c->rcvd;
      if (tun_recv(c) < 0) return -1;
      c->ping_got += c->rcvd - before;
      if (c->ping_t && c->ping_got >= wsize) {
        if (c->ping_got > wsize) {
          note_error("echo returned more than was sent", 0);
          return -1;
        }
        if (mode == MODE_RTT) {
          if (measuring) c_ops++;
          add_lat(now_ns() - c->ping_t);
        } else {
          c->pinged = 2;
          c_ops++;
        }
        c->ping_t = 0;
        c->ping_got = 0;
        if (mode == MODE_RTT) set_events(c, EPOLLIN | EPOLLOUT);
      }
    }
    if ((ev & EPOLLOUT) && !c->ping_t && (mode == MODE_RTT || c->pinged == 1)) {
      c->ping_t = now_ns();
      ssize_t n = io_send(c, pattern + c->sent % PERIOD, wsize);
      if (n != (ssize_t)wsize) {
        note_error_s("ping send", n == IO_ERR ? io_err : "short or would block");
        return -1;
      }
      c->sent += wsize;
      set_events(c, EPOLLIN);
    }
    if (ev & (EPOLLERR | EPOLLHUP)) {
      note_error("tunnel closed", 0);
      return -1;
    }
    return 0;
  case MODE_HANDSHAKE:
    break;
  }
  return 0;
}

static void on_event(lconn *c, uint32_t ev) {
  int rc = 0;
  switch (c->st) {
  case CS_CONNECTING: {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      c_connect_fail++;
      note_error("connect", err);
      rc = -1;
    } else
      rc = connected(c);
    break;
  }
  case CS_TLS:
    rc = tls_step(c);
    break;
  case CS_HEAD:
    rc = on_head(c);
    break;
  case CS_TUNNEL:
    if (c->ssl) { /* a blocked SSL op is retried on the event it waited for */
      if ((ev & EPOLLIN) && c->w_wants_read) ev |= EPOLLOUT;
      if ((ev & EPOLLOUT) && c->r_wants_write) ev |= EPOLLIN;
      ev &= c->want | EPOLLERR | EPOLLHUP;
    }
    rc = on_tunnel(c, ev);
    if (rc == 0 && c->ssl) set_events(c, c->want); /* adds what a blocked op waits for */
    break;
  case CS_DONE:
    rc = -1;
    break;
  }
  if (rc < 0) conn_close(c);
}

/* TLS: reads what OpenSSL may hold for connections that stopped short of WANT_READ. */
static void serve_pending(void) {
  if (!npend_tls) return;
  for (int i = 0; i < nconns && npend_tls; i++) {
    lconn *c = conns[i];
    if (c && c->pending) {
      c->pending = 0;
      npend_tls--;
      on_event(c, EPOLLIN);
    }
  }
}

/* ---- results ---------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(double p) {
  if (!nlat) return -1;
  size_t i = (size_t)(p / 100.0 * (double)(nlat - 1) + 0.5);
  return (double)lat[i] / 1000.0;
}

/* --procs: what each process found, in memory shared with the first. */
#define PROC_LAT_MAX (1u << 21)
typedef struct proc_result {
  uint64_t ops, bytes, errors, bad, connect_fail, stuck, stalled, min_tunnel, max_tunnel;
  int produced, done;
  char first_error[320];
  size_t nlat;
  uint64_t lat[PROC_LAT_MAX];
} proc_result;

static proc_result *proc_results; /* nprocs slots; NULL with one process */
static int proc_index;            /* 0: the first process, which prints */
static int conns_asked;           /* --conns, over all the processes */

/* Splits the connections among nprocs processes; returns in each its index. */
static void fork_procs(void) {
  proc_results = mmap(NULL, (size_t)nprocs * sizeof *proc_results, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (proc_results == MAP_FAILED) {
    perror("mmap");
    exit(2);
  }
  int total = nconns;
  conns_asked = total;
  for (int i = 1; i < nprocs; i++) {
    pid_t child = fork();
    if (child < 0) {
      perror("fork");
      exit(2);
    }
    if (child == 0) {
      proc_index = i;
      break;
    }
  }
  nconns = total / nprocs + (proc_index < total % nprocs);
}

static void proc_store(uint64_t ops, uint64_t bytes, uint64_t stuck, uint64_t stalled,
                       uint64_t min_tunnel, uint64_t max_tunnel, int produced) {
  proc_result *r = &proc_results[proc_index];
  *r = (proc_result){.ops = ops,
                     .bytes = bytes,
                     .errors = c_errors,
                     .bad = c_bad,
                     .connect_fail = c_connect_fail,
                     .stuck = stuck,
                     .stalled = stalled,
                     .min_tunnel = min_tunnel,
                     .max_tunnel = max_tunnel,
                     .produced = produced};
  if (first_error) snprintf(r->first_error, sizeof r->first_error, "%s", first_error);
  r->nlat = nlat < PROC_LAT_MAX ? nlat : PROC_LAT_MAX;
  memcpy(r->lat, lat, r->nlat * sizeof *lat);
  r->done = 1;
}

/* The first process: waits for the others and adds what they found to its own. */
static void proc_gather(uint64_t *ops, uint64_t *bytes, uint64_t *stuck, uint64_t *stalled,
                        uint64_t *min_tunnel, uint64_t *max_tunnel, int *produced) {
  for (int i = 1; i < nprocs; i++) {
    int st;
    while (wait(&st) < 0 && errno == EINTR)
      ;
  }
  for (int i = 1; i < nprocs; i++) {
    proc_result *r = &proc_results[i];
    if (!r->done) {
      *produced = 0;
      if (!first_error) note_error("a load process ended without a result", 0);
      continue;
    }
    *ops += r->ops;
    *bytes += r->bytes;
    *stuck += r->stuck;
    *stalled += r->stalled;
    if (r->min_tunnel < *min_tunnel) *min_tunnel = r->min_tunnel;
    if (r->max_tunnel > *max_tunnel) *max_tunnel = r->max_tunnel;
    *produced = *produced && r->produced;
    c_errors += r->errors;
    c_bad += r->bad;
    c_connect_fail += r->connect_fail;
    if (!first_error && r->first_error[0]) {
      snprintf(first_error_buf, sizeof first_error_buf, "%s", r->first_error);
      first_error = first_error_buf;
    }
    if (r->nlat && nlat + r->nlat > caplat) {
      caplat = nlat + r->nlat;
      lat = realloc(lat, caplat * sizeof *lat);
    }
    memcpy(lat + nlat, r->lat, r->nlat * sizeof *lat);
    nlat += r->nlat;
  }
}

static void usage(void) {
  fprintf(stderr,
          "usage: sy_load --mode handshake|sink|source|echo|rtt|idle --port PORT [--host IP]\n"
          "               [--conns N] [--duration S] [--warmup S] [--hold S] [--size BYTES]\n"
          "               [--pid PID[,PID...]] [--spread K] [--max-pending N] [--procs K]\n"
          "               [--tls [--tls-ca FILE] [--tls-sni NAME]] [--rate MB/s]\n");
  exit(2);
}

static volatile sig_atomic_t interrupted;
static void on_sig(int s) {
  (void)s;
  interrupted = 1;
}

/* Runs the loop until deadline (ns) or until done() says so. */
static void loop_until(uint64_t deadline, int (*done)(void)) {
  struct epoll_event evs[512];
  while (!interrupted && now_ns() < deadline && !(done && done())) {
    int n = epoll_wait(epfd, evs, 512, npend_tls ? 0 : nthrottled ? 1 : 5);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("epoll_wait");
      exit(1);
    }
    for (int i = 0; i < n; i++)
      on_event(evs[i].data.ptr, evs[i].events);
    serve_pending();
    pace_refill();
    if (mode == MODE_HANDSHAKE) /* keep N handshakes going */
      for (int i = 0; i < nconns; i++)
        if (!conns[i]) conn_open(i);
  }
}

static int all_established(void) {
  return established == nconns && npending == 0;
}

static int idle_opened;
static int idle_open_more(void) {
  /* Opens the remaining tunnels, max_pending at a time. */
  while (idle_opened < nconns && npending < max_pending)
    conn_open(idle_opened++);
  return idle_opened == nconns && npending == 0;
}

static int idle_pings_done(void) {
  for (int i = 0; i < nconns; i++)
    if (conns[i] && conns[i]->pinged != 2) return 0;
  return 1;
}

int main(int argc, char **argv) {
  static struct option opts[] = {{"mode", 1, 0, 'm'},
                                 {"host", 1, 0, 'H'},
                                 {"port", 1, 0, 'p'},
                                 {"conns", 1, 0, 'c'},
                                 {"duration", 1, 0, 'd'},
                                 {"warmup", 1, 0, 'w'},
                                 {"hold", 1, 0, 'h'},
                                 {"size", 1, 0, 's'},
                                 {"pid", 1, 0, 'P'},
                                 {"spread", 1, 0, 'S'},
                                 {"max-pending", 1, 0, 'M'},
                                 {"tls", 0, 0, 'T'},
                                 {"tls-ca", 1, 0, 'C'},
                                 {"tls-sni", 1, 0, 'N'},
                                 {"procs", 1, 0, 'K'},
                                 {"rate", 1, 0, 'R'},
                                 {0, 0, 0, 0}};
  int o, size_set = 0;
  while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (o) {
    case 'm': {
      int found = 0;
      for (int i = 0; i < 6; i++)
        if (!strcmp(optarg, mode_names[i])) {
          mode = (enum mode)i;
          found = 1;
        }
      if (!found) usage();
      break;
    }
    case 'H':
      host = optarg;
      break;
    case 'p':
      port = atoi(optarg);
      break;
    case 'c':
      nconns = atoi(optarg);
      break;
    case 'd':
      duration = atof(optarg);
      break;
    case 'w':
      warmup = atof(optarg);
      break;
    case 'h':
      hold = atof(optarg);
      break;
    case 's':
      wsize = (size_t)atol(optarg);
      size_set = 1;
      break;
    case 'P': {
      char *e = optarg;
      npids = 0;
      while (*e) {
        long v = strtol(e, &e, 10);
        if (v <= 0 || npids == (int)(sizeof pids / sizeof pids[0]) || (*e && *e != ',')) usage();
        pids[npids++] = (int)v;
        if (*e == ',') e++;
      }
      pid = npids ? pids[0] : 0;
      break;
    }
    case 'S':
      spread = atoi(optarg);
      break;
    case 'M':
      max_pending = atoi(optarg);
      break;
    case 'K':
      nprocs = atoi(optarg);
      break;
    case 'R':
      rate_bps = atof(optarg) * 1e6;
      if (rate_bps <= 0) usage();
      break;
    case 'T':
      use_tls = 1;
      break;
    case 'C':
      tls_ca = optarg;
      use_tls = 1;
      break;
    case 'N':
      tls_sni = optarg;
      use_tls = 1;
      break;
    default:
      usage();
    }
  }
  if (port <= 0 || duration <= 0 || warmup < 0) usage();
  if (!size_set && (mode == MODE_RTT || mode == MODE_IDLE)) wsize = 32;
  if (wsize == 0 || wsize > CHUNK) usage();
  if (nconns <= 0)
    nconns = mode == MODE_HANDSHAKE ? 50 : mode == MODE_RTT ? 1 : mode == MODE_IDLE ? 1000 : 8;
  if (spread < 0 || spread > 250) usage();
  if (mode == MODE_IDLE && !spread) spread = 250;
  if (mode == MODE_HANDSHAKE && !spread) spread = 250; /* TIME_WAIT spreads too */
  if (rate_bps && mode != MODE_SINK && mode != MODE_SOURCE && mode != MODE_ECHO) usage();
  rate_bps /= nprocs; /* each process paces its share of the tunnels */
  if (nprocs < 1 || nprocs > 16 || nprocs > nconns ||
      (nprocs > 1 && (mode == MODE_RTT || mode == MODE_IDLE)))
    usage();

  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, on_sig);
  signal(SIGTERM, on_sig);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  for (size_t i = 0; i < sizeof pattern; i++)
    pattern[i] = (char)(i % PERIOD);
  dst.sin_family = AF_INET;
  dst.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) usage();
  const char *path = mode == MODE_SOURCE                             ? "/source"
                     : (mode == MODE_SINK || mode == MODE_HANDSHAKE) ? "/sink"
                                                                     : "/echo";
  request_len = (size_t)snprintf(request, sizeof request,
                                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                                 "Connection: Upgrade\r\n"
                                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 "Sec-WebSocket-Version: 13\r\n\r\n",
                                 path, host, port);
  if (nprocs > 1) fork_procs();
  if (use_tls) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) {
      fprintf(stderr, "sy_load: SSL_CTX_new failed\n");
      return 2;
    }
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(tls_ctx, 1);
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF); /* full handshakes */
    if (tls_ca) {
      if (SSL_CTX_load_verify_locations(tls_ctx, tls_ca, NULL) != 1) {
        fprintf(stderr, "sy_load: cannot load CA file %s\n", tls_ca);
        return 2;
      }
      SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    } else
      SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
  }
  epfd = epoll_create1(EPOLL_CLOEXEC);
  conns = calloc((size_t)nconns, sizeof *conns);

  uint64_t t_start = now_ns();
  double cpu0 = -1, cpu1 = -1, window = 0;
  long rss0 = -1, rss1 = -1, rss2 = -1, anon0 = -1, anon1 = -1, slab0 = -1, slab1 = -1, tcpm0 = -1,
       tcpm1 = -1;
  double open_s = 0;
  uint64_t b0 = 0, stalled = 0, min_tunnel = 0, max_tunnel = 0;
  uint64_t *tun0 = calloc((size_t)nconns, sizeof *tun0);
  int produced = 0;

  if (mode == MODE_IDLE) {
    rss0 = status_kb(pid, "VmRSS");
    anon0 = status_kb(pid, "RssAnon");
    slab0 = meminfo_kb("Slab");
    tcpm0 = sockstat_tcp_mem_pages();
    uint64_t t0 = now_ns();
    loop_until(t0 + (uint64_t)((duration + 60) * 1e9), idle_open_more);
    open_s = (double)(now_ns() - t0) / 1e9;
    /* let the proxy settle, then read its memory */
    loop_until(now_ns() + (uint64_t)(hold * 1e9), NULL);
    rss1 = status_kb(pid, "VmRSS");
    anon1 = status_kb(pid, "RssAnon");
    slab1 = meminfo_kb("Slab");
    tcpm1 = sockstat_tcp_mem_pages();
    /* one ping per tunnel: every tunnel must still carry bytes */
    int live = 0;
    for (int i = 0; i < nconns; i++)
      if (conns[i] && conns[i]->st == CS_TUNNEL) {
        conns[i]->pinged = 1;
        set_events(conns[i], EPOLLIN | EPOLLOUT);
        live++;
      }
    c_ops = 0;
    loop_until(now_ns() + (uint64_t)(duration * 1e9), idle_pings_done);
    rss2 = status_kb(pid, "VmRSS");
    produced = established == nconns && c_ops == (uint64_t)nconns && rss0 >= 0 && !c_bad;
    if (pid <= 0) produced = established == nconns && c_ops == (uint64_t)nconns && !c_bad;
    window = open_s;
    (void)live;
  } else {
    if (mode != MODE_HANDSHAKE) {
      for (int i = 0; i < nconns; i++)
        conn_open(i);
      loop_until(t_start + 10000000000ull, all_established);
      if (!all_established() && !first_error) note_error("tunnels not established in 10 s", 0);
    }
    if (mode == MODE_HANDSHAKE || all_established()) {
      uint64_t tw = now_ns();
      loop_until(tw + (uint64_t)(warmup * 1e9), NULL);
      measuring = 1;
      b0 = c_bytes;
      uint64_t ops0 = c_ops;
      for (int i = 0; i < nconns; i++)
        tun0[i] = conns[i] ? (mode == MODE_SINK ? conns[i]->sent : conns[i]->rcvd) : 0;
      cpu0 = cpu_seconds_all();
      uint64_t tm = now_ns();
      loop_until(tm + (uint64_t)(duration * 1e9), NULL);
      window = (double)(now_ns() - tm) / 1e9;
      cpu1 = cpu_seconds_all();
      measuring = 0;
      c_ops -= ops0;
      if (mode != MODE_HANDSHAKE && mode != MODE_RTT) {
        min_tunnel = UINT64_MAX;
        for (int i = 0; i < nconns; i++) {
          uint64_t moved =
              conns[i] ? (mode == MODE_SINK ? conns[i]->sent : conns[i]->rcvd) - tun0[i] : 0;
          if (!moved) stalled++;
          if (moved < min_tunnel) min_tunnel = moved;
          if (moved > max_tunnel) max_tunnel = moved;
        }
      }
      if (mode == MODE_HANDSHAKE || mode == MODE_RTT)
        produced = c_ops > 0;
      else
        produced = c_bytes - b0 > 0 && stalled == 0;
      if (c_bad) produced = 0;
    }
  }
  /* stuck handshakes: open for more than a second without a 101 */
  uint64_t stuck = 0, tnow = now_ns();
  for (int i = 0; i < nconns; i++)
    if (conns[i] && conns[i]->st != CS_TUNNEL && tnow - conns[i]->t_open > 1000000000ull) stuck++;
  if (proc_results) {
    uint64_t bytes = c_bytes - b0;
    if (proc_index > 0) {
      proc_store(c_ops, bytes, stuck, stalled, min_tunnel, max_tunnel, produced);
      for (int i = 0; i < nconns; i++)
        if (conns[i]) conn_close(conns[i]);
      return 0;
    }
    proc_gather(&c_ops, &bytes, &stuck, &stalled, &min_tunnel, &max_tunnel, &produced);
    c_bytes = b0 + bytes;
  }

  if (nlat) qsort(lat, nlat, sizeof *lat, cmp_u64);
  double gb = (double)(c_bytes - b0) / 1e9;
  double cpu = (cpu0 >= 0 && cpu1 >= 0) ? cpu1 - cpu0 : -1;
  printf("{\"mode\":\"%s\",\"conns\":%d,\"size\":%zu,\"window_s\":%.3f,\"ok\":%s", mode_names[mode],
         proc_results ? conns_asked : nconns, wsize, window, produced ? "true" : "false");
  if (nprocs > 1) printf(",\"procs\":%d", nprocs);
  if (use_tls)
    printf(",\"tls\":true,\"tls_version\":\"%s\",\"tls_cipher\":\"%s\",\"tls_group\":\"%s\"",
           tls_version, tls_cipher, tls_group);
  if (mode == MODE_HANDSHAKE || mode == MODE_RTT) {
    printf(",\"ops\":%llu,\"ops_per_s\":%.1f", (unsigned long long)c_ops,
           window > 0 ? (double)c_ops / window : 0);
    printf(",\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f",
           pct(50), pct(90), pct(99), pct(99.9), pct(100));
    if (cpu >= 0 && c_ops) printf(",\"cpu_us_per_op\":%.3f", cpu * 1e6 / (double)c_ops);
  } else if (mode == MODE_IDLE) {
    printf(",\"tunnels\":%d,\"open_s\":%.3f,\"rss_kb_before\":%ld,\"rss_kb_idle\":%ld,"
           "\"rss_kb_after_ping\":%ld,\"rss_anon_kb_before\":%ld,\"rss_anon_kb_idle\":%ld",
           established, open_s, rss0, rss1, rss2, anon0, anon1);
    if (rss0 >= 0 && rss1 >= 0 && nconns)
      printf(",\"rss_bytes_per_tunnel\":%.1f", (double)(rss1 - rss0) * 1024.0 / nconns);
    printf(",\"slab_kb_delta\":%ld,\"tcp_mem_pages_delta\":%ld,\"pings_ok\":%llu", slab1 - slab0,
           tcpm1 - tcpm0, (unsigned long long)c_ops);
  } else {
    printf(",\"bytes\":%llu,\"gbytes_per_s\":%.4f,\"gbit_per_s\":%.3f,\"stalled_tunnels\":%llu,"
           "\"min_tunnel_bytes\":%llu,\"max_tunnel_bytes\":%llu",
           (unsigned long long)(c_bytes - b0), window > 0 ? gb / window : 0,
           window > 0 ? gb * 8 / window : 0, (unsigned long long)stalled,
           (unsigned long long)min_tunnel, (unsigned long long)max_tunnel);
    if (cpu >= 0 && gb > 0) printf(",\"cpu_s_per_gb\":%.4f", cpu / gb);
    if (rate_bps) printf(",\"rate_gbytes_per_s\":%.4f", rate_bps * nprocs / 1e9);
  }
  if (cpu >= 0) printf(",\"cpu_s\":%.3f,\"cpu_util\":%.3f", cpu, window > 0 ? cpu / window : 0);
  printf(",\"errors\":%llu,\"connect_failures\":%llu,\"bad_bytes_events\":%llu,\"stuck\":%llu",
         (unsigned long long)c_errors, (unsigned long long)c_connect_fail,
         (unsigned long long)c_bad, (unsigned long long)stuck);
  if (first_error) {
    printf(",\"first_error\":\"");
    for (const char *p = first_error; *p; p++)
      if (*p == '"' || *p == '\\')
        printf("\\%c", *p);
      else if ((unsigned char)*p >= 0x20)
        putchar(*p);
    printf("\"");
  }
  printf("}\n");
  fflush(stdout);
  for (int i = 0; i < nconns; i++)
    if (conns[i]) conn_close(conns[i]);
  return produced ? 0 : 1;
}
