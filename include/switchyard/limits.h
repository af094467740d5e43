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

#endif
