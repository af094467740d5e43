/* Shared pieces of the Switchyard fuzz targets: the proxy's own flow module
 * (src/flow.c: llhttp glue, spans recorded as offsets into one contiguous
 * buffer, the raw head scanner) fed with the head in up to three pieces so
 * spans straddle llhttp_execute calls, plus the invariants the rewritten
 * heads must satisfy. Not a unit of the proxy: test code only. */
#ifndef SY_FUZZ_COMMON_H
#define SY_FUZZ_COMMON_H

#include <llhttp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/flow.h"
#include "switchyard/http.h"

/* A failed invariant is a finding: print it and abort, so libFuzzer saves the
 * input as a crash. */
#define FZ_CHECK(cond, ...)                                                                        \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "\nFUZZ INVARIANT FAILED at %s:%d: %s\n  ", __FILE__, __LINE__, #cond);      \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fprintf(stderr, "\n");                                                                       \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

typedef struct fz_msg {
  sy_flow f; /* the proxy's own flow: llhttp glue, raw head scanner, spans */
  const char *base;
  int head_done;
  size_t head_end; /* offset just past the head when head_done */
} fz_msg;

/* The proxy lets a response head through to the rest of the message; here
 * parsing stops at it, as at a request head, so the checks can look. */
static int fz_stop_at_head(sy_flow *f) {
  (void)f;
  return HPE_PAUSED;
}

static void fz_msg_init(fz_msg *m, int request, size_t max_fields) {
  memset(m, 0, sizeof(*m));
  sy_flow_init(&m->f, !request, request ? NULL : fz_stop_at_head, m, max_fields);
}

/* Parse one head out of buf[0..len) in pieces cut at split1 <= split2 (as
 * successive reads into one growing buffer), with sy_flow_parse exactly as
 * the connection code drives it. Returns 1 when a complete head was
 * collected (m->head_end set), 0 when more bytes are needed, -1 on a parse
 * error. */
static int fz_parse(fz_msg *m, const char *buf, size_t len, size_t split1, size_t split2) {
  sy_flow *f = &m->f;
  m->base = buf;
  f->buf = (char *)buf; /* only read: parsing stops at the head */
  f->cap = (uint32_t)len;
  size_t cuts[3] = {split1 < len ? split1 : len, split2 < len ? split2 : len, len};
  if (cuts[1] < cuts[0]) cuts[1] = cuts[0];
  for (int i = 0; i < 3; i++) {
    f->len = (uint32_t)cuts[i];
    for (int guard = 0; guard < 16 && f->pos < f->len; guard++) {
      llhttp_errno_t e = HPE_OK;
      sy_flow_step r = sy_flow_parse(f, &e);
      if (r >= SY_STEP_BAD_BYTES) return -1;
      if (r == SY_STEP_PAUSED) {
        if (!f->head_done) return -1;
        m->head_done = 1;
        m->head_end = f->pos;
        return 1;
      }
      if (r == SY_STEP_MORE) break;
    }
  }
  return 0;
}

static void fz_msg_free(fz_msg *m) {
  m->f.buf = NULL; /* the caller's */
  sy_head_free(&m->f.head);
  free(m->f.segs);
  sy_buf_free(&m->f.scratch);
}

/* Known, reported findings can be muted for long runs, so the fuzzer explores
 * past them, e.g. SY_FUZZ_KNOWN="conn-cl,conn-host,line-cr". run.sh mutes nothing by default,
 * so a known finding keeps failing until it is fixed. IDs:
 *   conn-cl    a Connection field naming Content-Length drops the framing field
 *   conn-host  a Connection field naming Host drops Host from the forwarded request
 *   line-cr    a CR inside a field line (outside name and value spans, e.g. "X:\rQ v")
 *              is copied to the peer
 *   start-ctl  control bytes in the reason phrase or the request target are copied
 *   status     a status outside 100..599 is relayed
 *   obs-fold   a folded line whose first line has an empty value ("X:\r\n b") is copied
 *   version    a message whose version is not 1.x (0.9, 2.0) is accepted and relayed as HTTP/1.1 */
static int fz_known(const char *id) {
  const char *k = getenv("SY_FUZZ_KNOWN");
  return k && strstr(k, id) != NULL;
}

/* Does a Connection field of h name `field`? */
static int fz_connection_names(const sy_head *h, const char *base, const char *field) {
  return sy_head_lists(h, base, "connection", field);
}

/* Framing invariants of a head the proxy wrote: exactly one CRLFCRLF, at the
 * end; every CR followed by LF and every LF preceded by CR; no NUL. */
static void fz_check_wire_head(const char *p, size_t n, const char *what) {
  FZ_CHECK(n >= 4 && memcmp(p + n - 4, "\r\n\r\n", 4) == 0, "%s head does not end in CRLFCRLF",
           what);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    FZ_CHECK(c != 0, "%s head holds a NUL at %zu: %.*s", what, i, (int)n, p);
    if (c == '\r')
      FZ_CHECK(i + 1 < n && p[i + 1] == '\n', "%s head has a bare CR at %zu: %.*s", what, i, (int)n,
               p);
    if (c == '\n')
      FZ_CHECK(i > 0 && p[i - 1] == '\r', "%s head has a bare LF at %zu: %.*s", what, i, (int)n, p);
    if (i + 4 < n)
      FZ_CHECK(memcmp(p + i, "\r\n\r\n", 4) != 0, "%s head ends early at %zu: %.*s", what, i,
               (int)n, p);
    /* RFC 9112 5.2: a proxy never forwards obs-fold (a line starting with SP/HTAB). */
    if (c == '\n' && i + 1 < n && !fz_known("obs-fold"))
      FZ_CHECK(p[i + 1] != ' ' && p[i + 1] != '\t', "%s head has obs-fold at %zu: %.*s", what,
               i + 1, (int)n, p);
  }
}

static int fz_count_fields(const sy_head *h, const char *base, const char *name) {
  int k = 0;
  for (size_t i = 0; i < h->nfields; i++)
    if (sy_str_ieq(sy_span_str(base, h->fields[i].name), name)) k++;
  return k;
}

static int fz_has_ctl(const char *p, size_t n, int allow_tab) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if ((c < 0x20 && !(allow_tab && c == '\t')) || c == 0x7f) return 1;
  }
  return 0;
}

/* Findings muted by SY_FUZZ_KNOWN that concern the bytes copied verbatim. */
static int fz_muted_copy(const sy_head *h, const char *base) {
  if (fz_known("line-cr"))
    for (size_t i = 0; i < h->nfields; i++)
      if (memchr(base + h->fields[i].line.off, '\r', h->fields[i].line.len)) return 1;
  if (fz_known("start-ctl") && (fz_has_ctl(base + h->reason.off, h->reason.len, 0) ||
                                fz_has_ctl(base + h->target.off, h->target.len, 0)))
    return 1;
  return 0;
}

/* Copy into an exactly sized heap block so ASan sees any read past the end. */
static char *fz_dup(const uint8_t *data, size_t size) {
  char *p = malloc(size ? size : 1);
  if (size) memcpy(p, data, size);
  return p;
}

#endif
