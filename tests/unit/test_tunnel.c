/* Tunnel: real loopback TCP on both sides, client_peer <-> [tunnel] <-> upstream_peer.
 *
 * The peers are driven either non-blockingly from inside the loop (fx_wait runs the
 * loop until a condition, which may itself do peer I/O, holds) or from pthreads
 * with blocking sockets bounded by SO_RCVTIMEO/SO_SNDTIMEO. Threads never call
 * ck_assert (CK_NOFORK would longjmp across threads): they record, main asserts.
 * Every wait has a deadline; nothing sleeps to synchronise. */
#include "switchyard/tunnel.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024u * 1024u)
#define WAIT_MS 15000

/* ---- deterministic data: byte i of stream `seed` is computable from i alone, so a
 * sender may start mid-stream and a receiver can verify without a copy ---- */

static uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static void gen(uint64_t seed, size_t off, unsigned char *buf, size_t len) {
  size_t i = 0;
  while (i < len) {
    size_t pos = off + i;
    uint64_t w = splitmix64(seed * 0x100000001b3ull + pos / 8);
    for (size_t b = pos % 8; b < 8 && i < len; b++, i++)
      buf[i] = (unsigned char)(w >> (8 * b));
  }
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- sockets ---- */

static void set_timeouts(int fd, int ms) {
  struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* A connected loopback pair on an ephemeral port: *connected, *accepted. */
static void tcp_pair(int *connected, int *accepted) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(l, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(sa);
  ck_assert_int_eq(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
  ck_assert_int_eq(listen(l, 1), 0);
  ck_assert_int_eq(getsockname(l, (struct sockaddr *)&sa, &len), 0);
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(c, 0);
  ck_assert_int_eq(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
  int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  ck_assert_int_ge(a, 0);
  close(l);
  set_timeouts(c, WAIT_MS);
  set_timeouts(a, WAIT_MS);
  *connected = c;
  *accepted = a;
}

static void rst_close(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
  close(fd);
}

static int fd_is_open(int fd) {
  return fcntl(fd, F_GETFD) >= 0;
}

/* ---- fixture ---- */

/* Where the loop blocks (tunnel.h): main runs every test in each mode. */
static enum sy_ev_mode g_mode = SY_EV_LOOP;

typedef struct fx {
  uv_loop_t loop;
  sy_pipe_pool *pool;
  sy_evset *ev;
  sy_tunnel_hub *hub;
  int client_peer, upstream_peer; /* the test's ends */
  int client_fd, upstream_fd;     /* the tunnel's ends */
  sy_tunnel *t;
  enum sy_ev_mode mode;
  int done_calls;
  int fds_closed_at_done;
  int close_from_cb; /* call sy_tunnel_close inside done_cb: must be a no-op */
  sy_tunnel_stats st;
  char reason[32], closed_by[16];
  int progress_calls, progress_after_done, progress_other;
  sy_tunnel_bytes progress; /* sum of the progress reports */
} fx;

static void fx_on_progress(sy_tunnel *t, const sy_tunnel_bytes *d, void *arg) {
  fx *f = arg;
  f->progress_calls++;
  f->progress_after_done += f->done_calls > 0;
  f->progress_other += t != f->t;
  f->progress.c2u += d->c2u;
  f->progress.u2c += d->u2c;
  f->progress.spliced += d->spliced;
  f->progress.copied += d->copied;
}

static void fx_on_done(sy_tunnel *t, const sy_tunnel_stats *st, void *arg) {
  fx *f = arg;
  f->done_calls++;
  f->st = *st;
  snprintf(f->reason, sizeof(f->reason), "%s", st->reason ? st->reason : "(null)");
  snprintf(f->closed_by, sizeof(f->closed_by), "%s", st->closed_by ? st->closed_by : "(null)");
  f->st.reason = f->reason;
  f->st.closed_by = f->closed_by;
  f->fds_closed_at_done = !fd_is_open(f->client_fd) && !fd_is_open(f->upstream_fd);
  if (f->close_from_cb) sy_tunnel_close(t, "again");
}

static void fx_init(fx *f) {
  memset(f, 0, sizeof(*f));
  ck_assert_int_eq(uv_loop_init(&f->loop), 0);
  f->pool = sy_pipe_pool_new(16);
  ck_assert_ptr_nonnull(f->pool);
  f->ev = sy_evset_new(&f->loop);
  ck_assert_ptr_nonnull(f->ev);
  f->hub = sy_tunnel_hub_new(f->ev, f->pool, fx_on_done);
  ck_assert_ptr_nonnull(f->hub);
  f->mode = g_mode;
  sy_evset_set_mode(f->ev, f->mode);
  tcp_pair(&f->client_peer, &f->client_fd);
  tcp_pair(&f->upstream_fd, &f->upstream_peer);
}

static void fx_start(fx *f, const sy_tunnel_opts *o, const void *to_up, size_t to_up_len,
                     const void *to_cl, size_t to_cl_len) {
  /* The OWN pass also hands the fds over as the proxy does (opts.exclusive:
   * already non-blocking, no other descriptor), the LOOP pass as plain fds. */
  sy_tunnel_opts x = o ? *o : (sy_tunnel_opts){0};
  if (f->mode == SY_EV_OWN) {
    x.exclusive = 1;
    ck_assert_int_eq(fcntl(f->client_fd, F_SETFL, fcntl(f->client_fd, F_GETFL) | O_NONBLOCK), 0);
    ck_assert_int_eq(fcntl(f->upstream_fd, F_SETFL, fcntl(f->upstream_fd, F_GETFL) | O_NONBLOCK),
                     0);
  }
  f->t = sy_tunnel_start(f->hub, f->client_fd, f->upstream_fd, to_up, to_up_len, to_cl, to_cl_len,
                         o || x.exclusive ? &x : NULL, 0, f);
  ck_assert_ptr_nonnull(f->t);
}

static void fx_setup(fx *f, const sy_tunnel_opts *o) {
  fx_init(f);
  fx_start(f, o, NULL, 0, NULL, 0);
}

/* Runs the loop until cond(arg) holds or the deadline passes. A turn blocks
 * (at most 10 ms) where the hub's mode says, so an idle loop costs no CPU. */
static int fx_wait(fx *f, int (*cond)(fx *, void *), void *arg, uint64_t timeout_ms) {
  uint64_t deadline = now_ms() + timeout_ms;
  for (;;) {
    if (cond(f, arg)) return 1;
    if (now_ms() >= deadline) return 0;
    sy_evset_turn(f->ev, 10);
    if (f->mode == SY_EV_OWN) /* forced, and honoured while the hub has tunnels */
      ck_assert_int_eq(sy_evset_owns_loop(f->ev), sy_tunnel_hub_count(f->hub) > 0);
  }
}

static int cond_done(fx *f, void *arg) {
  return f->done_calls > 0;
}

static sy_tunnel_stats fx_stats(fx *f) {
  sy_tunnel_stats st;
  sy_tunnel_stats_get(f->t, &st);
  return st;
}

static sy_pipe_pool_stats fx_pool(fx *f) {
  sy_pipe_pool_stats st;
  sy_pipe_pool_stats_get(f->pool, &st);
  return st;
}

/* Nothing is ready in the loop: no poll event pending, nothing run by NOWAIT turns. */
static void assert_quiet(fx *f) {
  uint64_t w = fx_stats(f).wakeups;
  for (int i = 0; i < 5; i++)
    sy_evset_turn(f->ev, 0);
  ck_assert_uint_eq(fx_stats(f).wakeups, w);
  struct pollfd p = {.fd = sy_evset_backend_fd(f->ev), .events = POLLIN};
  ck_assert_int_eq(poll(&p, 1, 0), 0);
}

static void fx_done_checks(fx *f) {
  ck_assert_int_eq(f->done_calls, 1);
  ck_assert(f->fds_closed_at_done);
  sy_pipe_pool_stats ps = fx_pool(f);
  ck_assert_uint_eq(ps.in_use, 0);
}

static void fx_teardown(fx *f) {
  if (f->t && !f->done_calls) {
    sy_tunnel_close(f->t, "teardown");
    fx_wait(f, cond_done, NULL, WAIT_MS);
  }
  ck_assert_int_le(f->done_calls, 1);
  if (f->client_peer >= 0) close(f->client_peer);
  if (f->upstream_peer >= 0) close(f->upstream_peer);
  ck_assert_uint_eq(sy_tunnel_hub_count(f->hub), 0);
  sy_tunnel_hub_free(f->hub);
  sy_evset_free(f->ev);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&f->loop), 0);
  ck_assert_uint_eq(fx_pool(f).in_use, 0);
  sy_pipe_pool_free(f->pool);
}

/* ---- in-loop peer I/O (non-blocking via MSG_DONTWAIT) ---- */

typedef struct xfer {
  int from, to; /* peer fds */
  uint64_t seed;
  size_t total; /* bytes to send (0: only receive) */
  size_t sent, received;
  size_t recv_off; /* stream offset of the first received byte */
  int eof, err;
  int mismatch;
  int send_blocked; /* last send attempt got EAGAIN */
} xfer;

static void xfer_send(xfer *x) {
  unsigned char buf[32 * 1024];
  x->send_blocked = 0;
  while (x->sent < x->total) {
    size_t n = x->total - x->sent < sizeof(buf) ? x->total - x->sent : sizeof(buf);
    gen(x->seed, x->sent, buf, n);
    ssize_t w = send(x->from, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN)
        x->send_blocked = 1;
      else
        x->err = errno;
      return;
    }
    x->sent += (size_t)w;
  }
}

static void xfer_recv(xfer *x) {
  unsigned char buf[64 * 1024], want[64 * 1024];
  while (!x->eof && !x->err) {
    ssize_t r = recv(x->to, buf, sizeof(buf), MSG_DONTWAIT);
    if (r == 0) x->eof = 1;
    if (r < 0 && errno != EAGAIN) x->err = errno;
    if (r <= 0) return;
    gen(x->seed, x->recv_off + x->received, want, (size_t)r);
    if (memcmp(buf, want, (size_t)r) != 0) x->mismatch = 1;
    x->received += (size_t)r;
  }
}

/* Moves x->total bytes from x->from to x->to through the tunnel. */
static int cond_xfer_received(fx *f, void *arg) {
  xfer *x = arg;
  xfer_send(x);
  xfer_recv(x);
  return x->received >= x->total || x->err || x->mismatch;
}

static int cond_xfer_eof(fx *f, void *arg) {
  xfer *x = arg;
  xfer_recv(x);
  return x->eof || x->err;
}

/* Reads exactly len bytes (or up to EOF/error) from fd, driving the loop. */
typedef struct rd {
  int fd;
  unsigned char *buf;
  size_t len, got;
  int eof, err;
} rd;

static int cond_rd(fx *f, void *arg) {
  rd *r = arg;
  while (r->got < r->len) {
    ssize_t n = recv(r->fd, r->buf + r->got, r->len - r->got, MSG_DONTWAIT);
    if (n == 0) r->eof = 1;
    if (n < 0 && errno != EAGAIN) r->err = errno;
    if (n <= 0) break;
    r->got += (size_t)n;
  }
  return r->got == r->len || r->eof || r->err;
}

/* Next recv outcome: 1 = EOF, 2 = error (r->err), 0 = still open. */
static int cond_end(fx *f, void *arg) {
  rd *r = arg;
  unsigned char b[4096];
  for (;;) {
    ssize_t n = recv(r->fd, b, sizeof(b), MSG_DONTWAIT);
    if (n > 0) {
      r->got += (size_t)n;
      continue;
    }
    if (n == 0) r->eof = 1;
    if (n < 0 && errno != EAGAIN) r->err = errno;
    return r->eof || r->err;
  }
}

static void send_all(int fd, const void *p, size_t len) {
  const char *c = p;
  while (len > 0) {
    ssize_t n = send(fd, c, len, MSG_NOSIGNAL);
    ck_assert_int_gt(n, 0);
    c += n;
    len -= (size_t)n;
  }
}

/* ---- threaded peers (blocking sockets) ---- */

typedef struct flow {
  int fd;
  uint64_t seed;
  size_t off, n; /* stream range [off, off+n) */
  int shut;      /* sender: SHUT_WR when done; receiver: SHUT_WR after EOF */
  size_t moved;
  int err, eof, mismatch;
  pthread_t th;
} flow;

static void *sender_main(void *arg) {
  flow *fl = arg;
  unsigned char *buf = malloc(96 * 1024);
  /* odd chunk sizes so that segment and pipe boundaries never line up */
  const size_t sizes[] = {65536, 1, 4093, 50021, 98304, 777};
  for (unsigned k = 0; fl->moved < fl->n && buf; k++) {
    size_t want = sizes[k % 6];
    if (want > fl->n - fl->moved) want = fl->n - fl->moved;
    gen(fl->seed, fl->off + fl->moved, buf, want);
    size_t put = 0;
    while (put < want) {
      ssize_t w = send(fl->fd, buf + put, want - put, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        fl->err = errno;
        goto out;
      }
      put += (size_t)w;
    }
    fl->moved += want;
  }
  if (fl->shut && shutdown(fl->fd, SHUT_WR) < 0) fl->err = errno;
out:
  free(buf);
  return NULL;
}

static void *receiver_main(void *arg) {
  flow *fl = arg;
  unsigned char *buf = malloc(128 * 1024), *want = malloc(128 * 1024);
  while (buf && want) {
    ssize_t r = recv(fl->fd, buf, 128 * 1024, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      fl->err = errno;
      break;
    }
    if (r == 0) {
      fl->eof = 1;
      if (fl->shut && shutdown(fl->fd, SHUT_WR) < 0) fl->err = errno;
      break;
    }
    if (fl->moved + (size_t)r > fl->n) {
      fl->mismatch = 1;
      break;
    }
    gen(fl->seed, fl->off + fl->moved, want, (size_t)r);
    if (memcmp(buf, want, (size_t)r) != 0 && !fl->mismatch) fl->mismatch = 1;
    fl->moved += (size_t)r;
  }
  free(buf);
  free(want);
  return NULL;
}

static void flow_start(flow *fl, void *(*fn)(void *)) {
  ck_assert_int_eq(pthread_create(&fl->th, NULL, fn, fl), 0);
}

static void flow_join_ok(flow *fl, int receiver) {
  pthread_join(fl->th, NULL);
  ck_assert_msg(fl->err == 0, "flow error %s", strerror(fl->err));
  ck_assert_uint_eq(fl->moved, fl->n);
  ck_assert(!fl->mismatch);
  if (receiver) ck_assert(fl->eof);
}

/* ---- tests ---- */

/* _i: 0 = splice, 1 = force_copy */
START_TEST(test_duplex_32mib_each_way) {
  const size_t n = 32 * MIB;
  fx f;
  sy_tunnel_opts o = {.idle_timeout_ms = 10000, .force_copy = _i};
  fx_setup(&f, &o);
  flow c_tx = {.fd = f.client_peer, .seed = 1, .n = n, .shut = 1};
  flow u_rx = {.fd = f.upstream_peer, .seed = 1, .n = n};
  flow u_tx = {.fd = f.upstream_peer, .seed = 2, .n = n, .shut = 1};
  flow c_rx = {.fd = f.client_peer, .seed = 2, .n = n};
  flow_start(&c_tx, sender_main);
  flow_start(&u_rx, receiver_main);
  flow_start(&u_tx, sender_main);
  flow_start(&c_rx, receiver_main);
  int ok = fx_wait(&f, cond_done, NULL, WAIT_MS);
  flow_join_ok(&c_tx, 0);
  flow_join_ok(&u_tx, 0);
  flow_join_ok(&u_rx, 1);
  flow_join_ok(&c_rx, 1);
  ck_assert(ok);
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "eof");
  ck_assert(!strcmp(f.closed_by, "client") || !strcmp(f.closed_by, "upstream"));
  ck_assert_uint_eq(f.st.bytes_c2u, n);
  ck_assert_uint_eq(f.st.bytes_u2c, n);
  if (_i) {
    ck_assert_uint_eq(f.st.copied, 2 * n);
    ck_assert_uint_eq(f.st.spliced, 0);
  } else { /* bulk is spliced; only the reads that looked like small messages copy */
    ck_assert_uint_eq(f.st.spliced + f.st.copied, 2 * n);
    ck_assert_uint_le(f.st.copied, 2 * n / 16);
  }
  sy_pipe_pool_stats ps = fx_pool(&f);
  /* pipes are reused, not made per chunk */
  ck_assert_uint_le(ps.created, 2);
  if (_i) ck_assert_uint_eq(ps.created, 0);
  fx_teardown(&f);
}
END_TEST

