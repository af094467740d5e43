#include "switchyard/tunnel.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* One pipe's worth: the most a direction ever has in flight. */
#define TUN_CHUNK (64 * 1024)
/* Chunks one direction may move per wakeup before yielding to the rest of the
 * loop; the poll is level-triggered, so unread data simply wakes us again. */
#define TUN_ROUNDS 16
/* Never SPLICE_F_MORE: it would make the kernel hold back small frames
 * (interactive WebSocket traffic) waiting for more (cf. Go issue 10948). */
#define TUN_SPLICE_FLAGS (SPLICE_F_MOVE | SPLICE_F_NONBLOCK)

typedef struct tun_end tun_end;
typedef struct tun_dir tun_dir;

/* What a direction is waiting for; the poll mask of each fd is derived from the
 * two directions touching it, so only needed events are ever enabled. */
enum tun_wait { TUN_WAIT_NONE, TUN_WAIT_READ, TUN_WAIT_WRITE };

/* One socket. libuv allows one watcher per fd, so the reading direction and the
 * writing direction of this socket share the poll handle. */
struct tun_end {
  sy_tunnel *t;
  const char *name; /* "client" | "upstream", as reported in closed_by */
  int fd;
  int events; /* what the poll handle is asking for right now */
  uv_poll_t poll;
  tun_dir *rx; /* the direction that reads this socket */
  tun_dir *tx; /* the direction that writes it */
};

/* One direction, src -> dst. Invariants: bytes in flight live either in the
 * buffer (pending bytes, copy mode) or in the pipe, never both; a new chunk is
 * read only when nothing is in flight; and between wakeups a direction with
 * nothing in flight holds neither pipe nor buffer. */
struct tun_dir {
  sy_tunnel *t;
  tun_end *src, *dst;
  enum tun_wait wait;
  int pipe[2]; /* borrowed from the pool for the length of a pump */
  size_t in_pipe;
  char *buf; /* pending bytes or a copy-mode chunk, likewise only while pumping */
  size_t off, len, cap;
  unsigned eof : 1;  /* the source sent FIN */
  unsigned done : 1; /* ... and it was passed on with shutdown(dst, SHUT_WR) */
  unsigned copy : 1; /* no splice for this direction */
  uint64_t bytes, spliced, copied;
};

struct sy_tunnel {
  uv_loop_t *loop;
  sy_pipe_pool *pool;
  tun_end end[2]; /* client, upstream */
  tun_dir dir[2]; /* client -> upstream, upstream -> client */
  uv_timer_t timer;
  sy_tunnel_opts opts;
  uint64_t start_ns, end_ns;
  uint64_t last_active_ms;  /* loop time of the last byte moved */
  uint64_t fin_deadline_ms; /* 0: no FIN seen yet (or no fin timeout) */
  const char *first_fin;
  const char *closed_by;
  char reason[32];
  int closing;
  int open_handles;
  int aborted; /* start failed half-way: free without calling back */
  uint64_t wakeups;
  sy_tunnel_done_cb cb;
  void *arg;
};

enum { TUN_RST_CLIENT = 1, TUN_RST_UPSTREAM = 2 };

static void tun_on_poll(uv_poll_t *h, int status, int events);

static int tun_dir_in_flight(const tun_dir *d) {
  return d->in_pipe > 0 || d->off < d->len;
}

/* Hands back what a direction no longer needs: an idle direction owns nothing. */
static void tun_dir_release(tun_dir *d) {
  if (d->pipe[0] >= 0 && d->in_pipe == 0) sy_pipe_pool_put(d->t->pool, d->pipe);
  if (d->buf && d->off == d->len) {
    free(d->buf);
    d->buf = NULL;
    d->off = d->len = d->cap = 0;
  }
}

static void tun_dir_count(tun_dir *d, size_t n, int spliced) {
  d->bytes += n;
  if (spliced)
    d->spliced += n;
  else
    d->copied += n;
  d->t->last_active_ms = uv_now(d->t->loop);
}

