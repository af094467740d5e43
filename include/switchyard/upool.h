/* Upstream connections and the per-worker keep-alive pool that holds the idle
 * ones. A pooled connection stays read by its owner's callbacks, which close
 * it on any byte or EOF while it is idle (c == NULL), and it expires after
 * idle_timeout.
 * Only cleartext connections that ended a response cleanly are pooled, never
 * one that carried an upgrade. */
#ifndef SWITCHYARD_UPOOL_H
#define SWITCHYARD_UPOOL_H

#include <stdint.h>
#include <uv.h>

#include "switchyard/config.h"
#include "switchyard/sock.h"

typedef struct sy_upool sy_upool;

typedef struct sy_link {
  sy_sock sock;                /* sock.data: the link */
  uv_timer_t idle;             /* initialised the first time the link is pooled */
  void *c;                     /* the connection using it; NULL while pooled or closing */
  const sy_server_cfg *server; /* valid only while a connection uses the link */
  sy_server_rt *rt;            /* identity across reloads; held while pooled */
  sy_upool *pool;
  struct sy_link *next, *prev; /* pool list */
  int handles;                 /* the socket and the timer while open; freed at 0 */
  int pooled, reused, freed_by_pool;
  void (*on_closed)(void *c); /* called once fully closed, if c was set */
} sy_link;

sy_upool *sy_upool_new(uv_loop_t *loop, size_t max_idle_total);
/* Closes every idle connection; the pool frees itself once they are closed. */
void sy_upool_free(sy_upool *p);

/* A new link for `server` (not connected), driven by the worker's set. */
sy_link *sy_link_new(sy_evset *ev, const sy_server_cfg *s);
/* Closes the link; on_closed(c) runs once its socket and timer are closed. */
void sy_link_close(sy_link *l);
/* Its socket's descriptor, given away still in the worker's set (a tunnel
 * takes it); -1 if the socket is busy. sy_link_close then ends the rest. */
int sy_link_release_fd(sy_link *l);

/* Keep an idle link: 0 pooled (the pool owns it now), -1 refused (the
 * caller closes it). */
int sy_upool_put(sy_upool *p, sy_link *l, unsigned max_idle_per_server, uint64_t idle_ms);
/* The most recently pooled link to `s`, or NULL. */
sy_link *sy_upool_get(sy_upool *p, const sy_server_cfg *s);
size_t sy_upool_idle(const sy_upool *p);

#endif
