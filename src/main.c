/* switchyard: command line, signals, reload, workers, admin listener. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <time.h>
#include <openssl/crypto.h>
#include <uv.h>
#include <yaml.h>

#include "switchyard/admin.h"
#include "switchyard/config.h"
#include "switchyard/cpus.h"
#include "switchyard/health.h"
#include "switchyard/limits.h"
#include "switchyard/log.h"
#include "switchyard/metrics.h"
#include "switchyard/resolver.h"
#include "switchyard/upstream.h"
#include "switchyard/worker.h"

#define SY_VERSION "0.1.0"

typedef struct sy_main {
  const char *path;
  uv_loop_t *loop;
  sy_worker *workers;
  unsigned nworkers;
  sy_admin_state admin_state;
  sy_admin *admin;
  sy_health *health;
  sy_resolver *resolver;
  uv_signal_t sigs[6];
  uv_work_t reaper; /* joins the workers off the loop, so signals still work */
  int stopping;
} sy_main;

static sy_main M;

/* Exit codes, also in docs/OPERATIONS.md. */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

static void usage(FILE *out) {
  fprintf(
      out,
      "usage: switchyard [-c FILE] [-t] [-v] [-h]\n"
      "  -c, --config FILE  configuration (default /etc/switchyard/switchyard.yaml)\n"
      "  -t, --check        check the configuration and exit\n"
      "  -v, --version      print the version and exit\n"
      "  -h, --help         print this help and exit\n"
      "exit codes: 0 stopped cleanly (or -t: valid), 1 configuration invalid or start-up\n"
      "failed, 2 bad command line\n"
      "signals: HUP/USR2 reload, TERM/INT drain and exit, QUIT exit now, USR1 reopen the access "
      "log\n");
}

static void version(void) {
  printf("switchyard %s\n", SY_VERSION);
  printf("libuv %s, %s, libyaml %s\n", uv_version_string(), OpenSSL_version(OPENSSL_VERSION),
         yaml_get_version_string());
}

static void raise_nofile(void) {
  /* Every tunnel holds two sockets: take all the descriptors we may. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* A connection holds two descriptors (client and upstream); the rest of the
 * budget goes to listeners, pooled pipes and the like. Past it, accept()
 * would fail with EMFILE and libuv would accept and drop connections
 * silently: the listeners pause at this many connections instead. */
static void set_fd_budget(unsigned nworkers) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return;
  uint64_t nofile = rl.rlim_cur, reserve = 64 + 128 * (uint64_t)nworkers;
  if (reserve > nofile / 2) reserve = nofile / 2;
  uint64_t budget = nofile - reserve;
  sy_limits_fds_set(budget);                            /* everything traffic opens */
  sy_worker_set_fd_budget(budget / 2 ? budget / 2 : 1); /* 2 per connection at most */
}

static void note_fd_budget(const sy_config *cfg) {
  uint64_t eff = sy_worker_max_conns(cfg);
  if (eff < cfg->limits.max_connections)
    sy_log_warn("limits.max_connections %llu is more than the descriptor limit allows: "
                "accepting at most %llu connections (2 descriptors each, RLIMIT_NOFILE)",
                (unsigned long long)cfg->limits.max_connections, (unsigned long long)eff);
}

/* DNS changed an upstream's servers: the health checks follow them. */
static void on_servers_changed(void *arg) {
  if (M.stopping) return; /* (no checks may be running: none had a server yet) */
  sy_health_stop(M.health);
  M.health = sy_health_start(M.loop, M.admin_state.cfg, M.admin_state.main);
}

static void reload_refused(const char *why) {
  M.admin_state.reloads_failed++;
  M.admin_state.last_reload_ok = 0;
  M.admin_state.last_reload_time = time(NULL);
  snprintf(M.admin_state.last_reload_error, sizeof(M.admin_state.last_reload_error), "%s", why);
  sy_log_error("reload refused, running configuration kept: %s", why);
}

/* Parsing and validation happen here, on the main thread, off every worker's
 * loop; a bad file changes nothing. */
