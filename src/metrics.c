#include "switchyard/metrics.h"

#include <stdlib.h>
#include <string.h>

#define SY_METRIC_SLOTS 2048 /* power of two */
#define SY_METRIC_KEY 448    /* calloc'd: slots never touched cost no RSS */

typedef struct sy_slot {
  int used; /* set (release) after key is written; never cleared */
  int64_t value;
  char key[SY_METRIC_KEY]; /* "name\0labels" */
  size_t namelen;
} sy_slot;

struct sy_metrics {
  sy_slot slots[SY_METRIC_SLOTS];
};

sy_metrics *sy_metrics_new(void) {
  return calloc(1, sizeof(sy_metrics));
}

void sy_metrics_free(sy_metrics *m) {
  free(m);
}

static uint32_t hash(const char *name, const char *labels) {
  uint32_t h = 2166136261u;
  for (const char *p = name; *p; p++)
    h = (h ^ (unsigned char)*p) * 16777619u;
  h = (h ^ '{') * 16777619u;
  for (const char *p = labels ? labels : ""; *p; p++)
    h = (h ^ (unsigned char)*p) * 16777619u;
  return h;
}

static int slot_is(const sy_slot *s, const char *name, size_t nl, const char *labels) {
  return s->namelen == nl && memcmp(s->key, name, nl) == 0 &&
         strcmp(s->key + nl + 1, labels ? labels : "") == 0;
}

static sy_slot *find(sy_metrics *m, const char *name, const char *labels, int create) {
  size_t nl = strlen(name), ll = labels ? strlen(labels) : 0;
  if (nl + ll + 2 > SY_METRIC_KEY) return NULL;
  uint32_t h = hash(name, labels);
  for (uint32_t i = 0; i < SY_METRIC_SLOTS; i++) {
    sy_slot *s = &m->slots[(h + i) & (SY_METRIC_SLOTS - 1)];
    if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) {
      if (!create) return NULL;
      memcpy(s->key, name, nl);
      s->key[nl] = 0;
      memcpy(s->key + nl + 1, labels ? labels : "", ll + 1);
      s->namelen = nl;
      __atomic_store_n(&s->used, 1, __ATOMIC_RELEASE);
      return s;
    }
    if (slot_is(s, name, nl, labels)) return s;
  }
  return NULL;
}

void sy_metrics_add(sy_metrics *m, const char *name, const char *labels, int64_t delta) {
  sy_slot *s = find(m, name, labels, 1);
  if (s) __atomic_add_fetch(&s->value, delta, __ATOMIC_RELAXED);
}

void sy_metrics_add_cell(sy_metrics *m, int64_t **cell, const char *name, const char *labels,
                         int64_t delta) {
  if (!*cell) {
    sy_slot *s = find(m, name, labels, 1);
    if (!s) return;
    *cell = &s->value;
  }
  __atomic_add_fetch(*cell, delta, __ATOMIC_RELAXED);
}

int64_t sy_metrics_get(sy_metrics *const *ms, size_t n, const char *name, const char *labels) {
  int64_t sum = 0;
  for (size_t i = 0; i < n; i++) {
    sy_slot *s = find(ms[i], name, labels, 0);
    if (s) sum += __atomic_load_n(&s->value, __ATOMIC_RELAXED);
  }
  return sum;
}

typedef struct series {
  const char *key; /* name\0labels, from one of the tables */
  size_t namelen;
  int64_t value;
} series;

static int cmp_series(const void *a, const void *b) {
  const series *x = a, *y = b;
  int c = strcmp(x->key, y->key);
  return c ? c : strcmp(x->key + x->namelen + 1, y->key + y->namelen + 1);
}

/* Sums series of equal key across tables into a sorted array. */
static series *collect(sy_metrics *const *ms, size_t n, size_t *count) {
  series *all = malloc(sizeof(series) * SY_METRIC_SLOTS * (n ? n : 1));
  size_t k = 0;
  if (!all) return NULL;
  for (size_t t = 0; t < n; t++)
    for (size_t i = 0; i < SY_METRIC_SLOTS; i++) {
      sy_slot *s = &ms[t]->slots[i];
      if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) continue;
      all[k++] = (series){s->key, s->namelen, __atomic_load_n(&s->value, __ATOMIC_RELAXED)};
    }
  qsort(all, k, sizeof(series), cmp_series);
  size_t out = 0;
  for (size_t i = 0; i < k; i++) {
    if (out && cmp_series(&all[out - 1], &all[i]) == 0)
      all[out - 1].value += all[i].value;
    else
      all[out++] = all[i];
  }
  *count = out;
  return all;
}

void sy_metrics_each(sy_metrics *const *ms, size_t n,
                     void (*fn)(const char *name, const char *labels, int64_t v, void *arg),
                     void *arg) {
  size_t k;
  series *all = collect(ms, n, &k);
  if (!all) return;
  for (size_t i = 0; i < k; i++)
    fn(all[i].key, all[i].key + all[i].namelen + 1, all[i].value, arg);
  free(all);
}

static const char *type_of(const char *name) {
  size_t n = strlen(name);
  return (n > 6 && strcmp(name + n - 6, "_total") == 0) ? "counter" : "gauge";
}

void sy_metrics_render(sy_metrics *const *ms, size_t n, sy_buf *out) {
  size_t k;
  series *all = collect(ms, n, &k);
  if (!all) return;
  const char *last = NULL;
  for (size_t i = 0; i < k; i++) {
    const char *name = all[i].key, *labels = all[i].key + all[i].namelen + 1;
    if (!last || strcmp(last, name) != 0) {
      sy_buf_appendf(out, "# TYPE %s %s\n", name, type_of(name));
      last = name;
    }
    if (*labels)
      sy_buf_appendf(out, "%s{%s} %lld\n", name, labels, (long long)all[i].value);
    else
      sy_buf_appendf(out, "%s %lld\n", name, (long long)all[i].value);
  }
  free(all);
}

/* Runs per request and per tunnel: spans are copied whole, no printf (a
 * byte-wise append and a format string were a fifth of a handshake's
 * user-space instructions). */
void sy_metrics_label(sy_buf *b, const char *label, const char *value, size_t len) {
  if (b->len) sy_buf_append(b, ",", 1);
  sy_buf_append(b, label, strlen(label));
  sy_buf_append(b, "=\"", 2);
  size_t from = 0;
  for (size_t i = 0; i < len; i++) {
    char c = value[i];
    if (c != '\\' && c != '"' && c != '\n') continue;
    sy_buf_append(b, value + from, i - from);
    sy_buf_append(b, c == '\n' ? "\\n" : c == '"' ? "\\\"" : "\\\\", 2);
    from = i + 1;
  }
  sy_buf_append(b, value + from, len - from);
  sy_buf_append(b, "\"", 1);
}
