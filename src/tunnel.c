#include "switchyard/tunnel.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "switchyard/evset.h"
#include "switchyard/slab.h"

/* A copy-mode read (the hub's scratch buffer holds one). */
#define TUN_CHUNK (64 * 1024)
/* A splice asks for this much; the kernel moves at most what the pipe holds
 * (256 KiB from the pool, less when fs.pipe-user-pages-soft is reached), so a
 * direction never has more than one pipe's worth in flight. 256 KiB rather
 * than 64 KiB: a third less CPU per byte in the sink benchmark. */
#define TUN_SPLICE_LEN (256 * 1024)
/* A read that may be a small message asks for this much and is copied: for a
 * few hundred bytes, recv+send costs less than two splices and a pipe slot
 * (~1 us less proxy CPU per 32-byte round trip, measured), and the tunnel
 * needs no pipe at all. A full small read means more is queued: the rest of
 * that burst is spliced. HAProxy splices only large transfers for the same
 * reason. */
#define TUN_SMALL 4096
/* Chunks one direction may move per turn before yielding to the rest of the
 * loop; a tunnel that had more to do is queued and resumed on the next turn. */
#define TUN_ROUNDS 16
/* Never SPLICE_F_MORE: it would make the kernel hold back small frames
 * (interactive WebSocket traffic) waiting for more (cf. Go issue 10948). */
#define TUN_SPLICE_FLAGS (SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
/* Timer wheel: deadlines are rounded up to a tick; one lap covers ~16 s, and a
 * tunnel whose deadline is further away is looked at once per lap. */
#define WHEEL_TICK_MS 16
#define WHEEL_SLOTS 1024
/* Writability is only asked for once a write has found the socket full: an
 * idle or lightly used tunnel never gets writable events. (A socket handed
 * over by a connection was registered for both from the start.) */
#define EV_BASE (EPOLLIN | EPOLLRDHUP)

enum { SIDE_CLIENT = 0, SIDE_UPSTREAM = 1 };
enum { BY_NONE, BY_CLIENT, BY_UPSTREAM, BY_PROXY };
static const char *const by_names[] = {NULL, "client", "upstream", "proxy"};

/* One direction: dir[i] reads fd[i] and writes fd[1 - i]. Invariants: bytes in
 * flight live either in the buffer (pending bytes, copy mode) or in the pipe,
 * never both; a new chunk is read only when nothing is in flight; and between
 * turns a direction with nothing in flight holds neither pipe nor buffer. */
typedef struct tun_dir {
  int pipe[2]; /* borrowed from the pool while bytes are in flight */
  uint32_t in_pipe, pipe_cap;
  uint32_t off, len; /* buf[off, len) is in flight */
  char *buf;         /* pending bytes, exact size: what a copy could not send at once */
  uint64_t bytes, spliced;
  unsigned eof : 1;   /* the source sent FIN */
  unsigned done : 1;  /* ... and it was passed on with shutdown(dst, SHUT_WR) */
  unsigned copy : 1;  /* no splice for this direction */
  unsigned small : 1; /* the last splice was short: the next read is a small copy */
  uint32_t asked;     /* the last read was a copy of at most this much (0: a splice) */
} tun_dir;

/* The whole state of a tunnel: everything here, nothing in libuv. */
struct sy_tunnel {
  sy_tunnel_hub *hub;
  void *arg;
  int fd[2];
  tun_dir dir[2];
  /* Exactly one list at a time: a wheel slot or the untimed list while open,
   * the hub's zombie list (wnext only) once closed. */
  sy_tunnel *wnext, **wprev;
  sy_tunnel *rnext; /* the ready list: more to do on the next turn */
  uint64_t last_active_ms, fin_deadline_ms, start_ms, end_ms;
  uint32_t idle_ms, fin_ms;
  uint32_t wakeups;
  const char *reason;
  /* Edge-triggered readiness as last learnt: set by events, cleared by EAGAIN
   * or by a read that proves the socket empty (tun_read_drained). */
  uint8_t readable[2], writable[2], out_armed[2];
  uint8_t rdhup[2]; /* the peer's FIN was reported: read on until 0, whatever */
  uint8_t closing, queued, timed, first_fin, closed_by, exclusive;
  uint8_t in_slab; /* from the hub's slab (the usual), else from calloc */
  /* Progress reports: on the hub's dirty list (bytes moved since the last
   * report) while dprev is set; what was reported so far. */
  sy_tunnel *dnext, **dprev;
  uint64_t rep_bytes[2], rep_spliced;
};

