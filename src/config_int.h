/* The configuration loader's own header, shared by config.c (the schema: one
 * handler per key, the snapshot's life) and config_values.c (the YAML walker and
 * the typed values every section uses: strings, durations, sizes, addresses),
 * so that neither file grows past what a reader can hold. Private to them. */
#ifndef SY_CONFIG_INT_H
#define SY_CONFIG_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <yaml.h>

#include "switchyard/config.h"

#define SY_PATH_LEN 256

typedef struct ctx {
  const char *name;
  yaml_document_t *doc;
  sy_config *cfg;
  sy_config_error *err;
  int resolve; /* 0 under SY_CONFIG_NO_RESOLVE: host names are checked, not looked up, and
                  admin.token_file is not read */
} ctx;

/* A handler gets the object being filled and the offset of its field, so most
 * keys share a handful of generic handlers (string, bool, duration, ...). */
typedef int (*key_fn)(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off);

typedef struct key_spec {
  const char *key;
  key_fn fn;
  size_t off;
} key_spec;

#define FIELD(obj, off, T) ((T *)(void *)((char *)(obj) + (off)))
#define NKEYS(t) (sizeof(t) / sizeof((t)[0]))

typedef struct addr_parts {
  char host[256];
  unsigned port;
  int bracketed;
} addr_parts;

enum addr_kind { ADDR_BIND, ADDR_CONNECT };

int cv_fail(ctx *c, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int cv_oom(ctx *c, const yaml_node_t *n);
void *cv_xcalloc(ctx *c, const yaml_node_t *n, size_t count, size_t size);
yaml_node_t *cv_node_at(ctx *c, int index);
int cv_is_null(const yaml_node_t *n);
const char *cv_where(const char *path);
void cv_join_key(char *out, const char *path, const char *key);
void cv_join_idx(char *out, const char *path, size_t i);
size_t cv_seq_len(const yaml_node_t *n);
yaml_node_t *cv_seq_item(ctx *c, const yaml_node_t *n, size_t i);
size_t cv_map_len(const yaml_node_t *n);
yaml_node_t *cv_map_get(ctx *c, const yaml_node_t *map, const char *key);
int cv_want_map(ctx *c, const yaml_node_t *n, const char *path);
int cv_want_seq(ctx *c, const yaml_node_t *n, const char *path, int nonempty);
int cv_want_scalar(ctx *c, const yaml_node_t *n, const char *path, const char **out);
int cv_want_string(ctx *c, const yaml_node_t *n, const char *path, const char **out);
int cv_dup_text(ctx *c, const yaml_node_t *n, const char *s, char **out);
int cv_dup_string(ctx *c, const yaml_node_t *n, const char *path, char **out);
int cv_check_key(ctx *c, const yaml_node_t *map, const yaml_node_pair_t *pair, const char *path);
int cv_parse_map(ctx *c, yaml_node_t *map, const char *path, const key_spec *keys, size_t nkeys,
                 void *obj, unsigned *seen);
int cv_require_keys(ctx *c, const yaml_node_t *map, const char *path, const key_spec *keys,
                    unsigned seen, unsigned required);
int cv_parse_u64(const char **sp, uint64_t *out);
int cv_h_str(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off);
int cv_h_bool(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off);
int cv_h_duration(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off);
int cv_h_duration_pos(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off);
int cv_h_size_pos(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off);
int cv_h_u64_pos(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off);
int cv_h_uint_pos(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off);
int cv_parse_str_list(ctx *c, yaml_node_t *v, const char *path, int nonempty, char ***out,
                      size_t *nout);
int cv_split_addr(ctx *c, const yaml_node_t *v, const char *path, const char *s, addr_parts *ap);
int cv_host_name_ok(const char *h);
int cv_parse_addr(ctx *c, yaml_node_t *v, const char *path, enum addr_kind k, sy_addr *out);
int cv_h_bind_addr(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off);
int cv_same_sockaddr(const sy_addr *a, const sy_addr *b);

#endif
