/* Request ids for the X-Request-Id header (name configurable): the client's
 * own id is kept when it is sane, otherwise the proxy makes one. Pure
 * functions apart from a per-thread random generator (no lock, no syscall
 * after the first call on a thread). */
#ifndef SWITCHYARD_REQID_H
#define SWITCHYARD_REQID_H

#include <stddef.h>

#include "switchyard/http.h"

#define SY_REQID_MAX 128    /* longest client id kept */
#define SY_REQID_GEN_LEN 32 /* generated: 16 random bytes as lower-case hex */

/* 1 when s[0..n) is a sane id: 1..SY_REQID_MAX characters, each an RFC 9110
 * token character or one of / = : @ (so UUIDs, hex, base64 and
 * "Root=1-..."-like ids pass; spaces, quotes, commas, controls and non-ASCII
 * do not). Such an id needs no escaping in a header or a JSON string. */
int sy_reqid_valid(const char *s, size_t n);

/* Writes a fresh id (SY_REQID_GEN_LEN hex digits and a NUL) into out. */
void sy_reqid_generate(char out[SY_REQID_GEN_LEN + 1]);

/* The id of a request: the client's value (client, n; client NULL when the
 * request had no such header, or had it more than once) if it is valid,
 * else a generated one. Writes it NUL-terminated into out and returns its
 * length; *generated (if not NULL) says which it was. */
size_t sy_reqid_pick(const char *client, size_t n, char out[SY_REQID_MAX + 1], int *generated);

/* The client's id in a request head: the value of the one field named
 * `header` (case-insensitive) when it is sane, copied into out; 0 when the
 * field is absent, present more than once, or not sane. */
size_t sy_reqid_from_head(const sy_head *h, const char *base, const char *header,
                          char out[SY_REQID_MAX + 1]);

/* forwarding.request_id on: the client's id (as above) or a generated one.
 * Returns the length; *generated says which. */
size_t sy_reqid_for_head(const sy_head *h, const char *base, const char *header,
                         char out[SY_REQID_MAX + 1], int *generated);

#endif