struct sy_tunnel_hub {
  uv_loop_t *loop;
  sy_evset *ev; /* the worker's epoll set: the tunnels' sockets are in it */
  sy_pipe_pool *pool;
  sy_tunnel_done_cb cb;
  uv_timer_t timer;
  int open_handles;
  uint32_t page; /* a pipe has one slot per page of capacity */
  size_t count;  /* started, not yet reported done */
  size_t ntimed; /* in the wheel */
  uint64_t cur_tick, armed_tick;
  int armed;
  sy_later kick; /* the ready list and the zombies, at the end of the turn */
  sy_tunnel *ready, *zombies, *untimed;
  sy_slab slab; /* where tunnels live (slab.h says why) */
  sy_tunnel_progress_cb progress;
  uv_timer_t progress_timer; /* runs while the hub holds tunnels and progress is on */
  uint64_t progress_ms;
  sy_tunnel *dirty; /* tunnels that moved bytes since their last report */
  sy_tunnel *wheel[WHEEL_SLOTS];
  char scratch[TUN_CHUNK]; /* copies: read, sent at once, never kept here */
};

enum { TUN_RST_CLIENT = 1, TUN_RST_UPSTREAM = 2 };

static void hub_kick(sy_tunnel_hub *h);

/* ---- lists ---- */

static void wl_insert(sy_tunnel **head, sy_tunnel *t) {
  t->wnext = *head;
  if (*head) (*head)->wprev = &t->wnext;
  *head = t;
  t->wprev = head;
}

static void wl_remove(sy_tunnel *t) {
  if (!t->wprev) return;
  *t->wprev = t->wnext;
  if (t->wnext) t->wnext->wprev = t->wprev;
  t->wnext = NULL;
  t->wprev = NULL;
  if (t->timed) {
    t->timed = 0;
    t->hub->ntimed--;
  }
}

static void queue_ready(sy_tunnel *t) {
  if (t->queued || t->closing) return;
  t->queued = 1;
  t->rnext = t->hub->ready;
  t->hub->ready = t;
  hub_kick(t->hub);
}

/* ---- timeouts ---- */

static uint64_t tun_deadline(const sy_tunnel *t) {
  uint64_t d = UINT64_MAX;
  if (t->idle_ms) d = t->last_active_ms + t->idle_ms;
  if (t->fin_deadline_ms && t->fin_deadline_ms < d) d = t->fin_deadline_ms;
  return d;
}

static void hub_on_timer(uv_timer_t *tm);

static void hub_arm(sy_tunnel_hub *h, uint64_t tick) {
  uint64_t now = uv_now(h->loop), at = tick * WHEEL_TICK_MS;
  h->armed = 1;
  h->armed_tick = tick;
  uv_timer_start(&h->timer, hub_on_timer, at > now ? at - now : 0, 0);
}

/* (Re)files t by its current deadline. Traffic does not move a tunnel in the
 * wheel: last_active_ms just moves on, and the slot, when due, files it again. */
static void tun_schedule(sy_tunnel *t) {
  sy_tunnel_hub *h = t->hub;
  wl_remove(t);
  uint64_t d = tun_deadline(t);
  if (d == UINT64_MAX) {
    wl_insert(&h->untimed, t);
    return;
  }
  if (h->ntimed == 0) h->cur_tick = uv_now(h->loop) / WHEEL_TICK_MS;
  uint64_t tick = (d + WHEEL_TICK_MS - 1) / WHEEL_TICK_MS;
  if (tick <= h->cur_tick) tick = h->cur_tick + 1;
  if (tick >= h->cur_tick + WHEEL_SLOTS) tick = h->cur_tick + WHEEL_SLOTS - 1;
  wl_insert(&h->wheel[tick % WHEEL_SLOTS], t);
  t->timed = 1;
  h->ntimed++;
  if (!h->armed || tick < h->armed_tick) hub_arm(h, tick);
}

static void tun_finish(sy_tunnel *t, int by, const char *reason, int rst);

