/* DNS discovery for upstream servers given by name: c-ares on the main
 * thread's loop (sockets watched by uv_poll, its timeouts by a uv_timer), so
 * no loop ever waits for DNS. Every A and AAAA record of a name becomes a
 * server with the entry's weight; a name is looked up again when its TTL
 * (bounded by resolver.min_ttl and max_ttl) runs out. Each change builds a
 * new server set for the upstreams that use the name and publishes it
 * (upstream.h); workers pick from whatever set is current.
 *
 * A name that does not exist (NXDOMAIN, no records) leaves its upstream
 * without its servers (503 when none is left); a lookup that fails (timeout,
 * refused, SERVFAIL) keeps the addresses of the last answer. */
#ifndef SWITCHYARD_RESOLVER_H
#define SWITCHYARD_RESOLVER_H

#include <uv.h>

#include "switchyard/config.h"
#include "switchyard/metrics.h"

/* The most addresses one name contributes (the rest are dropped, counted
 * and logged); an upstream's set also stops at SY_MAX_SERVERS. */
#define SY_RESOLVER_MAX_ADDRS 64

typedef struct sy_resolver sy_resolver;

/* on_change(arg) runs on the loop after a set was published (health checks
 * follow the servers). NULL when c-ares cannot start. */
sy_resolver *sy_resolver_new(uv_loop_t *loop, sy_metrics *m, void (*on_change)(void *), void *arg);
/* Makes `cfg` the configuration whose dynamic upstreams it serves (holds a
 * reference): their sets are built at once from the addresses already known
 * (a reload loses nothing), with the runtime state of the servers of the
 * configuration attached before; new names are looked up now. Call before
 * the workers see cfg. 0, or -1 when the name servers cannot be set (the
 * previous ones stay). */
int sy_resolver_attach(sy_resolver *r, sy_config *cfg);
/* 1 once every name of the configurations attached so far has had its first
 * answer or failure, and from then on (a name a reload adds does not undo it);
 * 1 when there are no names. /readyz waits for it: a fresh instance that takes
 * traffic before its names resolve answers 503. NULL: 1. */
int sy_resolver_settled(sy_resolver *r);
/* Cancels lookups; frees itself once libuv has closed its handles. NULL ok. */
void sy_resolver_stop(sy_resolver *r);

#endif