static void reload(void) {
  sy_config_error err;
  sy_config *cfg = sy_config_load(M.path, &err);
  if (!cfg) {
    reload_refused(err.msg);
    return;
  }
  sy_config_adopt_state(cfg, M.admin_state.cfg);
  if (sy_upstream_prepare(cfg) < 0) {
    reload_refused("out of memory");
    sy_config_unref(cfg);
    return;
  }
  sy_log_configure((enum sy_log_level)cfg->log_level, (enum sy_log_format)cfg->log_format);
  /* Names already known keep their servers through the reload. */
  if (M.resolver && sy_resolver_attach(M.resolver, cfg) < 0)
    sy_log_error("reload: resolver settings not applied, the previous name servers stay");
  note_fd_budget(cfg);
  for (unsigned i = 0; i < M.nworkers; i++)
    sy_worker_reload(&M.workers[i], cfg);
  sy_health_stop(M.health);
  M.health = sy_health_start(M.loop, cfg, M.admin_state.main);
  sy_config_unref(M.admin_state.cfg);
  M.admin_state.cfg = cfg;
  if (sy_access_log_open(cfg->access_log) < 0) sy_log_error("reload: access log unchanged");
  M.admin_state.reloads_ok++;
  M.admin_state.generation++;
  M.admin_state.last_reload_success = time(NULL);
  if (sy_metrics_capacity(cfg) > sy_metrics_size(M.workers[0].env.metrics))
    sy_log_error("reload: the metrics tables were sized for the configuration at start; with "
                 "this one they may fill (counted in switchyard_metrics_series_dropped_total), "
                 "a restart sizes them anew");
  M.admin_state.last_reload_ok = 1;
  M.admin_state.last_reload_time = time(NULL);
  M.admin_state.last_reload_error[0] = 0;
  sy_log_info("reloaded %s (generation %llu)", M.path,
              (unsigned long long)M.admin_state.generation);
}

static void join_workers(uv_work_t *req) {
  for (unsigned i = 0; i < M.nworkers; i++)
    sy_worker_join(&M.workers[i]);
}

static void workers_joined(uv_work_t *req, int status) {
  sy_health_stop(M.health);
  M.health = NULL;
  sy_resolver_stop(M.resolver);
  M.resolver = NULL;
  M.admin_state.resolver = NULL;
  sy_admin_stop(M.admin);
  M.admin = NULL;
  for (int i = 0; i < 6; i++)
    if (!uv_is_closing((uv_handle_t *)&M.sigs[i])) uv_close((uv_handle_t *)&M.sigs[i], NULL);
  /* libuv put back the default actions, which for these end the process: a
   * log rotation's SIGUSR1 or a SIGHUP arriving now would cut short the
   * access log's last writes. A second SIGTERM or SIGINT still ends it. */
  signal(SIGHUP, SIG_IGN);
  signal(SIGUSR1, SIG_IGN);
  signal(SIGUSR2, SIG_IGN);
}

/* Stops the workers; the admin listener answers (readyz: draining) and the
 * signal handlers stay (a SIGQUIT cuts a drain short) until they are gone. */
static void stop_all(enum sy_stop how) {
  M.admin_state.draining = 1;
  for (unsigned i = 0; i < M.nworkers; i++)
    if (M.workers[i].started) sy_worker_stop(&M.workers[i], how);
  if (!M.stopping) uv_queue_work(M.loop, &M.reaper, join_workers, workers_joined);
  M.stopping = 1;
}

static void on_signal(uv_signal_t *s, int signum) {
  switch (signum) {
  case SIGHUP:
    if (!M.stopping) reload();
    break;
  case SIGUSR2:
    /* HAProxy's master reloads on SIGUSR2; nginx would start a new binary,
     * which needs no signal here (a second process shares the ports). Either
     * way the reflex must not end the process. */
    if (M.stopping) {
      sy_log_info("SIGUSR2: shutting down, not reloading");
    } else {
      sy_log_info("SIGUSR2: reloading the configuration, as SIGHUP does");
      reload();
    }
    break;
  case SIGUSR1:
    sy_log_info("SIGUSR1: reopening the access log");
    sy_access_log_open(M.admin_state.cfg->access_log);
    break;
  case SIGQUIT:
    sy_log_info("SIGQUIT: closing every connection now");
    stop_all(SY_STOP_NOW);
    break;
  default:
    sy_log_info("signal %d: draining (tunnels get %llu ms)", signum,
                (unsigned long long)M.admin_state.cfg->timeouts.drain);
    stop_all(SY_DRAIN);
  }
}