static void hub_on_timer(uv_timer_t *tm) {
  sy_tunnel_hub *h = tm->data;
  uint64_t now = uv_now(h->loop), to = now / WHEEL_TICK_MS;
  h->armed = 0;
  uint64_t from = h->cur_tick + 1;
  if (to + 1 > from + WHEEL_SLOTS) from = to + 1 - WHEEL_SLOTS;
  sy_tunnel *due = NULL;
  for (uint64_t tk = from; tk <= to; tk++) {
    sy_tunnel **slot = &h->wheel[tk % WHEEL_SLOTS];
    while (*slot) {
      sy_tunnel *t = *slot;
      wl_remove(t);
      t->wnext = due; /* free until t is filed again */
      due = t;
    }
  }
  h->cur_tick = to;
  while (due) {
    sy_tunnel *t = due;
    due = t->wnext;
    t->wnext = NULL;
    if (t->fin_deadline_ms && now >= t->fin_deadline_ms)
      tun_finish(t, BY_PROXY, "fin_timeout", 0);
    else if (t->idle_ms && now - t->last_active_ms >= t->idle_ms)
      tun_finish(t, BY_PROXY, "idle_timeout", 0);
    else
      tun_schedule(t);
  }
  if (h->armed || h->ntimed == 0) return;
  for (uint64_t tk = h->cur_tick + 1; tk < h->cur_tick + WHEEL_SLOTS; tk++)
    if (h->wheel[tk % WHEEL_SLOTS]) {
      hub_arm(h, tk);
      return;
    }
}

/* ---- moving bytes ---- */

static int tun_dir_in_flight(const tun_dir *d) {
  return d->in_pipe > 0 || d->off < d->len;
}

static void tun_dir_free_buf(tun_dir *d) {
  free(d->buf);
  d->buf = NULL;
  d->off = d->len = 0;
}

/* Hands back what a direction no longer needs: an idle direction owns nothing. */
static void tun_dir_release(sy_tunnel *t, tun_dir *d) {
  if (d->pipe[0] >= 0 && d->in_pipe == 0) sy_pipe_pool_put(t->hub->pool, d->pipe, (int)d->pipe_cap);
  if (d->buf && d->off == d->len) tun_dir_free_buf(d);
}

static void dirty_remove(sy_tunnel *t) {
  if (!t->dprev) return;
  *t->dprev = t->dnext;
  if (t->dnext) t->dnext->dprev = t->dprev;
  t->dnext = NULL;
  t->dprev = NULL;
}

static void tun_dir_count(sy_tunnel *t, tun_dir *d, size_t n, int spliced) {
  d->bytes += n;
  if (spliced) d->spliced += n;
  if (!t->dprev && t->hub->progress) { /* once per report interval at most */
    sy_tunnel_hub *h = t->hub;
    t->dnext = h->dirty;
    if (h->dirty) h->dirty->dprev = &t->dnext;
    h->dirty = t;
    t->dprev = &h->dirty;
  }
  t->last_active_ms = uv_now(t->hub->loop);
}

/* The destination refuses splice: move what the pipe holds into a buffer and go
 * on copying. The pipe holds at most one splice (it is only filled when empty). */
static int tun_dir_unsplice(tun_dir *d) {
  assert(d->in_pipe <= TUN_SPLICE_LEN && d->off == d->len);
  char *b = malloc(d->in_pipe);
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
  tun_dir_free_buf(d); /* empty: bytes are never in buffer and pipe at once */
  d->buf = b;
  d->len = (uint32_t)got;
  d->copy = 1;
  return 0;
}

/* Writes what is in flight to fd. 0 when all of it went out, -EAGAIN when fd is
 * full, another -errno when it failed. */
static int tun_dir_flush(sy_tunnel *t, tun_dir *d, int fd) {
  while (d->off < d->len) {
    ssize_t n = send(fd, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    d->off += (uint32_t)n;
    tun_dir_count(t, d, (size_t)n, 0);
  }
  while (d->in_pipe > 0) {
    ssize_t n = splice(d->pipe[0], NULL, fd, NULL, d->in_pipe, TUN_SPLICE_FLAGS);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL || errno == ENOSYS) {
        int r = tun_dir_unsplice(d);
        return r < 0 ? r : tun_dir_flush(t, d, fd);
      }
      return -errno;
    }
    /* The pipe is non-empty and we hold its write end, so 0 cannot mean EOF;
     * treat it as a stall rather than looping on it. */
    if (n == 0) return -EIO;
    d->in_pipe -= (uint32_t)n;
    tun_dir_count(t, d, (size_t)n, 1);
  }
  return 0;
}

