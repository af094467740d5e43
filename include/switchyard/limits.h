/* Process-wide counts behind the limits that span every worker:
 * limits.max_tunnels and limits.max_connections_per_client. */
#ifndef SWITCHYARD_LIMITS_H
#define SWITCHYARD_LIMITS_H

#include <stdint.h>

/* Tunnels open in the whole process (spliced and TLS relays). */
void sy_limits_tunnels_add(int delta);
uint64_t sy_limits_tunnels(void);

/* limits.max_connections_per_client: 0 when this address may connect once
 * more (then counted), -1 when it is at the limit. */
int sy_limits_client_acquire(const char *ip, uint64_t limit);
void sy_limits_client_release(const char *ip);

/* The descriptor budget (see limits.c): descriptors are taken before they
 * are opened and given back when closed. take: 0, or -1 when the budget is
 * short (the caller does without: waits in the backlog, copies instead of
 * splicing, refuses the switch). UINT64_MAX budget: no limit. */
void sy_limits_fds_set(uint64_t budget);
uint64_t sy_limits_fds_budget(void);
uint64_t sy_limits_fds_used(void);
int sy_limits_fds_take(unsigned n);
void sy_limits_fds_give(unsigned n);
/* A pipe's two descriptors; pipes hold at most half the budget. */
int sy_limits_pipe_take(void);
void sy_limits_pipe_give(void);

#endif