/* _i: 0 = splice, 1 = force_copy. The pending bytes are larger than the socket
 * buffers, and the peers already sent data before the tunnel started. */
START_TEST(test_pending_bytes_first_and_in_order) {
  const size_t pend_up = 4 * MIB + 3, pend_cl = 3 * MIB + 1, early = 32 * 1024, more = 1 * MIB;
  fx f;
  fx_init(&f);
  unsigned char *up = malloc(pend_up), *cl = malloc(pend_cl), *e = malloc(early);
  gen(11, 0, up, pend_up);
  gen(12, 0, cl, pend_cl);
  /* early bytes, already queued at the tunnel's fds before it starts */
  gen(11, pend_up, e, early);
  send_all(f.client_peer, e, early);
  gen(12, pend_cl, e, early);
  send_all(f.upstream_peer, e, early);
  sy_tunnel_opts o = {.force_copy = _i};
  fx_start(&f, &o, (char *)up, pend_up, (char *)cl, pend_cl);
  /* the tunnel must have copied them */
  memset(up, 0xAA, pend_up);
  memset(cl, 0xAA, pend_cl);
  free(up);
  free(cl);
  free(e);
  flow c_tx = {.fd = f.client_peer, .seed = 11, .off = pend_up + early, .n = more, .shut = 1};
  flow u_rx = {.fd = f.upstream_peer, .seed = 11, .n = pend_up + early + more};
  flow u_tx = {.fd = f.upstream_peer, .seed = 12, .off = pend_cl + early, .n = more, .shut = 1};
  flow c_rx = {.fd = f.client_peer, .seed = 12, .n = pend_cl + early + more};
  flow_start(&c_tx, sender_main);
  flow_start(&u_rx, receiver_main);
  flow_start(&u_tx, sender_main);
  flow_start(&c_rx, receiver_main);
  int ok = fx_wait(&f, cond_done, NULL, WAIT_MS);
  flow_join_ok(&c_tx, 0);
  flow_join_ok(&u_tx, 0);
  flow_join_ok(&u_rx, 1);
  flow_join_ok(&c_rx, 1);
  ck_assert(ok);
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "eof");
  ck_assert_uint_eq(f.st.bytes_c2u, pend_up + early + more);
  ck_assert_uint_eq(f.st.bytes_u2c, pend_cl + early + more);
  ck_assert_uint_ge(f.st.copied, pend_up + pend_cl);
  fx_teardown(&f);
}
END_TEST