/* The destination refuses splice: move what the pipe holds into a buffer and go
 * on copying. The pipe holds at most TUN_CHUNK (it is only filled when empty). */
static int tun_dir_unsplice(tun_dir *d) {
  assert(d->in_pipe <= TUN_CHUNK && d->off == d->len);
  char *b = malloc(TUN_CHUNK);
  if (!b) return -ENOMEM;
  size_t got = 0;
  while (got < d->in_pipe) {
    ssize_t n = read(d->pipe[0], b + got, d->in_pipe - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      free(b);
      return n < 0 ? -errno : -EIO;
    }
    got += (size_t)n;
  }
  d->in_pipe = 0;
  free(d->buf); /* empty: bytes are never in buffer and pipe at once */
  d->buf = b;
  d->off = 0;
  d->len = got;
  d->cap = TUN_CHUNK;
  d->copy = 1;
  return 0;
}

/* Writes what is in flight. 0 when all of it went out, -EAGAIN when dst is full,
 * another -errno when dst failed. */
static int tun_dir_flush(tun_dir *d) {
  while (d->off < d->len) {
    ssize_t n = send(d->dst->fd, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    d->off += (size_t)n;
    tun_dir_count(d, (size_t)n, 0);
  }
  while (d->in_pipe > 0) {
    ssize_t n = splice(d->pipe[0], NULL, d->dst->fd, NULL, d->in_pipe, TUN_SPLICE_FLAGS);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL || errno == ENOSYS) {
        int r = tun_dir_unsplice(d);
        return r < 0 ? r : tun_dir_flush(d);
      }
      return -errno;
    }
    /* The pipe is non-empty and we hold its write end, so 0 cannot mean EOF;
     * treat it as a stall rather than looping on it. */
    if (n == 0) return -EIO;
    d->in_pipe -= (size_t)n;
    tun_dir_count(d, (size_t)n, 1);
  }
  return 0;
}

/* Reads one chunk into a buffer: >0 bytes, 0 at EOF, -errno. */
static ssize_t tun_dir_fill_copy(tun_dir *d) {
  if (d->cap < TUN_CHUNK) {
    /* a short pending-bytes buffer is not worth keeping */
    free(d->buf);
    d->cap = 0;
    if (!(d->buf = malloc(TUN_CHUNK))) return -ENOMEM;
    d->cap = TUN_CHUNK;
  }
  ssize_t n;
  do
    n = recv(d->src->fd, d->buf, TUN_CHUNK, 0);
  while (n < 0 && errno == EINTR);
  d->off = 0;
  d->len = n > 0 ? (size_t)n : 0;
  return n < 0 ? -errno : n;
}

/* Reads one chunk from src into the (borrowed) pipe: >0 bytes, 0 at EOF, -errno. */
static ssize_t tun_dir_fill(tun_dir *d) {
  assert(!tun_dir_in_flight(d));
  if (d->copy) return tun_dir_fill_copy(d);
  /* Out of fds for a pipe: this chunk goes through a buffer instead of failing
   * the tunnel; the next wakeup tries the pool again. */
  if (d->pipe[0] < 0 && sy_pipe_pool_get(d->t->pool, d->pipe) < 0) return tun_dir_fill_copy(d);
  ssize_t n;
  do
    n = splice(d->src->fd, NULL, d->pipe[1], NULL, TUN_CHUNK, TUN_SPLICE_FLAGS);
  while (n < 0 && errno == EINTR);
  if (n > 0) d->in_pipe = (size_t)n;
  if (n >= 0) return n;
  if (errno == EINVAL || errno == ENOSYS) {
    d->copy = 1;
    return tun_dir_fill_copy(d);
  }
  return -errno;
}

static void tun_arm_timer(sy_tunnel *t);

