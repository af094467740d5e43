#include "switchyard/reqid.h"

#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static int id_char(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
  return c && strchr("!#$%&'*+-.^_`|~/=:@", c) != NULL;
}

int sy_reqid_valid(const char *s, size_t n) {
  if (!s || n == 0 || n > SY_REQID_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!id_char((unsigned char)s[i])) return 0;
  return 1;
}

/* xoshiro256** per thread: ids must not repeat or be guessable from each
 * other across a few requests, not resist a cryptanalyst; the seed comes
 * from the kernel's generator. */
static __thread uint64_t rng[4];
static __thread int seeded;

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

static uint64_t next64(void) {
  uint64_t r = rotl(rng[1] * 5, 7) * 9, t = rng[1] << 17;
  rng[2] ^= rng[0];
  rng[3] ^= rng[1];
  rng[1] ^= rng[2];
  rng[0] ^= rng[3];
  rng[2] ^= t;
  rng[3] = rotl(rng[3], 45);
  return r;
}

static uint64_t splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

static void seed(void) {
  if (getrandom(rng, sizeof(rng), 0) != (ssize_t)sizeof(rng)) {
    /* No entropy syscall (very old kernel, seccomp): still distinct per
     * thread and per start. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)getpid() << 16 ^
                 (uint64_t)(uintptr_t)&rng;
    for (int i = 0; i < 4; i++)
      rng[i] = splitmix(&x);
  }
  if (!(rng[0] | rng[1] | rng[2] | rng[3])) rng[0] = 1; /* the one state xoshiro cannot leave */
  seeded = 1;
}

void sy_reqid_generate(char out[SY_REQID_GEN_LEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  if (!seeded) seed();
  for (int w = 0; w < 2; w++) {
    uint64_t v = next64();
    for (int i = 0; i < 16; i++, v >>= 4)
      out[w * 16 + i] = hex[v & 15];
  }
  out[SY_REQID_GEN_LEN] = 0;
}

size_t sy_reqid_pick(const char *client, size_t n, char out[SY_REQID_MAX + 1], int *generated) {
  if (sy_reqid_valid(client, n)) {
    memcpy(out, client, n);
    out[n] = 0;
    if (generated) *generated = 0;
    return n;
  }
  sy_reqid_generate(out);
  if (generated) *generated = 1;
  return SY_REQID_GEN_LEN;
}

size_t sy_reqid_from_head(const sy_head *h, const char *base, const char *header,
                          char out[SY_REQID_MAX + 1]) {
  const sy_field *found = NULL;
  for (size_t i = 0; i < h->nfields; i++) {
    if (!sy_str_ieq(sy_span_str(base, h->fields[i].name), header)) continue;
    if (found) return 0; /* two ids: neither is the request's */
    found = &h->fields[i];
  }
  if (!found) return 0;
  sy_str v = sy_span_str(base, found->value);
  if (!sy_reqid_valid(v.p, v.len)) return 0;
  memcpy(out, v.p, v.len);
  out[v.len] = 0;
  return v.len;
}

size_t sy_reqid_for_head(const sy_head *h, const char *base, const char *header,
                         char out[SY_REQID_MAX + 1], int *generated) {
  size_t n = sy_reqid_from_head(h, base, header, out);
  if (generated) *generated = n == 0;
  if (n) return n;
  sy_reqid_generate(out);
  return SY_REQID_GEN_LEN;
}
