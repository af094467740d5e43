#include "switchyard/upool.h"

#include <stdlib.h>

#include "switchyard/limits.h"

struct sy_upool {
  uv_loop_t *loop;
  sy_link *head; /* most recently pooled first */
  size_t n, max;
  int freeing;
  size_t closing; /* links closed by sy_upool_free, not yet gone */
};

sy_upool *sy_upool_new(uv_loop_t *loop, size_t max_idle_total) {
  sy_upool *p = calloc(1, sizeof(*p));
  if (p) {
    p->loop = loop;
    p->max = max_idle_total;
  }
  return p;
}

static void unlink_from_pool(sy_link *l) {
  sy_upool *p = l->pool;
  if (!l->pooled || !p) return;
  if (l->prev)
    l->prev->next = l->next;
  else
    p->head = l->next;
  if (l->next) l->next->prev = l->prev;
  l->next = l->prev = NULL;
  l->pooled = 0;
  p->n--;
  uv_timer_stop(&l->idle);
  sy_limits_fds_give(1);
}

static void link_part_closed(sy_link *l) {
  if (--l->handles > 0) return;
  void *c = l->c;
  void (*cb)(void *) = l->on_closed;
  if (l->rt) sy_server_rt_unref(l->rt);
  sy_upool *p = l->freed_by_pool ? l->pool : NULL;
  free(l);
  if (c && cb) cb(c);
  if (p && --p->closing == 0) free(p);
}

static void on_handle_closed(uv_handle_t *h) {
  link_part_closed(h->data);
}

static void on_sock_closed(sy_sock *s) {
  link_part_closed(s->data);
}

sy_link *sy_link_new(sy_evset *ev, const sy_server_cfg *s) {
  sy_link *l = calloc(1, sizeof(*l));
  if (!l) return NULL;
  sy_sock_init(&l->sock, ev);
  l->sock.data = l;
  l->server = s;
  l->handles = 1;
  return l;
}

void sy_link_close(sy_link *l) {
  unlink_from_pool(l);
  if (!sy_sock_is_closing(&l->sock)) sy_sock_close(&l->sock, on_sock_closed);
  if (l->idle.loop && !uv_is_closing((uv_handle_t *)&l->idle))
    uv_close((uv_handle_t *)&l->idle, on_handle_closed);
}

int sy_link_release_fd(sy_link *l) {
  return sy_sock_release(&l->sock, on_sock_closed);
}

static void on_idle_expired(uv_timer_t *t) {
  sy_link_close(t->data);
}

int sy_upool_put(sy_upool *p, sy_link *l, unsigned max_idle_per_server, uint64_t idle_ms) {
  if (!p || p->freeing || p->n >= p->max || max_idle_per_server == 0) return -1;
  unsigned same = 0;
  for (sy_link *x = p->head; x; x = x->next)
    same += x->rt == l->server->rt;
  if (same >= max_idle_per_server) return -1;
  if (!l->idle.loop) {
    if (uv_timer_init(p->loop, &l->idle) < 0) return -1;
    l->idle.data = l;
    l->handles++;
  }
  if (!sy_sock_is_reading(&l->sock))
    return -1; /* the owner must keep it reading to notice a close */
  /* An idle connection belongs to no client's share of the budget. */
  if (sy_limits_fds_take(1) < 0) return -1;
  l->c = NULL;
  /* Keyed by the server's runtime state, which a reload carries over for the
   * same upstream and address and which this reference keeps from being
   * freed and reused: a snapshot's server struct may be gone by reuse time. */
  if (!l->rt) {
    l->rt = l->server->rt;
    sy_server_rt_ref(l->rt);
  }
  l->server = NULL;
  l->pool = p;
  l->pooled = 1;
  l->prev = NULL;
  l->next = p->head;
  if (p->head) p->head->prev = l;
  p->head = l;
  p->n++;
  uv_timer_start(&l->idle, on_idle_expired, idle_ms, 0);
  return 0;
}

/* The peer's FIN or an error reported by the set, not yet read (that
 * happens on a later turn): the connection cannot carry a request. */
static int gone(const sy_link *l) {
  return l->sock.rdhup || l->sock.failed;
}

sy_link *sy_upool_get(sy_upool *p, const sy_server_cfg *s) {
  if (!p) return NULL;
  for (sy_link *l = p->head, *next; l; l = next) {
    next = l->next;
    if (l->rt == s->rt && gone(l)) {
      sy_link_close(l);
      continue;
    }
    if (l->rt == s->rt) {
      l->server = s;
      unlink_from_pool(l);
      l->pool = NULL;
      l->reused = 1;
      return l;
    }
  }
  return NULL;
}

size_t sy_upool_idle(const sy_upool *p) {
  return p ? p->n : 0;
}

void sy_upool_free(sy_upool *p) {
  if (!p) return;
  p->freeing = 1;
  if (!p->head) {
    free(p);
    return;
  }
  while (p->head) {
    sy_link *l = p->head;
    unlink_from_pool(l);
    l->freed_by_pool = 1; /* its last close callback counts down `closing` */
    p->closing++;
    sy_link_close(l);
  }
}