/* Bytes that look like HTTP (heads, a 101, chunked framing, NULs) are payload and
 * pass untouched, including as pending bytes. _i: 0 = splice, 1 = force_copy. */
START_TEST(test_http_lookalike_binary_passes_verbatim) {
  static const char up[] = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\n\r\n\0\xff\x81\x05hello\r\n\r\n"
                           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
  static const char down[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"
                             "\x00\x00\x12\x04\x00\x00\x00\x00\x00HTTP/1.1 200 OK\r\n"
                             "Content-Length: 0\r\n\r\n\r\n\x88\x80";
  const size_t lu = sizeof(up) - 1, ld = sizeof(down) - 1;
  fx f;
  fx_init(&f);
  sy_tunnel_opts o = {.force_copy = _i};
  fx_start(&f, &o, up, 20, down, 9); /* pending: a prefix of each */
  send_all(f.client_peer, up + 20, lu - 20);
  send_all(f.upstream_peer, down + 9, ld - 9);
  unsigned char got_u[sizeof(up)] = {0}, got_c[sizeof(down)] = {0};
  rd ru = {.fd = f.upstream_peer, .buf = got_u, .len = lu};
  rd rc = {.fd = f.client_peer, .buf = got_c, .len = ld};
  ck_assert(fx_wait(&f, cond_rd, &ru, WAIT_MS));
  ck_assert(fx_wait(&f, cond_rd, &rc, WAIT_MS));
  ck_assert_uint_eq(ru.got, lu);
  ck_assert_uint_eq(rc.got, ld);
  ck_assert(memcmp(got_u, up, lu) == 0);
  ck_assert(memcmp(got_c, down, ld) == 0);
  ck_assert_int_eq(shutdown(f.client_peer, SHUT_WR), 0);
  ck_assert_int_eq(shutdown(f.upstream_peer, SHUT_WR), 0);
  ck_assert(fx_wait(&f, cond_done, NULL, WAIT_MS));
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "eof");
  ck_assert_uint_eq(f.st.bytes_c2u, lu);
  ck_assert_uint_eq(f.st.bytes_u2c, ld);
  fx_teardown(&f);
}
END_TEST

