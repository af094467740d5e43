/* The PROXY protocol (HAProxy's spec, versions 1 and 2): a load balancer in
 * front of the proxy prepends the client's address to the connection, and the
 * proxy can prepend it towards an upstream. Pure: no I/O; the parser does not
 * allocate, the builders only append to the caller's buffer. */
#ifndef SWITCHYARD_PROXYPROTO_H
#define SWITCHYARD_PROXYPROTO_H

#include <stddef.h>
#include <sys/socket.h>

#include "switchyard/base.h"

/* Bits of the `accept` mask (and of listeners[].proxy_protocol). */
enum {
  SY_PP_V1 = 1, /* text: "PROXY TCP4 a b p q\r\n" */
  SY_PP_V2 = 2, /* binary: 12-byte signature, 4-byte head, addresses, TLVs */
};

/* The longest header the parser accepts: a v1 line of 107 bytes, or a v2
 * header of 16 + 512 bytes. A caller that has buffered this much and still
 * gets SY_PP_MORE has a bug; it never happens. */
#define SY_PP_V1_MAX 107
#define SY_PP_V2_MAX_PAYLOAD 512
#define SY_PP_MAX (16 + SY_PP_V2_MAX_PAYLOAD)

typedef enum sy_pp_status {
  SY_PP_MORE = 0, /* a valid header may still follow: read more bytes */
  SY_PP_OK,       /* a whole header: see sy_pp_header */
  SY_PP_BAD,      /* no valid header can start with these bytes: close */
} sy_pp_status;

typedef struct sy_pp_header {
  size_t len;                       /* bytes the header took; buf[len..] belongs to the caller */
  int version;                      /* 1 or 2 */
  int local;                        /* 1: LOCAL (v2) or UNKNOWN (v1): use the connection's own
                                       addresses; src and dst are then zeroed */
  struct sockaddr_storage src, dst; /* AF_INET or AF_INET6, port set; an
                                       IPv4-mapped IPv6 address is AF_INET */
  const char *why;                  /* SY_PP_BAD: a short static reason, else NULL */
} sy_pp_header;

/* Parses the header at the start of buf[0..len). Call again with the whole
 * buffered prefix after each read until the result is not SY_PP_MORE; a
 * prefix of a valid signature is SY_PP_MORE, so one-byte reads work. Only
 * versions in `accept` are recognised. `out` is always written. */
sy_pp_status sy_pp_parse(const char *buf, size_t len, unsigned accept, sy_pp_header *out);

/* Append a PROXY header for a connection from src to dst (the client's
 * address and the address it connected to). An IPv4-mapped IPv6 address is
 * written as IPv4; when one side is IPv4 and the other a real IPv6 address,
 * the IPv4 side is written IPv4-mapped (both versions need one family).
 * A family other than AF_INET/AF_INET6 (or a NULL address) gives "PROXY
 * UNKNOWN" (v1) or a LOCAL command (v2). v2 uses the PROXY command over
 * STREAM and no TLVs. 0, or -1 when the buffer cannot grow. */
int sy_pp_build_v1(sy_buf *out, const struct sockaddr *src, const struct sockaddr *dst);
int sy_pp_build_v2(sy_buf *out, const struct sockaddr *src, const struct sockaddr *dst);

#endif
