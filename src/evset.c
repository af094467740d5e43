#include "switchyard/evset.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#define EV_BATCH 128
/* AUTO mode looks at this many turns before it reconsiders where to block. */
#define EV_WINDOW 256

/* A slot is one word per descriptor: the owner (at least 8-byte aligned), its
 * kind (which handler, an index into the set's few) in bits 1-2 and its tag
 * in bit 0; 0 is no owner. Idle tunnels pay for the table (two descriptors
 * each), so it stays small, and the part past the highest descriptor in use
 * is never touched (no zeroing when it grows): a slot is only read for a
 * descriptor that was added, whose slot was written then. */
typedef uintptr_t ev_slot;

#define EV_KINDS 4
#define EV_TAG_MASK ((uintptr_t)1)
#define EV_KIND_SHIFT 1
#define EV_LOW_MASK ((uintptr_t)7)

struct sy_evset {
  uv_loop_t *loop;
  int epfd;
  uv_poll_t poll;     /* LOOP mode: this set, watched by libuv */
  uv_idle_t idle;     /* LOOP mode: deferred work queued from a libuv callback */
  uv_prepare_t watch; /* LOOP mode: counts turns, stops uv_run to switch */
  int open_handles;
  int held;
  /* Where turns block (enum sy_ev_mode): asked for, and now. In OWN mode
   * libuv's fd is in epfd (data 0) and the poll handle is stopped: the two
   * sets never contain each other at the same time. */
  uint8_t mode, own, want; /* want: AUTO's verdict on the last window */
  uint8_t dispatching;
  /* The current AUTO window: turns, and those that had socket events (LOOP
   * mode) or libuv events (OWN mode). */
  uint32_t turns, set_turns, loop_turns;
  ev_slot *slots; /* by descriptor */
  size_t nslots;
  sy_ev_fn kinds[EV_KINDS];      /* the handlers of the owners so far */
  sy_later *later, **later_tail; /* this turn's, run until none is left */
  sy_later *next, **next_tail;   /* the next turn's */
};

static void ev_watch_update(sy_evset *e);

uv_loop_t *sy_evset_loop(const sy_evset *e) {
  return e->loop;
}

/* ---- the table --------------------------------------------------------------- */

static int ev_slot_make(sy_evset *e, int fd) {
  if ((size_t)fd < e->nslots) return 0;
  size_t n = e->nslots ? e->nslots : 256;
  while (n <= (size_t)fd)
    n *= 2;
  ev_slot *s = realloc(e->slots, n * sizeof(*s));
  if (!s) return -ENOMEM;
  e->slots = s;
  e->nslots = n;
  return 0;
}

/* The slot word for an owner; 0 when the set has no room for another kind
 * of handler (a bug: the kinds are the few modules that own sockets). */
static ev_slot ev_slot_of(sy_evset *e, sy_ev_fn fn, void *obj, unsigned tag) {
  uintptr_t k = 0;
  while (k < EV_KINDS && e->kinds[k] && e->kinds[k] != fn)
    k++;
  if (k == EV_KINDS || ((uintptr_t)obj & EV_LOW_MASK) || tag > 1) return 0;
  e->kinds[k] = fn;
  return (uintptr_t)obj | k << EV_KIND_SHIFT | tag;
}

int sy_evset_add(sy_evset *e, int fd, uint32_t events, sy_ev_fn fn, void *obj, unsigned tag) {
  if (fd < 0) return -EBADF;
  ev_slot v = ev_slot_of(e, fn, obj, tag);
  if (!v) return -EINVAL;
  int r = ev_slot_make(e, fd);
  if (r < 0) return r;
  struct epoll_event ev = {.events = events | EPOLLET, .data.u64 = (uint64_t)fd + 1};
  if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) return -errno;
  e->slots[fd] = v;
  return 0;
}

