#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_ALLOC */
#endif
#include "switchyard/cpus.h"

#include <limits.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Digits only, no sign, no overflow; *sp moves past them. */
static int read_u64(const char **sp, uint64_t *out) {
  const char *s = *sp;
  uint64_t v = 0;
  if (*s < '0' || *s > '9') return -1;
  for (; *s >= '0' && *s <= '9'; s++)
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t)(*s - '0'), &v))
      return -1;
  *sp = s;
  *out = v;
  return 0;
}

long sy_cpu_max_cpus(const char *text) {
  const char *s = text;
  uint64_t quota = 0, period;
  int unlimited = strncmp(s, "max", 3) == 0;
  if (unlimited)
    s += 3;
  else if (read_u64(&s, &quota) < 0)
    return -1;
  if (*s++ != ' ' || read_u64(&s, &period) < 0 || period == 0) return -1;
  if (*s == '\n') s++;
  if (*s) return -1;
  if (unlimited) return 0;
  uint64_t cpus = quota / period + (quota % period != 0);
  if (cpus == 0) cpus = 1;
  return cpus > INT_MAX ? INT_MAX : (long)cpus;
}

int sy_cgroup2_path(const char *text, char *out, size_t cap) {
  /* cgroup v1 lines are "N:controllers:PATH"; the v2 one is "0::PATH". */
  for (const char *line = text; line && *line;) {
    const char *nl = strchr(line, '\n');
    size_t len = nl ? (size_t)(nl - line) : strlen(line);
    if (len >= 4 && strncmp(line, "0::/", 4) == 0) {
      if (len - 3 >= cap) return -1;
      memcpy(out, line + 3, len - 3);
      out[len - 3] = '\0';
      return 0;
    }
    line = nl ? nl + 1 : NULL;
  }
  return -1;
}

unsigned sy_workers_for(unsigned affinity, const char *const *texts, size_t n) {
  unsigned workers = affinity ? affinity : 1;
  for (size_t i = 0; i < n; i++) {
    long lim = texts[i] ? sy_cpu_max_cpus(texts[i]) : -1;
    if (lim > 0 && (unsigned long)lim < workers) workers = (unsigned)lim;
  }
  return workers;
}

/* A cpu.max is a few dozen bytes; anything longer is not one. */
static int read_small(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  size_t n = fread(buf, 1, cap - 1, f);
  int bad = ferror(f) || n == cap - 1;
  fclose(f);
  if (bad) return -1;
  buf[n] = '\0';
  return 0;
}

#define MAX_DEPTH 32 /* cgroup levels looked at; real hierarchies are a handful deep */

unsigned sy_auto_workers_at(const char *proc_cgroup, const char *mount, unsigned affinity,
                            char *why, size_t cap) {
  char self[4096], cg[1024], dir[2048], file[2100];
  char texts[MAX_DEPTH][64], files[MAX_DEPTH][2100];
  const char *tp[MAX_DEPTH];
  size_t n = 0;
  if (affinity == 0) affinity = 1;

  /* The cgroup's own directory, then each parent up to the mount point. When
   * that directory is not visible here, the mount's root stands for it. */
  int have_path = read_small(proc_cgroup, self, sizeof self) == 0 &&
                  sy_cgroup2_path(self, cg, sizeof cg) == 0 &&
                  (size_t)snprintf(dir, sizeof dir, "%s%s", mount, cg) < sizeof dir &&
                  access(dir, F_OK) == 0;
  if (!have_path) snprintf(dir, sizeof dir, "%s", mount);
  size_t root_len = strlen(mount);
  while (n < MAX_DEPTH) {
    size_t len = strlen(dir);
    while (len > root_len && dir[len - 1] == '/')
      dir[--len] = '\0';
    snprintf(file, sizeof file, "%s/cpu.max", dir);
    if (read_small(file, texts[n], sizeof texts[n]) == 0) {
      snprintf(files[n], sizeof files[n], "%s", file);
      tp[n] = texts[n];
      n++;
    }
    char *slash = strrchr(dir, '/');
    if (len <= root_len || !slash || (size_t)(slash - dir) < root_len) break;
    *slash = '\0';
  }

  unsigned workers = sy_workers_for(affinity, tp, n);
  int w = snprintf(why, cap, "%u CPU%s in the affinity mask", affinity, affinity == 1 ? "" : "s");
  /* Name the limit that decided, or say there was none. */
  for (size_t i = 0; i < n && w >= 0 && (size_t)w < cap; i++) {
    long lim = sy_cpu_max_cpus(texts[i]);
    if (lim > 0 && (unsigned long)lim == workers && workers < affinity) {
      texts[i][strcspn(texts[i], "\n")] = '\0';
      snprintf(why + w, cap - (size_t)w, "; cgroup limit \"%s\" in %s = %ld", texts[i], files[i],
               lim);
      return workers;
    }
  }
  if (w >= 0 && (size_t)w < cap)
    snprintf(why + w, cap - (size_t)w,
             n ? "; no lower cgroup CPU limit (cpu.max)" : "; no cgroup v2 cpu.max found");
  return workers;
}

/* CPUs in this thread's affinity mask; the set grows for hosts past 1024 CPUs. */
static unsigned affinity_cpus(void) {
  for (int ncpu = 1024; ncpu <= 1 << 16; ncpu *= 2) {
    cpu_set_t *set = CPU_ALLOC(ncpu);
    if (!set) break;
    size_t size = CPU_ALLOC_SIZE(ncpu);
    CPU_ZERO_S(size, set);
    if (sched_getaffinity(0, size, set) == 0) {
      int count = CPU_COUNT_S(size, set);
      CPU_FREE(set);
      return count > 0 ? (unsigned)count : 1;
    }
    CPU_FREE(set);
  }
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? (unsigned)online : 1;
}

int sy_cpu_nth(unsigned i) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) < 0 || CPU_COUNT(&set) == 0) return -1;
  unsigned k = i % (unsigned)CPU_COUNT(&set);
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
    if (CPU_ISSET(cpu, &set) && k-- == 0) return cpu;
  return -1;
}

unsigned sy_auto_workers(char *why, size_t cap) {
  return sy_auto_workers_at("/proc/self/cgroup", "/sys/fs/cgroup", affinity_cpus(), why, cap);
}
