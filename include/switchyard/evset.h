/* The worker's edge-triggered epoll set: every socket the worker moves bytes
 * on (client and upstream connections, then their tunnels) is added to it
 * once, for reading and writing, and stays in it until it is closed. Who
 * handles a socket's events is looked up by descriptor in the set's own
 * table, so a socket changes hands (a connection's 101 hands it to the
 * tunnel hub) by an assignment, not a system call.
 *
 * libuv still runs the timers, signals, listeners and the admin endpoint. A
 * turn blocks in one of the two sets with the other inside it:
 *   LOOP: in libuv, with this set watched as one fd (a socket's wakeup costs
 *         libuv's epoll_wait and then ours);
 *   OWN:  in this set, with libuv's backend fd inside it (a libuv wakeup
 *         costs two);
 *   AUTO: whichever the recent wakeups were cheaper under (the default).
 * Use sy_evset_turn or sy_evset_run instead of uv_run on the loop.
 *
 * Work deferred to the end of the turn (a write's callback, a read that
 * waits for its turn) goes on the set's `later` list, which runs before the
 * turn blocks again, so a callback never runs from inside the call that
 * caused it. Everything runs on the loop's thread. */
#ifndef SWITCHYARD_EVSET_H
#define SWITCHYARD_EVSET_H

#include <stdint.h>
#include <uv.h>

typedef struct sy_evset sy_evset;

/* The events of fd for its owner: `tag` (0 or 1) is what the owner registered with
 * (a side, say); events are EPOLL* bits. Spurious events are possible (a
 * descriptor closed and reused within one batch): a handler treats an event
 * as a hint and learns the truth from the next read or write. */
typedef void (*sy_ev_fn)(void *obj, unsigned tag, uint32_t events);

/* Deferred work, embedded in whatever it belongs to. */
typedef struct sy_later {
  struct sy_later *next;
  void (*fn)(struct sy_later *l);
  int queued; /* 0 no, 1 for this turn (sy_evset_later), 2 for the next (sy_evset_next) */
} sy_later;

enum sy_ev_mode { SY_EV_AUTO = 0, SY_EV_LOOP, SY_EV_OWN };

sy_evset *sy_evset_new(uv_loop_t *loop);
/* Closes its handles (nothing may be registered any more); freed by the
 * loop's next run. */
void sy_evset_free(sy_evset *e);
uv_loop_t *sy_evset_loop(const sy_evset *e);

/* fd joins the set (EPOLL_CTL_ADD with events | EPOLLET); its events go to fn.
 * obj is at least 8-byte aligned; a set knows at most 4 different handlers.
 * -errno on failure. */
int sy_evset_add(sy_evset *e, int fd, uint32_t events, sy_ev_fn fn, void *obj, unsigned tag);
/* New interest for a registered fd (EPOLL_CTL_MOD). */
int sy_evset_mod(sy_evset *e, int fd, uint32_t events);
/* A registered fd's events go to a new owner from now on: no system call. */
void sy_evset_retarget(sy_evset *e, int fd, sy_ev_fn fn, void *obj, unsigned tag);
/* Before close(fd): the table forgets it. The kernel drops the fd from the
 * set with its last descriptor; `del` also removes it now (other descriptors
 * of the socket may be open). */
void sy_evset_forget(sy_evset *e, int fd, int del);

/* What keeps the loop alive on this set's side (open sockets, tunnels). */
void sy_evset_hold(sy_evset *e, int delta);

/* Runs l->fn once, at the end of this turn (or the next, if the turn is
 * over); what it queues runs in the same pass. Queueing a queued item again
 * does nothing. */
void sy_evset_later(sy_evset *e, sy_later *l);
/* Runs l->fn at the end of the next turn, after its events (which then does
 * not block): for work that yields to the other sockets, as a tunnel that
 * moved its share does. */
void sy_evset_next(sy_evset *e, sy_later *l);

void sy_evset_set_mode(sy_evset *e, enum sy_ev_mode mode);
/* Whether the last turn blocked in this set (OWN). */
int sy_evset_owns_loop(const sy_evset *e);
/* The fd the next turn blocks on: readable when the turn would find work. */
int sy_evset_backend_fd(const sy_evset *e);
/* One turn, blocking at most timeout_ms (-1: until there is work). Nonzero
 * while the loop has anything left (handles, held sockets, deferred work). */
int sy_evset_turn(sy_evset *e, int timeout_ms);
/* Turns until nothing is left. */
void sy_evset_run(sy_evset *e);

#endif