int sy_evset_mod(sy_evset *e, int fd, uint32_t events) {
  struct epoll_event ev = {.events = events | EPOLLET, .data.u64 = (uint64_t)fd + 1};
  return epoll_ctl(e->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

void sy_evset_retarget(sy_evset *e, int fd, sy_ev_fn fn, void *obj, unsigned tag) {
  if (fd >= 0 && (size_t)fd < e->nslots) e->slots[fd] = ev_slot_of(e, fn, obj, tag);
}

void sy_evset_forget(sy_evset *e, int fd, int del) {
  if (fd < 0 || (size_t)fd >= e->nslots) return;
  e->slots[fd] = 0;
  if (del) (void)epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
}

void sy_evset_hold(sy_evset *e, int delta) {
  int was = e->held;
  e->held += delta;
  if (was == 0 && e->held > 0) {
    uv_ref((uv_handle_t *)&e->poll);
    ev_watch_update(e);
  } else if (was > 0 && e->held == 0) {
    uv_unref((uv_handle_t *)&e->poll);
    ev_watch_update(e);
  }
}

/* ---- deferred work ------------------------------------------------------------ */

static void ev_run_later(sy_evset *e) {
  while (e->later) {
    sy_later *l = e->later;
    e->later = l->next;
    if (!e->later) e->later_tail = &e->later;
    l->next = NULL;
    l->queued = 0;
    l->fn(l);
  }
}

/* The next turn's items become this turn's. */
static void ev_take_next(sy_evset *e) {
  if (!e->next) return;
  *e->later_tail = e->next;
  e->later_tail = e->next_tail;
  e->next = NULL;
  e->next_tail = &e->next;
}

static void ev_on_idle(uv_idle_t *idle) {
  sy_evset *e = idle->data;
  ev_take_next(e);
  ev_run_later(e);
  if (!e->later && !e->next) uv_idle_stop(&e->idle);
}

static void ev_queue(sy_evset *e, sy_later *l, int next) {
  if (l->queued) return;
  l->queued = next ? 2 : 1;
  l->next = NULL;
  if (next) {
    *e->next_tail = l;
    e->next_tail = &l->next;
  } else {
    *e->later_tail = l;
    e->later_tail = &l->next;
  }
  /* A dispatch and an OWN turn run the lists themselves; LOOP mode needs the
   * idle handle for work queued from libuv's callbacks and for the next turn. */
  if (!e->own && (next || !e->dispatching)) uv_idle_start(&e->idle, ev_on_idle);
}

void sy_evset_later(sy_evset *e, sy_later *l) {
  ev_queue(e, l, 0);
}

void sy_evset_next(sy_evset *e, sy_later *l) {
  ev_queue(e, l, 1);
}

/* ---- events ------------------------------------------------------------------- */

/* Handles what epoll_wait returned; nonzero if libuv's fd was among it. */
static int ev_dispatch(sy_evset *e, const struct epoll_event *ev, int n) {
  int loop_ready = 0;
  e->dispatching = 1;
  for (int i = 0; i < n; i++) {
    if (ev[i].data.u64 == 0) {
      loop_ready = 1;
      continue;
    }
    size_t fd = (size_t)(ev[i].data.u64 - 1);
    ev_slot v = fd < e->nslots ? e->slots[fd] : 0;
    if (!v) continue; /* forgotten within this batch */
    e->kinds[(v >> EV_KIND_SHIFT) & (EV_KINDS - 1)]((void *)(v & ~EV_LOW_MASK),
                                                    (unsigned)(v & EV_TAG_MASK), ev[i].events);
  }
  if (e->later) ev_run_later(e);
  e->dispatching = 0;
  return loop_ready;
}

static void ev_on_poll(uv_poll_t *p, int status, int events) {
  sy_evset *e = p->data;
  struct epoll_event ev[EV_BATCH];
  int n;
  do
    n = epoll_wait(e->epfd, ev, EV_BATCH, 0);
  while (n < 0 && errno == EINTR);
  if (n > 0) {
    e->set_turns++;
    ev_dispatch(e, ev, n);
  }
}

/* ---- where the loop blocks ---------------------------------------------------- */

static void ev_switch(sy_evset *e, int own) {
  if (own) {
    /* Stopping the poll handle takes epfd out of libuv's set at once
     * (uv__platform_invalidate_fd), so the ADD cannot make a loop (ELOOP). */
    uv_poll_stop(&e->poll);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, uv_backend_fd(e->loop), &ev) < 0) {
      uv_poll_start(&e->poll, UV_READABLE, ev_on_poll); /* stay as we were */
      return;
    }
    uv_idle_stop(&e->idle); /* OWN turns run the deferred work themselves */
  } else {
    (void)epoll_ctl(e->epfd, EPOLL_CTL_DEL, uv_backend_fd(e->loop), NULL);
    uv_poll_start(&e->poll, UV_READABLE, ev_on_poll);
    if (e->later || e->next) uv_idle_start(&e->idle, ev_on_idle);
  }
  e->own = e->want = (uint8_t)own;
  e->turns = e->set_turns = e->loop_turns = 0;
  ev_watch_update(e);
}

/* Each way of blocking makes one kind of wakeup cost an extra epoll_wait: LOOP
 * the sockets', OWN libuv's. Block where most wakeups come from; the two
 * thresholds differ so a mix near the middle does not flip every window. */
static int ev_want_own(sy_evset *e) {
  if (e->held == 0 || e->mode == SY_EV_LOOP) return 0;
  if (e->mode == SY_EV_OWN) return 1;
  if (e->turns >= EV_WINDOW) {
    e->want = e->own ? e->loop_turns * 2 < e->turns : e->set_turns * 4 > e->turns * 3;
    e->turns = e->set_turns = e->loop_turns = 0;
  }
  return e->want;
}

/* LOOP mode runs libuv's own loop (uv_run DEFAULT: a turn per uv_run call costs
 * an extra epoll_wait after callbacks ran); while sockets are held this counts
 * its turns and stops it when the set should take over. */
static void ev_on_watch(uv_prepare_t *p) {
  sy_evset *e = p->data;
  e->turns++;
  if (ev_want_own(e) != e->own) uv_stop(e->loop);
}