/* Copies one chunk: reads up to len bytes into the hub's scratch buffer and
 * sends them on at once. What the destination does not take becomes pending
 * bytes, which the caller's next flush sends (and meets the destination's
 * error, if any, with the right end to blame). >0 bytes read, 0 at EOF, -errno. */
static ssize_t tun_dir_fill_copy(sy_tunnel *t, tun_dir *d, int fd, int dst, uint32_t len) {
  char *b = t->hub->scratch;
  d->asked = len;
  ssize_t n;
  do
    n = recv(fd, b, len, 0);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return n < 0 ? -errno : 0;
  ssize_t w = 0;
  if (t->writable[dst]) {
    do
      w = send(t->fd[dst], b, (size_t)n, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w < 0 && errno == EAGAIN) t->writable[dst] = 0;
    if (w < 0) w = 0;
    if (w > 0) tun_dir_count(t, d, (size_t)w, 0);
  }
  if (w < n) {
    tun_dir_free_buf(d);
    if (!(d->buf = malloc((size_t)(n - w)))) return -ENOMEM;
    memcpy(d->buf, b + w, (size_t)(n - w));
    d->len = (uint32_t)(n - w);
  }
  return n;
}

/* Reads one chunk from fd into the (borrowed) pipe: >0 bytes, 0 at EOF, -errno. */
static ssize_t tun_dir_fill(sy_tunnel *t, tun_dir *d, int fd, int dst) {
  assert(!tun_dir_in_flight(d));
  d->asked = 0;
  if (d->copy) return tun_dir_fill_copy(t, d, fd, dst, TUN_CHUNK);
  /* Only when the bytes can go out now: otherwise the pipe holds them. */
  if (d->small && t->writable[dst]) {
    ssize_t n = tun_dir_fill_copy(t, d, fd, dst, TUN_SMALL);
    if (n == TUN_SMALL) d->small = 0;
    return n;
  }
  /* Out of fds for a pipe: this chunk goes through a buffer instead of failing
   * the tunnel; the next chunk tries the pool again. */
  if (d->pipe[0] < 0) {
    int cap = sy_pipe_pool_get(t->hub->pool, d->pipe);
    if (cap < 0) return tun_dir_fill_copy(t, d, fd, dst, TUN_CHUNK);
    d->pipe_cap = (uint32_t)cap;
  }
  ssize_t n;
  do
    n = splice(fd, NULL, d->pipe[1], NULL, TUN_SPLICE_LEN, TUN_SPLICE_FLAGS);
  while (n < 0 && errno == EINTR);
  if (n > 0) d->in_pipe = (uint32_t)n;
  if (n > 0 && n < TUN_SMALL) d->small = 1;
  if (n >= 0) return n;
  if (errno == EINVAL || errno == ENOSYS) {
    d->copy = 1;
    return tun_dir_fill_copy(t, d, fd, dst, TUN_CHUNK);
  }
  return -errno;
}

static void tun_saw_fin(sy_tunnel *t, int src) {
  if (!t->first_fin) t->first_fin = (uint8_t)(src == SIDE_CLIENT ? BY_CLIENT : BY_UPSTREAM);
  if (t->fin_ms && !t->fin_deadline_ms) {
    t->fin_deadline_ms = uv_now(t->hub->loop) + t->fin_ms;
    tun_schedule(t);
  }
}

/* Whether a read of n bytes proves the socket had nothing more, so the EAGAIN
 * read that edge-triggered events otherwise need can be skipped (for small
 * messages that read was a third of the syscalls). Bytes or a FIN arriving
 * after the read raise a new edge, so only what was already queued matters:
 * - recv() copies across queued segments until the buffer is full or the
 *   queue is empty, so a short recv() drained it;
 * - a splice stops early when the queue is empty or the pipe is out of slots
 *   (one page-sized slot per segment or less): fewer bytes than
 *   the pipe has slots cannot have filled them.
 * A FIN queued behind the data is the exception: once the peer's FIN was
 * reported (EPOLLRDHUP), reads go on until they return 0. */
static int tun_read_drained(const sy_tunnel *t, const tun_dir *d, int src, size_t n) {
  if (t->rdhup[src]) return 0;
  if (d->asked) return n < d->asked;
  return n < d->pipe_cap / t->hub->page;
}