/* _i: 0 = the client sends FIN first, 1 = the upstream does. The other direction
 * keeps flowing (4 MiB) after the FIN, and a half-closed tunnel does not spin. */
START_TEST(test_half_close_keeps_other_direction) {
  fx f;
  sy_tunnel_opts o = {.idle_timeout_ms = 10000};
  fx_setup(&f, &o);
  int a = _i ? f.upstream_peer : f.client_peer, b = _i ? f.client_peer : f.upstream_peer;
  const char *a_name = _i ? "upstream" : "client";
  send_all(a, "last words", 10);
  ck_assert_int_eq(shutdown(a, SHUT_WR), 0);
  unsigned char buf[16];
  rd r = {.fd = b, .buf = buf, .len = sizeof(buf)};
  ck_assert(fx_wait(&f, cond_rd, &r, WAIT_MS));
  ck_assert(r.eof);
  ck_assert_uint_eq(r.got, 10);
  ck_assert(memcmp(buf, "last words", 10) == 0);
  ck_assert_int_eq(f.done_calls, 0);
  assert_quiet(&f);
  ck_assert_uint_eq(fx_pool(&f).in_use, 0);
  xfer x = {.from = b, .to = a, .seed = 77, .total = 4 * MIB};
  ck_assert(fx_wait(&f, cond_xfer_received, &x, WAIT_MS));
  ck_assert_int_eq(x.err, 0);
  ck_assert(!x.mismatch);
  ck_assert_uint_eq(x.received, 4 * MIB);
  ck_assert_int_eq(f.done_calls, 0);
  ck_assert_int_eq(shutdown(b, SHUT_WR), 0);
  ck_assert(fx_wait(&f, cond_xfer_eof, &x, WAIT_MS));
  ck_assert(x.eof);
  ck_assert(fx_wait(&f, cond_done, NULL, WAIT_MS));
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "eof");
  ck_assert_str_eq(f.closed_by, a_name);
  ck_assert_uint_eq(_i ? f.st.bytes_u2c : f.st.bytes_c2u, 10);
  ck_assert_uint_eq(_i ? f.st.bytes_c2u : f.st.bytes_u2c, 4 * MIB);
  fx_teardown(&f);
}
END_TEST

static int cond_progress_c2u(fx *f, void *arg) {
  return f->progress.c2u >= *(const size_t *)arg;
}

static int cond_never(fx *f, void *arg) {
  return 0;
}

/* Live bytes: an open tunnel's bytes are reported (every 50 ms here) while it
 * is open, an idle one is not reported, and progress plus the done callback's
 * remainder equal the totals exactly. _i: 0 = splice, 1 = force_copy, 2 = no
 * progress callback (the remainder is then everything). */
START_TEST(test_progress_reports_live_bytes) {
  const size_t first = 1 * MIB + 5 + 7, second = 3000;
  fx f;
  fx_init(&f);
  if (_i < 2) sy_tunnel_hub_set_progress(f.hub, fx_on_progress, 50);
  sy_tunnel_opts o = {.force_copy = _i == 1};
  fx_start(&f, &o, "hello", 5, "pending", 7);
  unsigned char pend[7];
  rd rp = {.fd = f.client_peer, .buf = pend, .len = sizeof(pend)};
  ck_assert(fx_wait(&f, cond_rd, &rp, WAIT_MS));
  ck_assert(memcmp(pend, "pending", 7) == 0);
  unsigned char hello[5];
  rd rh = {.fd = f.upstream_peer, .buf = hello, .len = sizeof(hello)};
  ck_assert(fx_wait(&f, cond_rd, &rh, WAIT_MS));
  xfer x = {.from = f.client_peer, .to = f.upstream_peer, .seed = 5, .total = 1 * MIB};
  ck_assert(fx_wait(&f, cond_xfer_received, &x, WAIT_MS));
  ck_assert(!x.mismatch);
  size_t want = first - 7; /* c2u so far: the pending 5 and 1 MiB */
  if (_i < 2) {
    ck_assert(fx_wait(&f, cond_progress_c2u, &want, WAIT_MS));
    ck_assert_uint_eq(f.progress.c2u, want);
    ck_assert_uint_eq(f.progress.u2c, 7);
    ck_assert_uint_eq(f.progress.spliced + f.progress.copied, first);
    if (_i == 1) ck_assert_uint_eq(f.progress.spliced, 0);
  }
  ck_assert_int_eq(f.done_calls, 0);
  /* idle: no report, however many intervals pass */
  int calls = f.progress_calls;
  ck_assert(!fx_wait(&f, cond_never, NULL, 300));
  ck_assert_int_eq(f.progress_calls, calls);
  /* some more, then the end: the rest comes with the done callback */
  unsigned char buf[3000], got[3000];
  memset(buf, 'z', sizeof(buf));
  send_all(f.upstream_peer, buf, sizeof(buf));
  rd rz = {.fd = f.client_peer, .buf = got, .len = sizeof(got)};
  ck_assert(fx_wait(&f, cond_rd, &rz, WAIT_MS));
  ck_assert_int_eq(shutdown(f.client_peer, SHUT_WR), 0);
  ck_assert_int_eq(shutdown(f.upstream_peer, SHUT_WR), 0);
  ck_assert(fx_wait(&f, cond_done, NULL, WAIT_MS));
  fx_done_checks(&f);
  ck_assert_uint_eq(f.st.bytes_c2u, first - 7);
  ck_assert_uint_eq(f.st.bytes_u2c, 7 + second);
  ck_assert_uint_eq(f.progress.c2u + f.st.unreported.c2u, f.st.bytes_c2u);
  ck_assert_uint_eq(f.progress.u2c + f.st.unreported.u2c, f.st.bytes_u2c);
  ck_assert_uint_eq(f.progress.spliced + f.st.unreported.spliced, f.st.spliced);
  ck_assert_uint_eq(f.progress.copied + f.st.unreported.copied, f.st.copied);
  ck_assert_int_eq(f.progress_after_done, 0);
  ck_assert_int_eq(f.progress_other, 0);
  if (_i == 2) ck_assert_int_eq(f.progress_calls, 0);
  if (_i < 2) ck_assert_int_ge(f.progress_calls, 1);
  fx_teardown(&f);
}
END_TEST

