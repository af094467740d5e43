/* One direction of an HTTP/1.1 exchange: the bytes read from one socket, parsed
 * with llhttp, and what must go out on the other socket, collected as segments
 * that point into the read buffer (no copy) or into a small scratch buffer
 * (rewritten heads, chunk framing). A flow writes one batch at a time and does
 * not read while a batch is in flight: that is the backpressure, and it keeps
 * memory at one buffer per direction whatever the body size.
 *
 * A flow never sees the connection that owns it: the owner hears of a parsed
 * response head through on_head, of a finished write through the socket's
 * write callback it passes, and reads the flow's fields for the rest. The fuzz
 * targets drive this very code. */
#ifndef SWITCHYARD_FLOW_H
#define SWITCHYARD_FLOW_H

#include <llhttp.h>
#include <stdint.h>
#include <uv.h>

#include "switchyard/http.h"
#include "switchyard/sock.h"
#include "switchyard/tls.h"

/* The usual read buffer; a request flow may need more (max_header_bytes). */
#define SY_FLOW_BUF (64 * 1024)
/* A TLS relay's buffer: its bytes are copied, not spliced, and every write
 * wakes the reader, so it moves as much per write as a plain tunnel's pipe
 * holds (256 KiB); with 64 KiB a TLS relay spent 15-25% more CPU per GB on
 * a VM where waking the other CPU was dear (bench/PROFILE.md). */
#define SY_RELAY_BUF (256 * 1024)
/* Relay buffers out at once per worker, at most; past it a relay gets the
 * usual 64 KiB (as the kernel gives smaller pipes past pipe-user-pages-soft).
 * Readers that stall pin a buffer and its encrypted batch per direction: this
 * keeps what the large ones can pin near 32 MiB a worker. */
#define SY_FLOW_RELAY_MAX 64
/* One ciphertext read: as many whole TLS records, with their overhead, as
 * fill a relay buffer once decrypted, so that they go on in one write. */
#define SY_CIPHER_BLOCK (16 * (16 * 1024 + 512))

/* Flow buffers kept for reuse per worker (64 KiB each, 8 MiB at most; dropped
 * when the worker has no connection). Enough for 64 requests in flight: with
 * 32, 50 keep-alive clients overflowed it, and freeing the extra buffers made
 * glibc give the top of the heap back and fault it in again (a madvise every
 * ~50 requests). */
#define SY_FLOW_BUF_CACHE 128
/* TLS: relay buffers, ciphertext read blocks and encrypted-batch buffers kept
 * for reuse (a block is only out during one read, so a few suffice). */
#define SY_FLOW_RELAY_CACHE 32
#define SY_FLOW_BLK_CACHE 4
#define SY_FLOW_CIPHER_CACHE 16

typedef struct sy_flow sy_flow;

/* Per-worker (per-loop) state shared by the flows: buffer caches. */
typedef struct sy_flow_pool {
  char *buf_cache[SY_FLOW_BUF_CACHE];
  unsigned nbuf;
  char *relay_cache[SY_FLOW_RELAY_CACHE];
  unsigned nrelay;
  unsigned relay_out; /* relay buffers held by flows now */
  char *blk_cache[SY_FLOW_BLK_CACHE];
  unsigned nblk;
  struct {
    char *p;
    size_t cap;
  } cipher_cache[SY_FLOW_CIPHER_CACHE];
  unsigned ncipher;
  /* Bytes of buffers the pool allocated and has not freed, and of them those
   * in the caches: written by the worker, read by the admin thread
   * (switchyard_buffer_bytes; in use = held - idle). */
  uint64_t bytes_held, bytes_idle;
} sy_flow_pool;

void sy_flow_pool_init(sy_flow_pool *p);
/* Frees the cached buffers (the worker has no connection left). */
void sy_flow_pool_trim(sy_flow_pool *p);
/* From any thread. */
void sy_flow_pool_bytes(const sy_flow_pool *p, uint64_t *in_use, uint64_t *idle);

/* A ciphertext read block from the pool's stack (or malloc); NULL when out. */
char *sy_flow_block_get(sy_flow_pool *p);
void sy_flow_block_put(sy_flow_pool *p, char *blk);

typedef struct sy_seg {
  uint32_t off, len;
  int scratch; /* 1: bytes live in flow->scratch, 0: in flow->buf */
} sy_seg;