static void tun_saw_fin(tun_dir *d) {
  sy_tunnel *t = d->t;
  if (!t->first_fin) t->first_fin = d->src->name;
  if (t->opts.fin_timeout_ms && !t->fin_deadline_ms) {
    t->fin_deadline_ms = uv_now(t->loop) + t->opts.fin_timeout_ms;
    tun_arm_timer(t);
  }
}

/* Moves bytes until dst is full, src has nothing more, src ended, or the round
 * budget is spent; sets d->wait to the event that lets it go on. 0, or -errno
 * with *culprit set to the end at fault (NULL: the proxy itself). */
static int tun_dir_move(tun_dir *d, tun_end **culprit) {
  int more = 1;
  for (int round = 0;; round++) {
    int r = tun_dir_flush(d);
    if (r == -EAGAIN) {
      d->wait = TUN_WAIT_WRITE;
      return 0;
    }
    if (r < 0) {
      *culprit = r == -ENOMEM ? NULL : d->dst;
      return r;
    }
    if (d->eof) {
      d->wait = TUN_WAIT_NONE;
      d->done = 1;
      if (shutdown(d->dst->fd, SHUT_WR) < 0) {
        *culprit = d->dst;
        return -errno;
      }
      return 0;
    }
    /* A short read means the socket was drained a moment ago: asking again now
     * would mostly cost an EAGAIN per message; the level-triggered poll says
     * when there is more (as libuv's own stream reads do). */
    if (!more || round == TUN_ROUNDS) {
      d->wait = TUN_WAIT_READ;
      return 0;
    }
    ssize_t n = tun_dir_fill(d);
    if (n == -EAGAIN) {
      d->wait = TUN_WAIT_READ;
      return 0;
    }
    if (n < 0) {
      *culprit = n == -ENOMEM ? NULL : d->src;
      return (int)n;
    }
    if (n == 0) {
      d->eof = 1;
      tun_saw_fin(d);
    } else {
      d->t->last_active_ms = uv_now(d->t->loop);
      more = n == TUN_CHUNK;
    }
  }
}

/* The one routine both directions run, called with (from, to) implied by d. */
static int tun_dir_pump(tun_dir *d, tun_end **culprit) {
  if (d->done) return 0;
  int r = tun_dir_move(d, culprit);
  if (r == 0 && !tun_dir_in_flight(d)) tun_dir_release(d);
  return r;
}

static void tun_on_close(uv_handle_t *h) {
  sy_tunnel *t = h->type == UV_POLL ? ((tun_end *)h->data)->t : h->data;
  if (--t->open_handles > 0) return;
  if (!t->aborted) {
    sy_tunnel_stats st;
    sy_tunnel_stats_get(t, &st);
    t->cb(t, &st, t->arg);
  }
  free(t);
}

