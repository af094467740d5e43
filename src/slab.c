/* See slab.h. Blocks are aligned to their size, so a slot finds its block by
 * masking its address (no per-slot header); free slots are linked through
 * their first word. Slots never handed out are carved lazily, so a fresh
 * block's untouched pages cost nothing. */
#include "switchyard/slab.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define BLOCK_BYTES (64 * 1024)

struct sy_slab_block {
  sy_slab_block *next, **prev; /* on s->avail while it has room */
  char *free;                  /* freed slots (their object) */
  uint32_t used, carved, nslots;
};

void sy_slab_init(sy_slab *s, size_t slot) {
  memset(s, 0, sizeof(*s));
  s->slot = (slot + 15) & ~(size_t)15;
}

static size_t first_slot(void) {
  return (sizeof(sy_slab_block) + 15) & ~(size_t)15;
}

/* BLOCK_BYTES of memory aligned to BLOCK_BYTES: map twice that, give back
 * the ends. */
static void *map_block(void) {
  char *m = mmap(NULL, 2 * BLOCK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return NULL;
  uintptr_t a = ((uintptr_t)m + BLOCK_BYTES - 1) & ~(uintptr_t)(BLOCK_BYTES - 1);
  char *b = (char *)a;
  if (b > m) munmap(m, (size_t)(b - m));
  if (b + BLOCK_BYTES < m + 2 * BLOCK_BYTES)
    munmap(b + BLOCK_BYTES, (size_t)(m + 2 * BLOCK_BYTES - (b + BLOCK_BYTES)));
  return b;
}

static void avail_push(sy_slab *s, sy_slab_block *b) {
  b->next = s->avail;
  if (b->next) b->next->prev = &b->next;
  b->prev = &s->avail;
  s->avail = b;
}

static void avail_unlink(sy_slab_block *b) {
  *b->prev = b->next;
  if (b->next) b->next->prev = b->prev;
  b->next = NULL;
  b->prev = NULL;
}

void *sy_slab_alloc(sy_slab *s) {
  sy_slab_block *b = s->avail;
  if (!b) {
    b = map_block();
    if (!b) return NULL;
    memset(b, 0, sizeof(*b));
    b->nslots = (uint32_t)((BLOCK_BYTES - first_slot()) / s->slot);
    if (b->nslots == 0) {
      munmap(b, BLOCK_BYTES);
      return NULL;
    }
    s->blocks++;
    avail_push(s, b);
  }
  char *obj;
  if (b->free) {
    obj = b->free;
    memcpy(&b->free, obj, sizeof(char *));
  } else {
    obj = (char *)b + first_slot() + (size_t)b->carved++ * s->slot;
  }
  if (++b->used == b->nslots) avail_unlink(b);
  memset(obj, 0, s->slot);
  return obj;
}

void sy_slab_free(sy_slab *s, void *p) {
  if (!p) return;
  char *obj = p;
  sy_slab_block *b = (sy_slab_block *)((uintptr_t)p & ~(uintptr_t)(BLOCK_BYTES - 1));
  int was_full = b->used == b->nslots;
  memcpy(obj, &b->free, sizeof(char *));
  b->free = obj;
  b->used--;
  if (was_full) avail_push(s, b);
  /* An empty block goes back unless it is the only one with room: a tunnel
   * opening and closing alone should not map and unmap a block each time. */
  if (b->used == 0 && !(s->avail == b && !b->next)) {
    avail_unlink(b);
    munmap(b, BLOCK_BYTES);
    s->blocks--;
  }
}

void sy_slab_destroy(sy_slab *s) {
  while (s->avail) {
    sy_slab_block *b = s->avail;
    avail_unlink(b);
    munmap(b, BLOCK_BYTES);
    s->blocks--;
  }
}