/* A response head was parsed (llhttp's on_headers_complete): the owner
 * decides about it. Returns what llhttp expects (0, 1 = no body, or an error). */
typedef int (*sy_flow_head_cb)(sy_flow *f);

struct sy_flow {
  char *buf;
  uint32_t cap, len, pos; /* pos: parsed up to here */
  uint32_t head_start;
  uint32_t scan_pos; /* raw head bytes checked up to here */
  sy_headscan scan;
  llhttp_t parser; /* parser.data: the owner */
  sy_head head;
  sy_flow_head_cb on_head; /* responses only */
  sy_seg *segs;
  uint32_t nsegs, segcap;
  sy_buf scratch;
  uv_buf_t *iov;
  uint32_t iovcap;
  sy_sock_wreq wreq;
  sy_buf cipher; /* the batch once encrypted, while its write is in flight */
  unsigned writing : 1, msg_done : 1, chunked_out : 1, head_done : 1, discard : 1, eof : 1;
  unsigned interim : 1;         /* the head being read is a 1xx: a message of its own */
  unsigned check_chunk_end : 1; /* a chunked message just ended: verify its CRLFs */
  unsigned deferred : 1;        /* written at once, callback due (the owner clears it) */
  uint64_t bytes;               /* read from this flow's source for the current exchange */
};

/* A new (zeroed) flow parsing requests or responses; `owner` lands in
 * parser.data. The head keeps at most max_fields fields. */
void sy_flow_init(sy_flow *f, int response, sy_flow_head_cb on_head, void *owner,
                  size_t max_fields);
/* Back to the start of a message, keeping the buffer and the arrays. */
void sy_flow_restart(sy_flow *f);
/* A fresh parser (after a response: the next one starts clean). */
void sy_flow_new_parser(sy_flow *f);
void sy_flow_free(sy_flow *f, sy_flow_pool *p);

/* The read buffer: taken from the pool when the flow has none. -1 when out.
 * `cap` is what the flow asks for; f->cap says what it got (a relay past
 * SY_FLOW_RELAY_MAX gets SY_FLOW_BUF). */
int sy_flow_alloc(sy_flow *f, sy_flow_pool *p, uint32_t cap);
/* An idle flow (everything parsed and written) gives its buffers back. */
void sy_flow_release_if_idle(sy_flow *f, sy_flow_pool *p);

/* Queue bytes for the next batch: in the read buffer, or copied to scratch. */
int sy_flow_push(sy_flow *f, uint32_t off, uint32_t len);
int sy_flow_push_copy(sy_flow *f, const void *p, size_t n);
/* Queue what was built in f->scratch from `off` to its end (a rewritten head). */
int sy_flow_push_scratch(sy_flow *f, uint32_t off);
/* Drop the queued batch (a local answer replaces it). */
void sy_flow_drop_batch(sy_flow *f);
/* The batch went out: its segments and scratch are spent (capacity kept). */
void sy_flow_batch_done(sy_flow *f);
/* Slides unparsed bytes to the front once nothing refers to what precedes
 * them (no batch in flight, head already forwarded). */
void sy_flow_compact(sy_flow *f);

/* What one parsing step found. */
typedef enum sy_flow_step {
  SY_STEP_MORE,      /* all bytes consumed: read more */
  SY_STEP_PAUSED,    /* stopped at a head or message end (see head_done, msg_done) */
  SY_STEP_AGAIN,     /* an interim message or a declined upgrade ended: step again */
  SY_STEP_BAD_BYTES, /* the raw head scanner refused a byte (bare CR/LF, NUL, obs-fold) */
  SY_STEP_BAD_CHUNK, /* a chunked message not ended by CRLF CRLF */
  SY_STEP_ERROR      /* llhttp refused the message: *err says why */
} sy_flow_step;

/* Parses from pos as far as llhttp goes (raw head bytes checked first). */
sy_flow_step sy_flow_parse(sy_flow *f, llhttp_errno_t *err);

/* Writes the queued batch to dst (through tls when set); `cb` runs when it
 * is done, never from in here. 0: the batch is in flight (f->writing);
 * negative: a libuv error, nothing in flight. */
int sy_flow_write(sy_flow *f, sy_flow_pool *p, sy_sock *dst, sy_tls_conn *tls, sy_sock_write_cb cb);

#endif