static void warn_unimplemented(const sy_config *cfg) {
  for (size_t i = 0; i < cfg->nupstreams; i++)
    if (cfg->upstreams[i].tls.enabled && !cfg->upstreams[i].tls.verify)
      sy_log_warn("upstream %s: TLS certificate verification is off", cfg->upstreams[i].name);
}

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"check", no_argument, NULL, 't'},
    {"version", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int main(int argc, char **argv) {
  int check_only = 0, opt;
  M.path = "/etc/switchyard/switchyard.yaml";
  while ((opt = getopt_long(argc, argv, "c:tvh", long_opts, NULL)) != -1) {
    switch (opt) {
    case 'c':
      M.path = optarg;
      break;
    case 't':
      check_only = 1;
      break;
    case 'v':
      version();
      return EXIT_OK;
    case 'h':
      usage(stdout);
      return EXIT_OK;
    default:
      usage(stderr);
      return EXIT_USAGE;
    }
  }
  if (optind != argc) {
    fprintf(stderr, "switchyard: unexpected argument \"%s\"\n", argv[optind]);
    usage(stderr);
    return EXIT_USAGE;
  }
  sy_config_error err;
  sy_config *cfg = sy_config_load_flags(M.path, check_only ? SY_CONFIG_NO_RESOLVE : 0, &err);
  if (!cfg) {
    fprintf(stderr, "%s\n", err.msg);
    return EXIT_FAIL;
  }
  if (check_only) {
    fprintf(stderr, "%s: configuration ok\n", M.path);
    sy_config_unref(cfg);
    return EXIT_OK;
  }
  if (sy_upstream_prepare(cfg) < 0) {
    fprintf(stderr, "%s: out of memory\n", M.path);
    sy_config_unref(cfg);
    return EXIT_FAIL;
  }
  sy_log_configure((enum sy_log_level)cfg->log_level, (enum sy_log_format)cfg->log_format);
  signal(SIGPIPE, SIG_IGN);
  raise_nofile();
  if (sy_access_log_open(cfg->access_log) < 0) {
    sy_config_unref(cfg);
    return EXIT_FAIL;
  }
  warn_unimplemented(cfg);
  /* Signal handlers first: a SIGTERM that arrives as soon as the port
   * accepts must be a clean shutdown, not the default action. */
  M.loop = uv_default_loop();
  int signums[6] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
  for (int i = 0; i < 6; i++) {
    uv_signal_init(M.loop, &M.sigs[i]);
    uv_signal_start(&M.sigs[i], on_signal, signums[i]);
  }
  M.admin_state.cfg = cfg;
  M.admin_state.version = SY_VERSION;
  M.admin_state.start_time = M.admin_state.last_reload_success = time(NULL);
  M.admin_state.started = time(NULL);
  M.admin_state.main = sy_metrics_new(sy_metrics_capacity(cfg));
  M.nworkers = cfg->workers;
  if (!M.nworkers) {
    char why[512];
    M.nworkers = sy_auto_workers(why, sizeof why);
    if (M.nworkers > SY_WORKERS_MAX) M.nworkers = SY_WORKERS_MAX;
    sy_log_info("workers: auto = %u (%s)", M.nworkers, why);
  }
  M.workers = calloc(M.nworkers, sizeof(*M.workers));
  if (!M.workers) {
    sy_log_error("out of memory starting %u workers", M.nworkers);
    sy_config_unref(cfg);
    return EXIT_FAIL;
  }
  M.admin_state.workers = M.workers;
  M.admin_state.nworkers = M.nworkers;
  set_fd_budget(M.nworkers);
  note_fd_budget(cfg);
  int rc = 0;
  /* Before the workers: they start with whatever the names already gave
   * (nothing yet), and the lookups begin at once. */
  M.resolver = sy_resolver_new(M.loop, M.admin_state.main, on_servers_changed, NULL);
  M.admin_state.resolver = M.resolver;
  if (M.resolver)
    sy_resolver_attach(M.resolver, cfg); /* a failure is logged; names stay unresolved */
  for (unsigned i = 0; i < M.nworkers && rc == 0; i++) {
    rc = sy_worker_init(&M.workers[i], i, cfg);
    if (rc == 0) rc = sy_worker_start(&M.workers[i]);
  }
  if (rc == 0 && cfg->admin_enabled &&
      !(M.admin = sy_admin_start(M.loop, &cfg->admin_addr, &M.admin_state)))
    rc = UV_EADDRINUSE;
  if (rc < 0) {
    sy_log_error("start-up failed: %s", uv_strerror(rc));
    stop_all(SY_STOP_NOW);
  } else {
    M.health = sy_health_start(M.loop, cfg, M.admin_state.main);
    sy_log_info("switchyard %s: %u worker(s), %zu listener(s), config %s", SY_VERSION, M.nworkers,
                cfg->nlisteners, M.path);
  }
  uv_run(M.loop, UV_RUN_DEFAULT);
  for (unsigned i = 0; i < M.nworkers; i++)
    sy_worker_destroy(&M.workers[i]);
  uv_run(M.loop, UV_RUN_DEFAULT);
  uv_loop_close(M.loop);
  free(M.workers);
  sy_metrics_free(M.admin_state.main);
  sy_access_log_close();
  sy_config_unref(M.admin_state.cfg);
  if (rc == 0) sy_log_info("stopped");
  return rc < 0 ? EXIT_FAIL : EXIT_OK;
}
