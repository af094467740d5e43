/* libFuzzer target: the YAML configuration loader (sy_config_load_string),
 * then the router over whatever loaded.
 *
 * The loader resolves host names and opens certificate files. So the run is
 * hermetic and fast, getaddrinfo() is interposed to numeric-only lookups
 * (plus "localhost"), and inputs naming /dev, /proc or /sys are skipped (a
 * certificate path there could block or read forever). The config's name sits
 * in SY_FUZZ_CONFIG_DIR (default: the repository's config/ directory), so
 * relative certificate paths like tls/demo.pem resolve to real files.
 * Invariants on a loaded config: at least one listener, every route's
 * upstream resolved and inside the upstream array, global timeouts non-zero;
 * on a refusal, a message that starts with the config's name. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "switchyard/config.h"
#include "switchyard/router.h"

#ifndef SY_FUZZ_DEFAULT_CONFIG_DIR
#define SY_FUZZ_DEFAULT_CONFIG_DIR "."
#endif

#define FZ_CHECK(cond, ...)                                                                        \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "\nFUZZ INVARIANT FAILED at %s:%d: %s\n  ", __FILE__, __LINE__, #cond);      \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fprintf(stderr, "\n");                                                                       \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
  static gai_fn real;
  if (!real) real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
  struct addrinfo h;
  memset(&h, 0, sizeof(h));
  if (hints) h = *hints;
  if (node && strcmp(node, "localhost") == 0) node = "127.0.0.1";
  h.ai_flags |= AI_NUMERICHOST;
  return real(node, service, &h, res);
}

static char g_name[4096];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *dir = getenv("SY_FUZZ_CONFIG_DIR");
  snprintf(g_name, sizeof(g_name), "%s/fuzz.yaml", dir ? dir : SY_FUZZ_DEFAULT_CONFIG_DIR);
  return 0;
}

static int mentions(const uint8_t *d, size_t n, const char *s) {
  size_t k = strlen(s);
  for (size_t i = 0; i + k <= n; i++)
    if (memcmp(d + i, s, k) == 0) return 1;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 16384 || mentions(data, size, "/dev") || mentions(data, size, "/proc") ||
      mentions(data, size, "/sys"))
    return 0;
  char *yaml = malloc(size ? size : 1);
  if (size) memcpy(yaml, data, size);
  sy_config_error err;
  memset(&err, 0x5a, sizeof(err));
  sy_config *cfg = sy_config_load_string(g_name, yaml, size, &err);
  if (!cfg) {
    FZ_CHECK(memchr(err.msg, 0, sizeof(err.msg)) != NULL, "error message not terminated");
    FZ_CHECK(strncmp(err.msg, g_name, strlen(g_name)) == 0 || strstr(err.msg, "out of memory"),
             "refusal without file name: %s", err.msg);
    free(yaml);
    return 0;
  }
  FZ_CHECK(cfg->nlisteners >= 1, "a config without listeners loaded");
  FZ_CHECK(cfg->timeouts.connect && cfg->timeouts.response && cfg->timeouts.client_idle &&
               cfg->timeouts.header && cfg->timeouts.tunnel_idle && cfg->timeouts.tunnel_fin,
           "a global timeout is 0 after load");
  for (size_t i = 0; i < cfg->nroutes; i++) {
    const sy_route_cfg *r = &cfg->routes[i];
    FZ_CHECK(r->upstream && r->upstream >= cfg->upstreams &&
                 r->upstream < cfg->upstreams + cfg->nupstreams,
             "route %zu has no resolved upstream", i);
    FZ_CHECK(r->upstream->nservers >= 1, "upstream %s without servers", r->upstream->name);
  }
  /* Route a few fixed requests through whatever loaded. */
  static const char *hosts[] = {"chat.example.com", "a.example.com:8080", "[::1]:80", "", "x."};
  static const char *paths[] = {"/", "/ws", "/api/v1", "/status.json", ""};
  sy_str ups[2] = {{"websocket", 9}, {"h2c", 3}};
  sy_header hv[2] = {{{"X-Env", 5}, {" canary ", 8}}, {{"X-Debug", 7}, {"", 0}}};
  sy_config *held = sy_config_ref(cfg);
  for (int i = 0; i < 5; i++) {
    sy_request_view rv = {
        .method = {"GET", 3},
        .host = {hosts[i], strlen(hosts[i])},
        .path = {paths[i], strlen(paths[i])},
        .headers = hv,
        .nheaders = 2,
        .upgrades = ups,
        .nupgrades = (size_t)(i & 1) + 1,
    };
    const sy_route_cfg *r = sy_route_match(cfg, &rv);
    if (r) {
      for (size_t k = 0; k < 2; k++) {
        int ok = sy_route_allows_upgrade(r, ups[k]);
        if (k == 1 && ok) {
          int named = 0;
          for (size_t j = 0; j < r->nallow_upgrades; j++)
            if (strncasecmp(r->allow_upgrades[j], "h2c", 3) == 0) named = 1;
          FZ_CHECK(named, "h2c allowed by a route that does not name it");
        }
      }
    }
  }
  sy_config_unref(held);
  sy_config_unref(cfg);
  free(yaml);
  return 0;
}