/* Moves bytes of direction i until the destination is full, the source has
 * nothing more (EAGAIN: with edge-triggered events a short read proves nothing,
 * the FIN may still be queued behind it), the source ended, or the round budget
 * is spent (*again). 0, or -errno with *culprit the end at fault (-1: us). */
static int tun_dir_move(sy_tunnel *t, int i, int *culprit, int *again) {
  tun_dir *d = &t->dir[i];
  int src = i, dst = 1 - i;
  for (int round = 0;; round++) {
    if (tun_dir_in_flight(d)) {
      if (!t->writable[dst]) return 0;
      int r = tun_dir_flush(t, d, t->fd[dst]);
      if (r == -EAGAIN) {
        t->writable[dst] = 0;
        return 0;
      }
      if (r < 0) {
        *culprit = r == -ENOMEM ? -1 : dst;
        return r;
      }
    }
    if (d->eof) {
      d->done = 1;
      /* The other way is over too: the close that follows sends this FIN (both
       * receive queues are empty, so it is a FIN, not an RST). */
      if (t->dir[1 - i].done) return 0;
      if (shutdown(t->fd[dst], SHUT_WR) < 0) {
        *culprit = dst;
        return -errno;
      }
      return 0;
    }
    if (!t->readable[src]) return 0;
    if (round == TUN_ROUNDS) {
      *again = 1;
      return 0;
    }
    ssize_t n = tun_dir_fill(t, d, t->fd[src], dst);
    if (n == -EAGAIN) {
      t->readable[src] = 0;
      return 0;
    }
    if (n < 0) {
      *culprit = n == -ENOMEM ? -1 : src;
      return (int)n;
    }
    if (n == 0) {
      d->eof = 1;
      tun_saw_fin(t, src);
    } else {
      t->last_active_ms = uv_now(t->hub->loop);
      if (tun_read_drained(t, d, src, (size_t)n)) t->readable[src] = 0;
    }
  }
}

static void tun_fail(sy_tunnel *t, int culprit, int err) {
  int reset = err == -ECONNRESET || err == -EPIPE || err == -ENOTCONN;
  int by = culprit < 0 ? BY_PROXY : culprit == SIDE_CLIENT ? BY_CLIENT : BY_UPSTREAM;
  tun_finish(t, by, reset ? "reset" : "error", TUN_RST_CLIENT | TUN_RST_UPSTREAM);
}

/* Runs both directions as far as they can go now. */
static void tun_pump(sy_tunnel *t) {
  int again = 0;
  for (int i = 0; i < 2 && !t->closing; i++) {
    if (t->dir[i].done) continue;
    int culprit = -1;
    int r = tun_dir_move(t, i, &culprit, &again);
    if (r < 0) {
      tun_fail(t, culprit, r);
      return;
    }
  }
  if (t->dir[0].done && t->dir[1].done) {
    tun_finish(t, t->first_fin, "eof", 0);
    return;
  }
  for (int e = 0; e < 2; e++) {
    if (t->writable[e] || t->out_armed[e]) continue;
    /* A full destination: from now on this socket reports writability too
     * (edge-triggered, so it costs nothing while it stays writable). MOD also
     * reports the current state, so space freed since the EAGAIN is not lost. */
    int r = sy_evset_mod(t->hub->ev, t->fd[e], EV_BASE | EPOLLOUT);
    if (r < 0) {
      tun_fail(t, -1, r);
      return;
    }
    t->out_armed[e] = 1;
  }
  for (int i = 0; i < 2; i++)
    if (!tun_dir_in_flight(&t->dir[i])) tun_dir_release(t, &t->dir[i]);
  if (again) queue_ready(t);
}