static void tun_finish(sy_tunnel *t, const char *closed_by, const char *reason, int rst) {
  if (t->closing) return;
  t->closing = 1;
  t->end_ns = uv_hrtime();
  t->closed_by = closed_by;
  snprintf(t->reason, sizeof(t->reason), "%s", reason);
  for (int i = 0; i < 2; i++) {
    tun_dir *d = &t->dir[i];
    /* Bytes we drop must not look like a clean end to the side expecting them. */
    if (tun_dir_in_flight(d)) rst |= d->dst == &t->end[0] ? TUN_RST_CLIENT : TUN_RST_UPSTREAM;
    if (d->pipe[0] >= 0) {
      if (d->in_pipe)
        sy_pipe_pool_drop(t->pool, d->pipe);
      else
        sy_pipe_pool_put(t->pool, d->pipe);
    }
    d->in_pipe = 0;
    free(d->buf);
    d->buf = NULL;
    d->off = d->len = 0;
  }
  uv_close((uv_handle_t *)&t->timer, tun_on_close);
  for (int i = 0; i < 2; i++) {
    tun_end *e = &t->end[i];
    /* uv_close on a poll handle removes the fd from epoll synchronously, so the
     * fd can be closed right away without the loop ever seeing a reused number. */
    uv_close((uv_handle_t *)&e->poll, tun_on_close);
    if (rst & (i == 0 ? TUN_RST_CLIENT : TUN_RST_UPSTREAM)) {
      struct linger lg = {.l_onoff = 1, .l_linger = 0};
      (void)setsockopt(e->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(e->fd);
    e->fd = -1;
  }
}

static void tun_fail(sy_tunnel *t, tun_end *culprit, int err) {
  int reset = err == -ECONNRESET || err == -EPIPE || err == -ENOTCONN;
  tun_finish(t, culprit ? culprit->name : "proxy", reset ? "reset" : "error",
             TUN_RST_CLIENT | TUN_RST_UPSTREAM);
}

static void tun_update_polls(sy_tunnel *t) {
  for (int i = 0; i < 2 && !t->closing; i++) {
    tun_end *e = &t->end[i];
    int ev = (e->rx->wait == TUN_WAIT_READ ? UV_READABLE : 0) |
             (e->tx->wait == TUN_WAIT_WRITE ? UV_WRITABLE : 0);
    if (ev == e->events) continue;
    int r = ev ? uv_poll_start(&e->poll, ev, tun_on_poll) : uv_poll_stop(&e->poll);
    if (r < 0) {
      tun_fail(t, NULL, r);
      return;
    }
    e->events = ev;
  }
}

static void tun_run(sy_tunnel *t, tun_dir *d) {
  tun_end *culprit = NULL;
  int r = tun_dir_pump(d, &culprit);
  if (r < 0)
    tun_fail(t, culprit, r);
  else if (t->dir[0].done && t->dir[1].done)
    tun_finish(t, t->first_fin, "eof", 0);
}

static void tun_on_poll(uv_poll_t *h, int status, int events) {
  tun_end *e = h->data;
  sy_tunnel *t = e->t;
  t->wakeups++;
  if (status < 0) {
    /* libuv reports POLLERR as a bare UV_EBADF and has already stopped the
     * watcher; the socket knows the real error (ECONNRESET for an RST). */
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err) {
      tun_fail(t, e, -err);
      return;
    }
    /* The error was already consumed: let the syscalls find out what is left. */
    e->events = 0;
    events = UV_READABLE | UV_WRITABLE;
  }
  /* UV_DISCONNECT is never asked for, but a read is the right answer to it too. */
  if (events & (UV_READABLE | UV_DISCONNECT)) tun_run(t, e->rx);
  if (!t->closing && (events & UV_WRITABLE)) tun_run(t, e->tx);
  tun_update_polls(t);
}

/* One timer serves both limits; it is not re-armed per byte: when it fires
 * early (traffic moved in the meantime) it is pushed to the new deadline. */
static void tun_on_timer(uv_timer_t *h) {
  sy_tunnel *t = h->data;
  uint64_t now = uv_now(t->loop);
  if (t->fin_deadline_ms && now >= t->fin_deadline_ms)
    tun_finish(t, "proxy", "fin_timeout", 0);
  else if (t->opts.idle_timeout_ms && now - t->last_active_ms >= t->opts.idle_timeout_ms)
    tun_finish(t, "proxy", "idle_timeout", 0);
  else
    tun_arm_timer(t);
}

static void tun_arm_timer(sy_tunnel *t) {
  uint64_t due = UINT64_MAX;
  if (t->opts.idle_timeout_ms) due = t->last_active_ms + t->opts.idle_timeout_ms;
  if (t->fin_deadline_ms && t->fin_deadline_ms < due) due = t->fin_deadline_ms;
  if (due == UINT64_MAX) {
    uv_timer_stop(&t->timer);
    return;
  }
  uint64_t now = uv_now(t->loop);
  uv_timer_start(&t->timer, tun_on_timer, due > now ? due - now : 0, 0);
}

static int tun_set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
  return 0;
}

