/* Fixed-size slots carved from 64 KiB blocks of their own, for objects that
 * outlive the ones around them.
 *
 * An idle tunnel outlives the connection that made it; allocated by malloc,
 * each one sat between the freed connection structs of its neighbours, and
 * those holes could not be given back (9,000 idle tunnels: 3.6 MB in use,
 * 6.8 MB resident). In blocks of their own, tunnels pack densely and the
 * heap they leave is free in whole pages. A block goes back to the kernel
 * when its last slot is freed. One owner thread per slab; no locking. */
#ifndef SY_SLAB_H
#define SY_SLAB_H

#include <stddef.h>

typedef struct sy_slab_block sy_slab_block;

typedef struct sy_slab {
  size_t slot;          /* bytes a slot gives its user */
  sy_slab_block *avail; /* blocks with a free or never-used slot */
  size_t blocks;        /* mapped */
} sy_slab;

/* slot: the largest object the slab serves (rounded up to 16). */
void sy_slab_init(sy_slab *s, size_t slot);
/* A zeroed, 16-byte aligned slot; NULL when out of memory. */
void *sy_slab_alloc(sy_slab *s);
/* p from sy_slab_alloc of s. */
void sy_slab_free(sy_slab *s, void *p);
/* Unmaps every block; every slot must have been freed. */
void sy_slab_destroy(sy_slab *s);

#endif