/* Reads are edge-triggered and skip the final EAGAIN read when a short read
 * proves the socket drained. Tiny segments queued before the tunnel reads
 * (possibly more than the pipe has slots) and lone small messages, with no
 * later event to wake the tunnel, must all come through. Small messages are
 * copied in both modes. _i: copy mode. */
START_TEST(test_tiny_segments_all_arrive) {
  fx f;
  sy_tunnel_opts o = {.idle_timeout_ms = 10000, .force_copy = _i};
  fx_init(&f);
  int one = 1;
  ck_assert_int_eq(setsockopt(f.client_peer, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)), 0);
  ck_assert_int_eq(setsockopt(f.upstream_peer, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)), 0);
  enum { N = 3000 };
  unsigned char pat[N], got[N];
  for (int i = 0; i < N; i++)
    pat[i] = (unsigned char)(i * 7 + 1);
  for (int i = 0; i < N; i++)
    ck_assert_int_eq(send(f.client_peer, pat + i, 1, 0), 1);
  fx_start(&f, &o, NULL, 0, NULL, 0);
  rd r = {.fd = f.upstream_peer, .buf = got, .len = N};
  ck_assert(fx_wait(&f, cond_rd, &r, WAIT_MS));
  ck_assert_uint_eq(r.got, N);
  ck_assert(memcmp(got, pat, N) == 0);
  for (int m = 0; m < 200; m++) {
    size_t len = (size_t)(m % 63) + 1;
    int from = m % 2 ? f.client_peer : f.upstream_peer;
    int to = m % 2 ? f.upstream_peer : f.client_peer;
    send_all(from, pat + m, len);
    rd q = {.fd = to, .buf = got, .len = len};
    ck_assert(fx_wait(&f, cond_rd, &q, WAIT_MS));
    ck_assert_uint_eq(q.got, len);
    ck_assert(memcmp(got, pat + m, len) == 0);
  }
  sy_tunnel_stats st = fx_stats(&f);
  ck_assert_uint_eq(st.copied, st.bytes_c2u + st.bytes_u2c);
  ck_assert_uint_eq(st.spliced, 0);
  ck_assert_uint_eq(fx_pool(&f).created, 0); /* no pipe was ever needed */
  fx_teardown(&f);
}
END_TEST

/* Small messages are copied and sent at once; what a nearly full destination
 * does not take must wait as pending bytes and keep its place in the stream.
 * The upstream peer does not read while messages of 1..4000 bytes go in one
 * per loop turn (each read then looks small), and the tunnel's side of the
 * upstream has the smallest send buffer, so sends come back short. */
typedef struct drip {
  xfer x;
  size_t msgs;
} drip;

static int cond_drip_until_blocked(fx *f, void *arg) {
  drip *d = arg;
  unsigned char buf[4000];
  size_t n = 1 + (d->msgs * 2654435761u) % sizeof(buf);
  if (n > d->x.total - d->x.sent) n = d->x.total - d->x.sent;
  gen(d->x.seed, d->x.sent, buf, n);
  ssize_t w = send(d->x.from, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (w < 0 && errno != EAGAIN) d->x.err = errno;
  if (w > 0) {
    d->x.sent += (size_t)w;
    d->msgs++;
  }
  /* enough to fill the peer's receive buffer and the tunnel's send buffer */
  return w < 0 || d->msgs == 400 || d->x.sent == d->x.total;
}

START_TEST(test_small_messages_meet_full_destination) {
  fx f;
  fx_init(&f);
  int small = 1; /* the kernel makes it its minimum */
  ck_assert_int_eq(setsockopt(f.upstream_fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  int one = 1;
  ck_assert_int_eq(setsockopt(f.client_peer, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)), 0);
  sy_tunnel_opts o = {.idle_timeout_ms = 60000};
  fx_start(&f, &o, NULL, 0, NULL, 0);
  drip d = {.x = {.from = f.client_peer, .to = f.upstream_peer, .seed = 31, .total = 2 * MIB}};
  ck_assert(fx_wait(&f, cond_drip_until_blocked, &d, WAIT_MS));
  ck_assert_int_eq(d.x.err, 0);
  ck_assert_uint_eq(f.done_calls, 0);
  ck_assert(fx_wait(&f, cond_xfer_received, &d.x, WAIT_MS));
  ck_assert(!d.x.mismatch && !d.x.err);
  ck_assert_uint_eq(d.x.received, d.x.total);
  sy_tunnel_stats st = fx_stats(&f);
  ck_assert_uint_eq(st.bytes_c2u, d.x.total);
  ck_assert_uint_gt(st.copied, 0);  /* the drip went through the small path */
  ck_assert_uint_gt(st.spliced, 0); /* and the backlog through the pipe */
  ck_assert_uint_eq(fx_pool(&f).in_use, 0);
  fx_teardown(&f);
}
END_TEST

/* _i: 0 = the client resets, 1 = the upstream does; the other peer must learn
 * promptly, and the tunnel reports who. */
START_TEST(test_rst_propagates) {
  fx f;
  sy_tunnel_opts o = {.idle_timeout_ms = 10000};
  fx_setup(&f, &o);
  int *a = _i ? &f.upstream_peer : &f.client_peer, b = _i ? f.client_peer : f.upstream_peer;
  /* some traffic first, so the reset hits a tunnel that has been used */
  send_all(*a, "hello", 5);
  unsigned char buf[5];
  rd r = {.fd = b, .buf = buf, .len = 5};
  ck_assert(fx_wait(&f, cond_rd, &r, WAIT_MS));
  ck_assert_uint_eq(r.got, 5);
  uint64_t t0 = now_ms();
  rst_close(*a);
  *a = -1;
  ck_assert(fx_wait(&f, cond_done, NULL, 2000));
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "reset");
  ck_assert_str_eq(f.closed_by, _i ? "upstream" : "client");
  rd end = {.fd = b};
  ck_assert(fx_wait(&f, cond_end, &end, 2000));
  ck_assert(end.err == ECONNRESET || end.eof);
  ck_assert_int_eq(end.err, ECONNRESET); /* we send RST, not FIN */
  ck_assert_uint_lt(now_ms() - t0, 2000);
  fx_teardown(&f);
}
END_TEST

START_TEST(test_idle_timeout) {
  fx f;
  sy_tunnel_opts o = {.idle_timeout_ms = 100};
  fx_setup(&f, &o);
  ck_assert(fx_wait(&f, cond_done, NULL, 3000));
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "idle_timeout");
  ck_assert_str_eq(f.closed_by, "proxy");
  ck_assert_uint_ge(f.st.duration_ms, 95);
  ck_assert_uint_lt(f.st.duration_ms, 1500);
  /* nothing was in flight: both peers get a plain FIN */
  rd e1 = {.fd = f.client_peer}, e2 = {.fd = f.upstream_peer};
  ck_assert(fx_wait(&f, cond_end, &e1, 2000));
  ck_assert(fx_wait(&f, cond_end, &e2, 2000));
  ck_assert(e1.eof && e2.eof);
  fx_teardown(&f);
}
END_TEST