static void tun_finish(sy_tunnel *t, int by, const char *reason, int rst) {
  if (t->closing) return;
  sy_tunnel_hub *h = t->hub;
  t->closing = 1;
  t->end_ms = uv_now(h->loop);
  t->closed_by = (uint8_t)by;
  t->reason = reason;
  for (int i = 0; i < 2; i++) {
    tun_dir *d = &t->dir[i];
    /* Bytes we drop must not look like a clean end to the side expecting them. */
    if (tun_dir_in_flight(d)) rst |= i == 0 ? TUN_RST_UPSTREAM : TUN_RST_CLIENT;
    if (d->pipe[0] >= 0) {
      if (d->in_pipe)
        sy_pipe_pool_drop(h->pool, d->pipe);
      else
        sy_pipe_pool_put(h->pool, d->pipe, (int)d->pipe_cap);
    }
    d->in_pipe = 0;
    tun_dir_free_buf(d);
  }
  for (int e = 0; e < 2; e++) {
    /* Removed explicitly unless the fds are exclusive: another descriptor of
     * the socket may still be open, and epoll watches the file, not the number. */
    sy_evset_forget(h->ev, t->fd[e], !t->exclusive);
    if (rst & (e == SIDE_CLIENT ? TUN_RST_CLIENT : TUN_RST_UPSTREAM)) {
      struct linger lg = {.l_onoff = 1, .l_linger = 0};
      (void)setsockopt(t->fd[e], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(t->fd[e]);
    t->fd[e] = -1;
  }
  wl_remove(t);
  dirty_remove(t); /* the done callback reports the rest */
  if (h->ntimed == 0 && h->armed) {
    uv_timer_stop(&h->timer);
    h->armed = 0;
  }
  /* Reported at the end of the turn, never from inside the call that closed it. */
  t->wnext = h->zombies;
  h->zombies = t;
  hub_kick(h);
}

/* ---- the hub ---- */

static void hub_run_ready(sy_tunnel_hub *h) {
  sy_tunnel *list = h->ready;
  h->ready = NULL;
  while (list) {
    sy_tunnel *t = list;
    list = t->rnext;
    t->rnext = NULL;
    t->queued = 0;
    if (!t->closing) tun_pump(t);
  }
}

static void tun_free(sy_tunnel_hub *h, sy_tunnel *t) {
  if (t->in_slab)
    sy_slab_free(&h->slab, t);
  else
    free(t);
}

static void hub_reap(sy_tunnel_hub *h) {
  sy_tunnel *list = h->zombies;
  h->zombies = NULL;
  while (list) {
    sy_tunnel *t = list;
    list = t->wnext;
    if (t->queued) { /* still on the ready list: next turn */
      t->wnext = h->zombies;
      h->zombies = t;
      continue;
    }
    sy_tunnel_stats st;
    sy_tunnel_stats_get(t, &st);
    sy_evset_hold(h->ev, -1);
    if (--h->count == 0) uv_timer_stop(&h->progress_timer);
    h->cb(t, &st, t->arg);
    tun_free(h, t);
  }
}

/* The bytes moved since the last report, and marks them reported. */
static sy_tunnel_bytes tun_take_delta(sy_tunnel *t) {
  sy_tunnel_bytes d;
  d.c2u = t->dir[0].bytes - t->rep_bytes[0];
  d.u2c = t->dir[1].bytes - t->rep_bytes[1];
  uint64_t sp = t->dir[0].spliced + t->dir[1].spliced;
  d.spliced = sp - t->rep_spliced;
  d.copied = d.c2u + d.u2c - d.spliced;
  t->rep_bytes[0] = t->dir[0].bytes;
  t->rep_bytes[1] = t->dir[1].bytes;
  t->rep_spliced = sp;
  return d;
}

static void hub_on_progress(uv_timer_t *tm) {
  sy_tunnel_hub *h = tm->data;
  /* One at a time off the head: a callback may close any tunnel (which takes
   * it off the list), but moves no bytes, so nothing is added meanwhile. */
  while (h->dirty && h->progress) {
    sy_tunnel *t = h->dirty;
    dirty_remove(t);
    sy_tunnel_bytes d = tun_take_delta(t);
    h->progress(t, &d, t->arg);
  }
}

static void hub_progress_start(sy_tunnel_hub *h) {
  if (h->progress && h->count > 0 && !uv_is_active((uv_handle_t *)&h->progress_timer))
    uv_timer_start(&h->progress_timer, hub_on_progress, h->progress_ms, h->progress_ms);
}

void sy_tunnel_hub_set_progress(sy_tunnel_hub *h, sy_tunnel_progress_cb cb, uint64_t interval_ms) {
  h->progress = cb;
  h->progress_ms = interval_ms ? interval_ms : 1000;
  uv_timer_stop(&h->progress_timer);
  if (!cb)
    while (h->dirty)
      dirty_remove(h->dirty);
  hub_progress_start(h);
}

static void hub_on_kick(sy_later *l) {
  sy_tunnel_hub *h = (sy_tunnel_hub *)((char *)l - offsetof(sy_tunnel_hub, kick));
  hub_run_ready(h);
  hub_reap(h);
  if (h->ready || h->zombies) hub_kick(h);
}

/* Work for the next turn, after its events (which then does not block): a
 * tunnel that moved its share waits for the other sockets. */
static void hub_kick(sy_tunnel_hub *h) {
  sy_evset_next(h->ev, &h->kick);
}

static void tun_on_event(void *obj, unsigned e, uint32_t x) {
  sy_tunnel *t = obj;
  if (t->closing) return;
  t->wakeups++;
  if (x & EPOLLERR) {
    /* The socket knows the real error (ECONNRESET for an RST); without this a
     * direction waiting to write elsewhere would not notice it. */
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(t->fd[e], SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err) {
      tun_fail(t, (int)e, -err);
      return;
    }
  }
  if (x & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) t->readable[e] = 1;
  if (x & (EPOLLRDHUP | EPOLLHUP)) t->rdhup[e] = 1;
  if (x & (EPOLLOUT | EPOLLHUP | EPOLLERR)) t->writable[e] = 1;
  tun_pump(t);
}

static void hub_on_close(uv_handle_t *hd) {
  sy_tunnel_hub *h = hd->data;
  if (--h->open_handles == 0) free(h);
}

sy_tunnel_hub *sy_tunnel_hub_new(sy_evset *ev, sy_pipe_pool *pool, sy_tunnel_done_cb cb) {
  if (!ev || !pool || !cb) return NULL;
  sy_tunnel_hub *h = calloc(1, sizeof(*h));
  if (!h) return NULL;
  h->ev = ev;
  h->loop = sy_evset_loop(ev);
  h->pool = pool;
  h->cb = cb;
  h->kick.fn = hub_on_kick;
  /* A tunnel, its connection's note and the note's strings fit 432 bytes
   * unless the path is long; those come from calloc. */
  sy_slab_init(&h->slab, 432);
  long pg = sysconf(_SC_PAGESIZE);
  h->page = pg > 0 ? (uint32_t)pg : 4096;
  h->timer.data = h->progress_timer.data = h;
  uv_timer_init(h->loop, &h->timer);
  /* Active only while the hub holds tunnels (which keep the loop alive anyway). */
  uv_timer_init(h->loop, &h->progress_timer);
  h->open_handles = 2;
  return h;
}

size_t sy_tunnel_hub_count(const sy_tunnel_hub *h) {
  return h ? h->count : 0;
}

static void close_list(sy_tunnel *t, const char *reason) {
  while (t) {
    sy_tunnel *next = t->wnext; /* tun_finish moves t to the zombie list */
    tun_finish(t, BY_PROXY, reason, 0);
    t = next;
  }
}

void sy_tunnel_hub_close_all(sy_tunnel_hub *h, const char *reason) {
  if (!h) return;
  if (!reason) reason = "shutdown";
  close_list(h->untimed, reason);
  for (size_t i = 0; i < WHEEL_SLOTS; i++)
    close_list(h->wheel[i], reason);
}

void sy_tunnel_hub_free(sy_tunnel_hub *h) {
  if (!h) return;
  assert(h->count == 0);
  sy_slab_destroy(&h->slab);
  uv_close((uv_handle_t *)&h->timer, hub_on_close);
  uv_close((uv_handle_t *)&h->progress_timer, hub_on_close);
}

/* ---- tunnels ---- */

static int tun_set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
  return 0;
}

static int tun_dir_init(tun_dir *d, const char *pending, size_t len) {
  d->pipe[0] = d->pipe[1] = -1;
  d->small = 1; /* after an upgrade, most first messages are small */
  if (len > 0) {
    if (len > UINT32_MAX || !(d->buf = malloc(len))) return -ENOMEM;
    memcpy(d->buf, pending, len);
    d->len = (uint32_t)len;
  }
  return 0;
}

#define TUN_EXTRA_OFF ((sizeof(sy_tunnel) + 15) & ~(size_t)15)

static uint32_t clamp_ms(uint64_t ms) {
  return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
}

sy_tunnel *sy_tunnel_start(sy_tunnel_hub *h, int client_fd, int upstream_fd,
                           const char *to_upstream, size_t to_upstream_len, const char *to_client,
                           size_t to_client_len, const sy_tunnel_opts *opts, size_t extra,
                           void *arg) {
  if (!h || client_fd < 0 || upstream_fd < 0 || client_fd == upstream_fd) {
    errno = EINVAL;
    return NULL;
  }
  size_t size = TUN_EXTRA_OFF + extra;
  int in_slab = size <= h->slab.slot;
  sy_tunnel *t = in_slab ? sy_slab_alloc(&h->slab) : calloc(1, size);
  if (!t) return NULL;
  t->in_slab = (uint8_t)in_slab;
  t->hub = h;
  t->arg = arg;
  t->fd[SIDE_CLIENT] = client_fd;
  t->fd[SIDE_UPSTREAM] = upstream_fd;
  if (opts) {
    t->idle_ms = clamp_ms(opts->idle_timeout_ms);
    t->fin_ms = clamp_ms(opts->fin_timeout_ms);
  }
  int r = -ENOMEM;
  if (tun_dir_init(&t->dir[0], to_upstream, to_upstream_len) < 0 ||
      tun_dir_init(&t->dir[1], to_client, to_client_len) < 0)
    goto fail;
  t->dir[0].copy = t->dir[1].copy = opts && opts->force_copy;
  t->exclusive = opts && (opts->exclusive || opts->registered);
  if (!t->exclusive &&
      ((r = tun_set_nonblock(client_fd)) < 0 || (r = tun_set_nonblock(upstream_fd)) < 0))
    goto fail;
  if (opts && opts->registered) {
    /* Already in the set for both events: the tunnel takes their events over,
     * and what the sockets' last owner knew of their readiness. */
    for (int e = 0; e < 2; e++) {
      sy_evset_retarget(h->ev, t->fd[e], tun_on_event, t, (unsigned)e);
      t->out_armed[e] = 1;
      t->readable[e] = opts->readable[e];
      t->rdhup[e] = opts->rdhup[e];
    }
  } else {
    for (int e = 0; e < 2; e++) {
      r = sy_evset_add(h->ev, t->fd[e], EV_BASE, tun_on_event, t, (unsigned)e);
      if (r < 0) {
        if (e == 1) sy_evset_forget(h->ev, t->fd[0], 1);
        goto fail;
      }
    }
  }
  /* Sockets with bytes already queued are reported by the ADD itself; the
   * pending bytes are written on the next turn (never from in here, so no
   * caller sees a callback from inside this function). */
  t->writable[0] = t->writable[1] = 1;
  t->start_ms = t->last_active_ms = uv_now(h->loop);
  sy_evset_hold(h->ev, 1);
  if (h->count++ == 0) hub_progress_start(h);
  tun_schedule(t);
  queue_ready(t);
  return t;

fail:
  free(t->dir[0].buf);
  free(t->dir[1].buf);
  tun_free(h, t);
  errno = -r;
  return NULL;
}

void *sy_tunnel_extra(sy_tunnel *t) {
  return (char *)t + TUN_EXTRA_OFF;
}

void sy_tunnel_close(sy_tunnel *t, const char *reason) {
  if (!t) return;
  tun_finish(t, BY_PROXY, reason ? reason : "shutdown", 0);
}

void sy_tunnel_stats_get(const sy_tunnel *t, sy_tunnel_stats *out) {
  out->bytes_c2u = t->dir[0].bytes;
  out->bytes_u2c = t->dir[1].bytes;
  out->spliced = t->dir[0].spliced + t->dir[1].spliced;
  out->copied = out->bytes_c2u + out->bytes_u2c - out->spliced;
  out->duration_ms = (t->closing ? t->end_ms : uv_now(t->hub->loop)) - t->start_ms;
  out->wakeups = t->wakeups;
  out->closed_by = t->closing ? by_names[t->closed_by] : NULL;
  out->reason = t->closing ? t->reason : NULL;
  out->unreported.c2u = out->bytes_c2u - t->rep_bytes[0];
  out->unreported.u2c = out->bytes_u2c - t->rep_bytes[1];
  out->unreported.spliced = out->spliced - t->rep_spliced;
  out->unreported.copied = out->unreported.c2u + out->unreported.u2c - out->unreported.spliced;
}