/* The watch runs exactly while it could change something: LOOP mode, with
 * sockets held, and a mode that may leave LOOP. (Start and stop are idempotent.) */
static void ev_watch_update(sy_evset *e) {
  if (!e->own && e->held > 0 && e->mode != SY_EV_LOOP)
    uv_prepare_start(&e->watch, ev_on_watch);
  else
    uv_prepare_stop(&e->watch);
}

void sy_evset_set_mode(sy_evset *e, enum sy_ev_mode mode) {
  e->mode = (uint8_t)mode;
  ev_watch_update(e);
}

int sy_evset_owns_loop(const sy_evset *e) {
  return e->own;
}

int sy_evset_backend_fd(const sy_evset *e) {
  return e->own ? e->epfd : uv_backend_fd(e->loop);
}

static int ev_alive(sy_evset *e) {
  return uv_loop_alive(e->loop) || e->held > 0 || e->later || e->next;
}

static int ev_turn_own(sy_evset *e, int timeout_ms) {
  uv_loop_t *loop = e->loop;
  /* libuv with nothing active would say 0 (do not block); here that only means
   * nothing on its side can wake us, so block until a socket does. */
  int lt = uv_loop_alive(loop) ? uv_backend_timeout(loop) : -1;
  int to = lt;
  if (timeout_ms >= 0 && (to < 0 || to > timeout_ms)) to = timeout_ms;
  ev_take_next(e);
  if (e->later) to = 0;
  struct epoll_event ev[EV_BATCH];
  int n = epoll_wait(e->epfd, ev, EV_BATCH, to);
  uv_update_time(loop); /* timers, wheels and sockets read uv_now() */
  e->turns++;
  int loop_ready = 0;
  if (n > 0) {
    loop_ready = ev_dispatch(e, ev, n);
    if (loop_ready) e->loop_turns++;
  }
  /* libuv's turn when its fd is ready, a timer may be due (the wait timed out)
   * or work was queued for it (idle handles, closes) when the turn began.
   * Work the events above queued is found by the next turn's first question
   * (which then does not block): asking twice a turn was 9% of a tunnel's
   * round trip. */
  if (loop_ready || n == 0 || lt == 0) {
    uv_run(loop, UV_RUN_NOWAIT);
    e->dispatching = 1;
    ev_run_later(e);
    e->dispatching = 0;
  }
  if (e->held == 0) ev_switch(e, 0); /* the last socket went: libuv's wakeups only */
  return ev_alive(e);
}

int sy_evset_turn(sy_evset *e, int timeout_ms) {
  uv_loop_t *loop = e->loop;
  int own = ev_want_own(e);
  if (own != e->own) ev_switch(e, own);
  if (e->own) return ev_turn_own(e, timeout_ms);
  if (timeout_ms < 0) {
    uv_run(loop, UV_RUN_DEFAULT); /* until the end, or until the watch stops it */
    return ev_alive(e);
  }
  int to = uv_backend_timeout(loop);
  if (to < 0 || to > timeout_ms) to = timeout_ms;
  struct pollfd p = {.fd = uv_backend_fd(loop), .events = POLLIN};
  (void)poll(&p, 1, to);
  uv_run(loop, UV_RUN_NOWAIT);
  return ev_alive(e);
}

void sy_evset_run(sy_evset *e) {
  while (sy_evset_turn(e, -1)) {
  }
  if (e->own) ev_switch(e, 0);
}

/* ---- life --------------------------------------------------------------------- */

static void ev_on_close(uv_handle_t *hd) {
  sy_evset *e = hd->data;
  if (--e->open_handles == 0) {
    free(e->slots);
    free(e);
  }
}

sy_evset *sy_evset_new(uv_loop_t *loop) {
  sy_evset *e = calloc(1, sizeof(*e));
  if (!e) return NULL;
  e->loop = loop;
  e->later_tail = &e->later;
  e->next_tail = &e->next;
  e->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (e->epfd < 0 || uv_poll_init(loop, &e->poll, e->epfd) < 0) {
    if (e->epfd >= 0) close(e->epfd);
    free(e);
    return NULL;
  }
  e->poll.data = e->idle.data = e->watch.data = e;
  uv_idle_init(loop, &e->idle);
  uv_prepare_init(loop, &e->watch);
  uv_unref((uv_handle_t *)&e->watch);
  e->open_handles = 3;
  uv_poll_start(&e->poll, UV_READABLE, ev_on_poll);
  uv_unref((uv_handle_t *)&e->poll); /* only held sockets keep the loop alive */
  return e;
}

void sy_evset_free(sy_evset *e) {
  if (!e) return;
  if (e->own) ev_switch(e, 0);
  uv_close((uv_handle_t *)&e->poll, ev_on_close);
  close(e->epfd); /* uv_close has already taken it out of the loop's epoll */
  uv_close((uv_handle_t *)&e->idle, ev_on_close);
  uv_close((uv_handle_t *)&e->watch, ev_on_close);
}