/* Traffic pushes the idle deadline: a byte every 50 ms for 6 ticks keeps a 250 ms
 * idle timeout from firing until ~250 ms after the last one. (The margins are wide
 * because a loaded machine may stall the loop for tens of milliseconds.) */
typedef struct ticker {
  uv_timer_t timer;
  int fd, left;
} ticker;

static void on_tick(uv_timer_t *h) {
  ticker *tk = h->data;
  if (send(tk->fd, "k", 1, MSG_DONTWAIT | MSG_NOSIGNAL) != 1) tk->left = 0;
  if (--tk->left <= 0) uv_timer_stop(h);
}

START_TEST(test_idle_timeout_is_pushed_by_traffic) {
  fx f;
  sy_tunnel_opts o = {.idle_timeout_ms = 250};
  fx_setup(&f, &o);
  ticker tk = {.fd = f.client_peer, .left = 6};
  uv_timer_init(&f.loop, &tk.timer);
  tk.timer.data = &tk;
  uv_timer_start(&tk.timer, on_tick, 50, 50);
  ck_assert(fx_wait(&f, cond_done, NULL, 5000));
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "idle_timeout");
  ck_assert_uint_eq(f.st.bytes_c2u, 6);
  ck_assert_uint_ge(f.st.duration_ms, 6 * 50 + 245);
  uv_close((uv_handle_t *)&tk.timer, NULL);
  fx_teardown(&f);
}
END_TEST

START_TEST(test_fin_timeout) {
  fx f;
  sy_tunnel_opts o = {.fin_timeout_ms = 100};
  fx_setup(&f, &o);
  ck_assert_int_eq(shutdown(f.client_peer, SHUT_WR), 0);
  rd e = {.fd = f.upstream_peer};
  ck_assert(fx_wait(&f, cond_end, &e, 2000));
  ck_assert(e.eof);
  uint64_t fin_at = now_ms();
  ck_assert(fx_wait(&f, cond_done, NULL, 3000));
  uint64_t waited = now_ms() - fin_at;
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "fin_timeout");
  ck_assert_str_eq(f.closed_by, "proxy");
  ck_assert_uint_ge(waited + 10, 100);
  ck_assert_uint_lt(waited, 1500);
  fx_teardown(&f);
}
END_TEST

/* Writes from the client while the upstream peer reads nothing until the whole
 * path is full; *stalled counts consecutive turns without progress. */
typedef struct bp {
  xfer x;
  uint64_t last_sent, last_moved;
  int still;
} bp;

static int cond_stalled(fx *f, void *arg) {
  bp *b = arg;
  xfer_send(&b->x);
  uint64_t moved = fx_stats(f).bytes_c2u;
  if (b->x.sent == b->last_sent && moved == b->last_moved && b->x.send_blocked)
    b->still++;
  else
    b->still = 0;
  b->last_sent = b->x.sent;
  b->last_moved = moved;
  return b->still >= 5 || b->x.err || b->x.sent == b->x.total;
}

static int cond_all_sent(fx *f, void *arg) {
  xfer *x = arg;
  xfer_send(x);
  return x->sent == x->total || x->err;
}