static int tun_dir_init(sy_tunnel *t, tun_dir *d, tun_end *src, tun_end *dst, const char *pending,
                        size_t len) {
  d->t = t;
  d->src = src;
  d->dst = dst;
  d->pipe[0] = d->pipe[1] = -1;
  d->copy = t->opts.force_copy != 0;
  src->rx = d;
  dst->tx = d;
  if (len > 0) {
    if (!(d->buf = malloc(len))) return -ENOMEM;
    memcpy(d->buf, pending, len);
    d->len = d->cap = len;
  }
  /* Pending bytes go first: until they are out, the source is not even polled. */
  d->wait = len > 0 ? TUN_WAIT_WRITE : TUN_WAIT_READ;
  return 0;
}

sy_tunnel *sy_tunnel_start(uv_loop_t *loop, sy_pipe_pool *pool, int client_fd, int upstream_fd,
                           const char *to_upstream, size_t to_upstream_len, const char *to_client,
                           size_t to_client_len, const sy_tunnel_opts *opts, sy_tunnel_done_cb cb,
                           void *arg) {
  if (!loop || !pool || !cb || client_fd < 0 || upstream_fd < 0 || client_fd == upstream_fd) {
    errno = EINVAL;
    return NULL;
  }
  sy_tunnel *t = calloc(1, sizeof(*t));
  if (!t) return NULL;
  t->loop = loop;
  t->pool = pool;
  if (opts) t->opts = *opts;
  t->cb = cb;
  t->arg = arg;
  t->end[0] = (tun_end){.t = t, .name = "client", .fd = client_fd};
  t->end[1] = (tun_end){.t = t, .name = "upstream", .fd = upstream_fd};
  if (tun_dir_init(t, &t->dir[0], &t->end[0], &t->end[1], to_upstream, to_upstream_len) < 0 ||
      tun_dir_init(t, &t->dir[1], &t->end[1], &t->end[0], to_client, to_client_len) < 0)
    goto fail_free;
  int r;
  if ((r = tun_set_nonblock(client_fd)) < 0 || (r = tun_set_nonblock(upstream_fd)) < 0 ||
      (r = uv_poll_init(loop, &t->end[0].poll, client_fd)) < 0)
    goto fail_free;
  t->end[0].poll.data = &t->end[0];
  if ((r = uv_poll_init(loop, &t->end[1].poll, upstream_fd)) < 0) {
    /* The first handle is live in the loop now and can only go away through
     * uv_close; it frees the struct later without calling back. */
    t->aborted = 1;
    t->open_handles = 1;
    free(t->dir[0].buf);
    free(t->dir[1].buf);
    uv_close((uv_handle_t *)&t->end[0].poll, tun_on_close);
    errno = -r;
    return NULL;
  }
  t->end[1].poll.data = &t->end[1];
  uv_timer_init(loop, &t->timer);
  t->timer.data = t;
  t->open_handles = 3;
  t->start_ns = uv_hrtime();
  t->last_active_ms = uv_now(loop);
  /* No I/O here: the level-triggered polls start everything on the next loop
   * turn, so no caller ever sees a callback from inside this function. */
  tun_update_polls(t);
  tun_arm_timer(t);
  return t;

fail_free:
  free(t->dir[0].buf);
  free(t->dir[1].buf);
  free(t);
  return NULL;
}

void sy_tunnel_close(sy_tunnel *t, const char *reason) {
  if (!t) return;
  tun_finish(t, "proxy", reason ? reason : "shutdown", 0);
}

void sy_tunnel_stats_get(const sy_tunnel *t, sy_tunnel_stats *out) {
  out->bytes_c2u = t->dir[0].bytes;
  out->bytes_u2c = t->dir[1].bytes;
  out->spliced = t->dir[0].spliced + t->dir[1].spliced;
  out->copied = t->dir[0].copied + t->dir[1].copied;
  out->duration_ms = ((t->closing ? t->end_ns : uv_hrtime()) - t->start_ns) / 1000000u;
  out->wakeups = t->wakeups;
  out->closed_by = t->closing ? t->closed_by : NULL;
  out->reason = t->closing ? t->reason : NULL;
}
