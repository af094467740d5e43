#include "switchyard/limits.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t tunnels_total;

void sy_limits_tunnels_add(int delta) {
  __atomic_add_fetch(&tunnels_total, (uint64_t)(int64_t)delta, __ATOMIC_RELAXED);
}

uint64_t sy_limits_tunnels(void) {
  return __atomic_load_n(&tunnels_total, __ATOMIC_RELAXED);
}

/* Connections per client address, process-wide: taken at accept and at
 * close only, so one mutex is no cost on the request path. */
typedef struct client_count {
  struct client_count *next;
  uint64_t n;
  char ip[64];
} client_count;

#define SY_CLIENT_BUCKETS 4096
static client_count *client_table[SY_CLIENT_BUCKETS];
static pthread_mutex_t client_mu = PTHREAD_MUTEX_INITIALIZER;

static client_count **client_slot(const char *ip) {
  uint32_t h = 2166136261u;
  for (const char *p = ip; *p; p++)
    h = (h ^ (unsigned char)*p) * 16777619u;
  client_count **pp = &client_table[h % SY_CLIENT_BUCKETS];
  while (*pp && strcmp((*pp)->ip, ip) != 0)
    pp = &(*pp)->next;
  return pp;
}

int sy_limits_client_acquire(const char *ip, uint64_t limit) {
  int rc = 0;
  pthread_mutex_lock(&client_mu);
  client_count **pp = client_slot(ip);
  if (!*pp && (*pp = calloc(1, sizeof(client_count))))
    snprintf((*pp)->ip, sizeof((*pp)->ip), "%s", ip);
  if (!*pp || (*pp)->n >= limit)
    rc = -1;
  else
    (*pp)->n++;
  if (*pp && (*pp)->n == 0) { /* refused before counting: leave no entry */
    client_count *e = *pp;
    *pp = e->next;
    free(e);
  }
  pthread_mutex_unlock(&client_mu);
  return rc;
}

void sy_limits_client_release(const char *ip) {
  pthread_mutex_lock(&client_mu);
  client_count **pp = client_slot(ip);
  if (*pp && --(*pp)->n == 0) {
    client_count *e = *pp;
    *pp = e->next;
    free(e);
  }
  pthread_mutex_unlock(&client_mu);
}