/* _i: 0 = splice, 1 = force_copy */
START_TEST(test_backpressure) {
  const size_t n = 16 * MIB;
  fx f;
  sy_tunnel_opts o = {.idle_timeout_ms = 10000, .force_copy = _i};
  fx_init(&f);
  /* Small peer buffers, so 16 MiB overflows the path whatever the tcp_rmem/tcp_wmem
   * autotuning maxima; the tunnel's own sockets keep the system defaults. */
  int small = 128 * 1024;
  ck_assert_int_eq(setsockopt(f.upstream_peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
  ck_assert_int_eq(setsockopt(f.client_peer, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  fx_start(&f, &o, NULL, 0, NULL, 0);
  bp b = {.x = {.from = f.client_peer, .seed = 5, .total = n}};
  ck_assert(fx_wait(&f, cond_stalled, &b, WAIT_MS));
  ck_assert_int_eq(b.x.err, 0);
  /* the writer is blocked, the tunnel holds at most one chunk, and it is not
   * reading the client any more (nor spinning on it) */
  ck_assert_uint_lt(b.x.sent, n);
  ck_assert(b.x.send_blocked);
  sy_pipe_pool_stats ps = fx_pool(&f);
  ck_assert_uint_le(ps.in_use, 2);
  ck_assert_uint_eq(ps.in_use, _i ? 0 : 1);
  sy_tunnel_stats st = fx_stats(&f);
  ck_assert_uint_lt(st.bytes_c2u, b.x.sent);
  assert_quiet(&f);
  /* now the upstream peer reads: everything arrives, in order */
  flow u_rx = {.fd = f.upstream_peer, .seed = 5, .n = n, .shut = 1};
  flow_start(&u_rx, receiver_main);
  int ok = fx_wait(&f, cond_all_sent, &b.x, WAIT_MS);
  if (ok) shutdown(f.client_peer, SHUT_WR);
  xfer tail = {.to = f.client_peer};
  ok = ok && fx_wait(&f, cond_xfer_eof, &tail, WAIT_MS) && fx_wait(&f, cond_done, NULL, WAIT_MS);
  flow_join_ok(&u_rx, 1);
  ck_assert(ok);
  ck_assert_int_eq(b.x.err, 0);
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "eof");
  ck_assert_str_eq(f.closed_by, "client");
  ck_assert_uint_eq(f.st.bytes_c2u, n);
  fx_teardown(&f);
}
END_TEST

/* An idle tunnel holds no pipe and runs nothing; after traffic it goes back to that. */
START_TEST(test_idle_tunnel_is_quiet_and_holds_nothing) {
  fx f;
  sy_tunnel_opts o = {.idle_timeout_ms = 10000};
  fx_setup(&f, &o);
  assert_quiet(&f);
  ck_assert_uint_eq(fx_stats(&f).wakeups, 0);
  ck_assert_uint_eq(fx_pool(&f).in_use, 0);
  ck_assert_uint_eq(fx_pool(&f).created, 0);
  for (int round = 0; round < 3; round++) {
    xfer x = {.from = f.client_peer, .to = f.upstream_peer, .seed = 9, .total = 300000};
    ck_assert(fx_wait(&f, cond_xfer_received, &x, WAIT_MS));
    xfer y = {.from = f.upstream_peer, .to = f.client_peer, .seed = 10, .total = 1000};
    ck_assert(fx_wait(&f, cond_xfer_received, &y, WAIT_MS));
    ck_assert(!x.mismatch && !y.mismatch);
    assert_quiet(&f);
    sy_pipe_pool_stats ps = fx_pool(&f);
    ck_assert_uint_eq(ps.in_use, 0);
    ck_assert_uint_ge(ps.idle, 1);
  }
  ck_assert_uint_le(fx_pool(&f).created, 2);
  fx_teardown(&f);
}
END_TEST

START_TEST(test_close_is_async_and_idempotent) {
  fx f;
  fx_setup(&f, NULL);
  f.close_from_cb = 1;
  sy_tunnel_close(f.t, NULL);
  ck_assert_int_eq(f.done_calls, 0); /* never synchronous */
  /* fds are already closed, the struct is still valid and further closes are no-ops */
  ck_assert(!fd_is_open(f.client_fd));
  sy_tunnel_close(f.t, "second");
  ck_assert(fx_wait(&f, cond_done, NULL, 2000));
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "shutdown");
  ck_assert_str_eq(f.closed_by, "proxy");
  rd e1 = {.fd = f.client_peer}, e2 = {.fd = f.upstream_peer};
  ck_assert(fx_wait(&f, cond_end, &e1, 2000));
  ck_assert(fx_wait(&f, cond_end, &e2, 2000));
  ck_assert(e1.eof && e2.eof);
  fx_teardown(&f);
}
END_TEST

/* Closing with a chunk stuck in flight: the pipe is dropped (never pooled with
 * bytes in it) and the peer that would have received them is reset. */
START_TEST(test_close_with_bytes_in_flight) {
  fx f;
  sy_tunnel_opts o = {.force_copy = _i};
  fx_setup(&f, &o);
  bp b = {.x = {.from = f.client_peer, .seed = 6, .total = 64 * MIB}};
  ck_assert(fx_wait(&f, cond_stalled, &b, WAIT_MS));
  uint64_t closed_before = fx_pool(&f).closed;
  sy_tunnel_close(f.t, "drain");
  ck_assert(fx_wait(&f, cond_done, NULL, 2000));
  fx_done_checks(&f);
  ck_assert_str_eq(f.reason, "drain");
  ck_assert_uint_eq(fx_pool(&f).closed, closed_before + (_i ? 0 : 1));
  ck_assert_uint_eq(fx_pool(&f).idle, 0);
  rd e = {.fd = f.upstream_peer};
  ck_assert(fx_wait(&f, cond_end, &e, 5000));
  ck_assert_int_eq(e.err, ECONNRESET);
  fx_teardown(&f);
}
END_TEST

/* No fd left for a pipe: chunks go through the copy path instead of failing. */
START_TEST(test_no_pipe_falls_back_to_copy) {
  fx f;
  sy_tunnel_opts o = {.idle_timeout_ms = 10000};
  fx_setup(&f, &o);
  struct rlimit old, low;
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  int probe = dup(0);
  close(probe);
  low = old;
  low.rlim_cur = (rlim_t)probe;
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
  xfer x = {.from = f.client_peer, .to = f.upstream_peer, .seed = 3, .total = 2 * MIB};
  int ok = fx_wait(&f, cond_xfer_received, &x, WAIT_MS);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  ck_assert(ok && !x.mismatch && x.err == 0);
  sy_tunnel_stats st = fx_stats(&f);
  ck_assert_uint_eq(st.copied, 2 * MIB);
  ck_assert_uint_eq(st.spliced, 0);
  ck_assert_uint_eq(fx_pool(&f).in_use, 0);
  /* fds again: back to splice */
  xfer y = {.from = f.client_peer, .to = f.upstream_peer, .seed = 4, .total = 1 * MIB};
  ck_assert(fx_wait(&f, cond_xfer_received, &y, WAIT_MS));
  ck_assert_uint_ge(fx_stats(&f).spliced, 1 * MIB - 64 * 1024);
  fx_teardown(&f);
}
END_TEST

/* splice(2) into an O_APPEND file is EINVAL, sockets included: the direction
 * towards that socket must carry on by copying, bytes already in its pipe too,
 * while the other direction keeps splicing. */
START_TEST(test_splice_refused_falls_back_to_copy) {
  fx f;
  fx_init(&f);
  int fl = fcntl(f.upstream_fd, F_GETFL);
  ck_assert_int_eq(fcntl(f.upstream_fd, F_SETFL, fl | O_APPEND), 0);
  fx_start(&f, NULL, NULL, 0, NULL, 0);
  xfer x = {.from = f.client_peer, .to = f.upstream_peer, .seed = 21, .total = 1 * MIB};
  ck_assert(fx_wait(&f, cond_xfer_received, &x, WAIT_MS));
  xfer y = {.from = f.upstream_peer, .to = f.client_peer, .seed = 22, .total = 1 * MIB};
  ck_assert(fx_wait(&f, cond_xfer_received, &y, WAIT_MS));
  ck_assert(!x.mismatch && !y.mismatch && !x.err && !y.err);
  sy_tunnel_stats st = fx_stats(&f);
  ck_assert_uint_eq(st.bytes_c2u, 1 * MIB);
  ck_assert_uint_eq(st.bytes_u2c, 1 * MIB);
  /* one way copied throughout, the other spliced but for small-looking reads */
  ck_assert_uint_ge(st.copied, 1 * MIB);
  ck_assert_uint_ge(st.spliced, 1 * MIB - 64 * 1024);
  ck_assert_uint_gt(st.spliced, 0);
  ck_assert_uint_eq(fx_pool(&f).in_use, 0);
  fx_teardown(&f);
}
END_TEST

START_TEST(test_start_rejects_bad_arguments) {
  fx f;
  fx_init(&f);
  ck_assert_ptr_null(
      sy_tunnel_start(f.hub, f.client_fd, f.client_fd, NULL, 0, NULL, 0, NULL, 0, &f));
  ck_assert_ptr_null(
      sy_tunnel_start(NULL, f.client_fd, f.upstream_fd, NULL, 0, NULL, 0, NULL, 0, &f));
  /* an fd epoll refuses (a regular file) is refused, and the fds stay the caller's */
  char path[] = "/tmp/sy-tunnel-test-XXXXXX";
  int file = mkstemp(path);
  ck_assert_int_ge(file, 0);
  unlink(path);
  ck_assert_ptr_null(sy_tunnel_start(f.hub, f.client_fd, file, "x", 1, NULL, 0, NULL, 0, &f));
  ck_assert_ptr_null(sy_tunnel_start(f.hub, file, f.upstream_fd, "x", 1, NULL, 0, NULL, 0, &f));
  ck_assert_uint_eq(sy_tunnel_hub_count(f.hub), 0);
  uv_run(&f.loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(f.done_calls, 0);
  ck_assert(fd_is_open(f.client_fd) && fd_is_open(f.upstream_fd) && fd_is_open(file));
  /* ... and the first one was taken out of epoll again: a tunnel on it works */
  close(file);
  fx_start(&f, NULL, NULL, 0, NULL, 0);
  xfer x = {.from = f.client_peer, .to = f.upstream_peer, .seed = 31, .total = 100000};
  ck_assert(fx_wait(&f, cond_xfer_received, &x, WAIT_MS));
  ck_assert(!x.mismatch);
  fx_teardown(&f);
}
END_TEST

/* A libuv-only source of wakeups: a socket pair watched by uv_poll, poked once
 * per turn, drained by its callback. */
typedef struct poker {
  uv_poll_t poll;
  int fd[2];
  int seen;
} poker;

static void on_poke(uv_poll_t *p, int status, int events) {
  poker *k = p->data;
  char b[64];
  while (recv(k->fd[1], b, sizeof(b), MSG_DONTWAIT) > 0)
    k->seen++;
}

/* AUTO: a tunnel ping-ponging small messages makes most wakeups, so turns come
 * to block in the hub's set; once libuv's fd makes most of them, they go back;
 * bytes cross intact through every switch; the last tunnel gone, LOOP again.
 * LOOP, forced, never blocks in the hub's set. */
START_TEST(test_hub_mode_follows_wakeups) {
  fx f;
  sy_tunnel_opts o = {.idle_timeout_ms = 20000};
  enum sy_ev_mode saved = g_mode;
  g_mode = _i ? SY_EV_LOOP : SY_EV_AUTO;
  fx_setup(&f, &o);
  g_mode = saved;
  int one = 1;
  ck_assert_int_eq(setsockopt(f.client_peer, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)), 0);
  ck_assert_int_eq(setsockopt(f.upstream_peer, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)), 0);
  unsigned char pat[64], got[64];
  for (int i = 0; i < 64; i++)
    pat[i] = (unsigned char)(i * 13 + 5);
  int owned_at = -1;
  for (int m = 0; m < 2000 && owned_at < 0; m++) {
    size_t len = (size_t)(m % 64) + 1;
    int from = m % 2 ? f.upstream_peer : f.client_peer;
    int to = m % 2 ? f.client_peer : f.upstream_peer;
    send_all(from, pat, len);
    rd q = {.fd = to, .buf = got, .len = len};
    ck_assert(fx_wait(&f, cond_rd, &q, WAIT_MS));
    ck_assert(memcmp(got, pat, len) == 0);
    if (sy_evset_owns_loop(f.ev)) owned_at = m;
  }
  if (_i) {
    ck_assert_int_eq(owned_at, -1);
    fx_teardown(&f);
    return;
  }
  ck_assert_int_ge(owned_at, 0);
  /* now libuv's wakeups dominate; the tunnel stays open and quiet */
  poker k = {.seen = 0};
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, k.fd), 0);
  ck_assert_int_eq(uv_poll_init(&f.loop, &k.poll, k.fd[1]), 0);
  k.poll.data = &k;
  ck_assert_int_eq(uv_poll_start(&k.poll, UV_READABLE, on_poke), 0);
  int back_at = -1;
  uint64_t deadline = now_ms() + WAIT_MS;
  for (int i = 0; i < 4000 && back_at < 0 && now_ms() < deadline; i++) {
    int want = k.seen + 1;
    ck_assert_int_eq(send(k.fd[0], "p", 1, MSG_NOSIGNAL), 1);
    while (k.seen < want && now_ms() < deadline)
      sy_evset_turn(f.ev, 10);
    if (!sy_evset_owns_loop(f.ev)) back_at = i;
  }
  ck_assert_int_ge(back_at, 0);
  ck_assert_uint_eq(sy_tunnel_hub_count(f.hub), 1);
  /* the tunnel still works after both switches */
  xfer x = {.from = f.client_peer, .to = f.upstream_peer, .seed = 77, .total = 1000000};
  ck_assert(fx_wait(&f, cond_xfer_received, &x, WAIT_MS));
  ck_assert(!x.mismatch);
  uv_close((uv_handle_t *)&k.poll, NULL);
  close(k.fd[0]);
  close(k.fd[1]);
  sy_tunnel_close(f.t, "test");
  ck_assert(fx_wait(&f, cond_done, NULL, WAIT_MS));
  ck_assert_int_eq(sy_evset_owns_loop(f.ev), 0);
  fx_teardown(&f);
}
END_TEST

