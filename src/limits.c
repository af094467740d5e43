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

/* The descriptor budget: every descriptor the proxy opens for traffic is
 * taken from it first (two per client connection, for its socket and its
 * upstream's, kept by the tunnel a switch hands them to; one
 * per pooled idle upstream connection; two per pipe, in use or pooled). What
 * the budget leaves of RLIMIT_NOFILE is the reserve for everything else
 * (listeners, the admin listener, log files, health checks, DNS, each loop's
 * own descriptors). Pipes may hold at most half of it, so tunnels whose
 * readers stall cannot starve new connections of upstream sockets. */
static uint64_t fd_budget = UINT64_MAX;
static uint64_t fd_used, pipe_fds; /* atomic */

void sy_limits_fds_set(uint64_t budget) {
  fd_budget = budget;
}

uint64_t sy_limits_fds_budget(void) {
  return fd_budget;
}

uint64_t sy_limits_fds_used(void) {
  return __atomic_load_n(&fd_used, __ATOMIC_RELAXED);
}

int sy_limits_fds_take(unsigned n) {
  uint64_t cur = __atomic_load_n(&fd_used, __ATOMIC_RELAXED);
  do {
    if (cur + n > fd_budget) return -1;
  } while (
      !__atomic_compare_exchange_n(&fd_used, &cur, cur + n, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return 0;
}

void sy_limits_fds_give(unsigned n) {
  __atomic_sub_fetch(&fd_used, n, __ATOMIC_RELAXED);
}

int sy_limits_pipe_take(void) {
  if (fd_budget != UINT64_MAX && __atomic_load_n(&pipe_fds, __ATOMIC_RELAXED) + 2 > fd_budget / 2)
    return -1;
  if (sy_limits_fds_take(2) < 0) return -1;
  __atomic_add_fetch(&pipe_fds, 2, __ATOMIC_RELAXED);
  return 0;
}

void sy_limits_pipe_give(void) {
  __atomic_sub_fetch(&pipe_fds, 2, __ATOMIC_RELAXED);
  sy_limits_fds_give(2);
}
