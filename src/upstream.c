#include "switchyard/upstream.h"

static unsigned total_weight(const sy_upstream_cfg *up) {
  unsigned t = 0;
  for (size_t i = 0; i < up->nservers; i++)
    t += up->servers[i].weight ? up->servers[i].weight : 1;
  return t;
}

unsigned sy_upstream_first(sy_upstream_cfg *up) {
  /* Weighted round-robin over a virtual list where server i appears weight_i
   * times; the cursor is shared by every worker. */
  unsigned t = total_weight(up);
  unsigned slot = __atomic_fetch_add(&up->rr_next, 1, __ATOMIC_RELAXED) % (t ? t : 1);
  for (size_t i = 0; i < up->nservers; i++) {
    unsigned w = up->servers[i].weight ? up->servers[i].weight : 1;
    if (slot < w)
      return (unsigned)i;
    slot -= w;
  }
  return 0;
}

const sy_server_cfg *sy_upstream_server(const sy_upstream_cfg *up, unsigned first,
                                        unsigned attempt) {
  if (attempt >= up->nservers)
    return NULL;
  return &up->servers[(first + attempt) % up->nservers];
}