static Suite *tunnel_suite(void) {
  Suite *s = suite_create("tunnel");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_loop_test(tc, test_duplex_32mib_each_way, 0, 2);
  tcase_add_loop_test(tc, test_pending_bytes_first_and_in_order, 0, 2);
  tcase_add_loop_test(tc, test_http_lookalike_binary_passes_verbatim, 0, 2);
  tcase_add_loop_test(tc, test_half_close_keeps_other_direction, 0, 2);
  tcase_add_loop_test(tc, test_rst_propagates, 0, 2);
  tcase_add_loop_test(tc, test_tiny_segments_all_arrive, 0, 2);
  tcase_add_test(tc, test_small_messages_meet_full_destination);
  tcase_add_test(tc, test_idle_timeout);
  tcase_add_test(tc, test_idle_timeout_is_pushed_by_traffic);
  tcase_add_test(tc, test_fin_timeout);
  tcase_add_loop_test(tc, test_backpressure, 0, 2);
  tcase_add_test(tc, test_idle_tunnel_is_quiet_and_holds_nothing);
  tcase_add_test(tc, test_close_is_async_and_idempotent);
  tcase_add_loop_test(tc, test_close_with_bytes_in_flight, 0, 2);
  tcase_add_test(tc, test_no_pipe_falls_back_to_copy);
  tcase_add_test(tc, test_splice_refused_falls_back_to_copy);
  tcase_add_test(tc, test_start_rejects_bad_arguments);
  tcase_add_loop_test(tc, test_progress_reports_live_bytes, 0, 3);
  if (g_mode == SY_EV_LOOP) /* it sets its own modes: once is enough */
    tcase_add_loop_test(tc, test_hub_mode_follows_wakeups, 0, 2);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  /* splice(2) into a reset socket raises SIGPIPE; the proxy ignores it, so do we */
  signal(SIGPIPE, SIG_IGN);
  int failed = 0;
  enum sy_ev_mode modes[] = {SY_EV_LOOP, SY_EV_OWN};
  for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
    g_mode = modes[m];
    printf("hub mode: %s\n", g_mode == SY_EV_OWN ? "own" : "loop");
    SRunner *sr = srunner_create(tunnel_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed += srunner_ntests_failed(sr);
    srunner_free(sr);
  }
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
