/* switchyard: command line, signals, workers. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "switchyard/config.h"
#include "switchyard/log.h"
#include "switchyard/worker.h"

#define SY_VERSION "0.1.0"

static sy_worker *workers;
static unsigned nworkers;

static void usage(FILE *out) {
  fprintf(out, "usage: switchyard [-c FILE] [-t] [-v]\n"
               "  -c FILE  configuration (default /etc/switchyard/switchyard.yaml)\n"
               "  -t       check the configuration and exit (0 valid, 1 invalid)\n"
               "  -v       print the version and exit\n");
}

static void raise_nofile(void) {
  /* Every tunnel holds two sockets: take all the descriptors we may. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static void on_signal(uv_signal_t *s, int signum) {
  if (signum == SIGHUP) {
    sy_log_info("SIGHUP: reload is not implemented yet; configuration unchanged");
    return;
  }
  sy_log_info("signal %d: shutting down", signum);
  for (unsigned i = 0; i < nworkers; i++)
    sy_worker_stop(&workers[i]);
  uv_stop(s->loop);
}

int main(int argc, char **argv) {
  const char *path = "/etc/switchyard/switchyard.yaml";
  int check_only = 0, opt;
  while ((opt = getopt(argc, argv, "c:tvh")) != -1) {
    switch (opt) {
    case 'c': path = optarg; break;
    case 't': check_only = 1; break;
    case 'v': printf("switchyard %s\n", SY_VERSION); return 0;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc) {
    usage(stderr);
    return 2;
  }
  sy_config_error err;
  sy_config *cfg = sy_config_load(path, &err);
  if (!cfg) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  if (check_only) {
    fprintf(stderr, "%s: configuration ok\n", path);
    sy_config_unref(cfg);
    return 0;
  }
  signal(SIGPIPE, SIG_IGN);
  raise_nofile();
  if (sy_access_log_open(cfg->access_log) < 0) {
    sy_config_unref(cfg);
    return 1;
  }
  /* Signal handlers first: a SIGTERM that arrives as soon as the port
   * accepts must be a clean shutdown, not the default action. */
  uv_loop_t *loop = uv_default_loop();
  uv_signal_t sigs[4];
  int signums[4] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
  for (int i = 0; i < 4; i++) {
    uv_signal_init(loop, &sigs[i]);
    uv_signal_start(&sigs[i], on_signal, signums[i]);
    uv_unref((uv_handle_t *)&sigs[i]);
  }
  uv_ref((uv_handle_t *)&sigs[0]);
  nworkers = cfg->workers ? cfg->workers : uv_available_parallelism();
  workers = calloc(nworkers, sizeof(*workers));
  int rc = 0;
  unsigned started = 0;
  for (unsigned i = 0; i < nworkers && rc == 0; i++) {
    rc = sy_worker_init(&workers[i], i, cfg);
    if (rc == 0) {
      rc = sy_worker_start(&workers[i]);
      if (rc == 0)
        started++;
    }
  }
  if (rc < 0) {
    sy_log_error("start-up failed: %s", uv_strerror(rc));
    for (unsigned i = 0; i < started; i++)
      sy_worker_stop(&workers[i]);
  } else {
    sy_log_info("switchyard %s: %u worker(s), %zu listener(s), config %s", SY_VERSION, nworkers,
                cfg->nlisteners, path);
    uv_run(loop, UV_RUN_DEFAULT);
  }
  for (int i = 0; i < 4; i++)
    uv_close((uv_handle_t *)&sigs[i], NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  for (unsigned i = 0; i < started; i++)
    sy_worker_join(&workers[i]);
  for (unsigned i = 0; i < nworkers; i++)
    sy_worker_destroy(&workers[i]);
  free(workers);
  sy_access_log_close();
  sy_config_unref(cfg);
  return rc < 0 ? 1 : 0;
}
