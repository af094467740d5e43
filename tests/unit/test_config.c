/* Config loader: every refusal must point at the offending node with
 * "file:line:column:" and name the key path; accepted files must come out with
 * the documented defaults. */
#include <check.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "switchyard/config.h"
#include "switchyard/proxyproto.h"

#define L "listeners:\n  - address: 127.0.0.1:8080\n" /* lines 1-2 of most cases */
#define U "upstreams:\n  web:\n    servers: [{address: 127.0.0.1:9000}]\n"
#define PATH30 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
#define PATH300 PATH30 PATH30 PATH30 PATH30 PATH30 PATH30 PATH30 PATH30 PATH30 PATH30

static sy_config *load(const char *yaml, sy_config_error *err) {
  return sy_config_load_string("t.yaml", yaml, strlen(yaml), err);
}

static sy_config *load_ok(const char *yaml) {
  sy_config_error err = {{0}};
  sy_config *cfg = load(yaml, &err);
  ck_assert_msg(cfg != NULL, "unexpected error: %s", err.msg);
  return cfg;
}

typedef struct err_case {
  const char *yaml;
  const char *prefix; /* "t.yaml:LINE:COL: " exactly */
  const char *word;   /* a piece of the message that must be there */
} err_case;

static const err_case errors[] = {
    /* structure */
    {"", "t.yaml:1:1: ", "empty"},
    {"- a\n- b\n", "t.yaml:1:1: ", "top level: expected a mapping"},
    {"workers: 2\n", "t.yaml:1:1: ", "missing required key \"listeners\""},
    {L "bogus: 1\n", "t.yaml:3:1: ", "unknown key \"bogus\" at top level"},
    {L "workers: 1\nworkers: 2\n", "t.yaml:4:1: ", "duplicate key \"workers\""},
    {L "---\nworkers: 1\n", "t.yaml:4:1: ", "only one YAML document"},
    {"a: b: c\n", "t.yaml:1:5: ", "syntax error"},
    {"listeners: [\n", "t.yaml:2:1: ", "syntax error"},
    {L "? [a]\n: 1\n", "t.yaml:3:3: ", "keys must be strings"},
    {"listeners: []\n", "t.yaml:1:12: ", "listeners: must not be empty"},
    {"listeners: {a: 1}\n", "t.yaml:1:12: ", "listeners: expected a list"},
    {"listeners:\n", "t.yaml:1:11: ", "listeners: expected a list, got null"},
    /* workers */
    {L "workers: abc\n", "t.yaml:3:10: ", "workers: expected \"auto\" or a positive integer"},
    {L "workers: 0\n", "t.yaml:3:10: ", "workers:"},
    {L "workers: -1\n", "t.yaml:3:10: ", "workers:"},
    {L "worker_cpu_affinity: yes\n",
     "t.yaml:3:22: ", "worker_cpu_affinity: expected \"auto\" or \"off\""},
    {L "workers: 1.5\n", "t.yaml:3:10: ", "workers:"},
    {L "workers: [1]\n", "t.yaml:3:10: ", "workers: expected a scalar value, got a list"},
    /* listeners */
    {"listeners:\n  - name: a\n    adress: 1.2.3.4:80\n",
     "t.yaml:3:5: ", "unknown key \"adress\" in listeners[0]"},
    {"listeners:\n  - name: a\n", "t.yaml:2:5: ", "listeners[0]: missing required key \"address\""},
    {"listeners:\n  - address: 127.0.0.1\n", "t.yaml:2:14: ", "missing port"},
    {"listeners:\n  - address: 127.0.0.1:0\n",
     "t.yaml:2:14: ", "listeners[0].address: invalid port"},
    {"listeners:\n  - address: 127.0.0.1:65536\n", "t.yaml:2:14: ", "invalid port"},
    {"listeners:\n  - address: 127.0.0.1:http\n", "t.yaml:2:14: ", "invalid port"},
    {"listeners:\n  - address: '127.0.0.1:'\n", "t.yaml:2:14: ", "invalid port"},
    {"listeners:\n  - address: 127.0.0.1:\n", "t.yaml:2:23: ", "syntax error"},
    {"listeners:\n  - address: 127.0.0.1:-80\n", "t.yaml:2:14: ", "invalid port"},
    {"listeners:\n  - address: ::1:80\n", "t.yaml:2:14: ", "brackets"},
    {"listeners:\n  - address: \"[::1]\"\n", "t.yaml:2:14: ", "missing port"},
    {"listeners:\n  - address: \"[::1:80\"\n", "t.yaml:2:14: ", "missing ']'"},
    {"listeners:\n  - address: example.com:80\n", "t.yaml:2:14: ", "numeric IP address"},
    {"listeners:\n  - address: 300.1.1.1:80\n", "t.yaml:2:14: ", "numeric IP address"},
    {"listeners:\n  - address: {host: a}\n", "t.yaml:2:14: ", "expected a scalar value"},
    {"listeners:\n  - address:\n", "t.yaml:2:13: ", "listeners[0].address: expected a string"},
    {"listeners:\n  - address: 127.0.0.1:80\n    name: \"\"\n",
     "t.yaml:3:11: ", "listeners[0].name: must not be empty"},
    {"listeners:\n  - address: '*:8080'\n  - address: 0.0.0.0:8080\n",
     "t.yaml:3:14: ", "listeners[1].address: duplicate listener address"},
    {"listeners:\n  - address: :8080\n  - address: '*:8080'\n", "t.yaml:3:14: ", "duplicate"},
    {"listeners:\n  - address: 127.0.0.1:80\n  - address: localhost:80\n",
     "t.yaml:3:14: ", "duplicate"},
    {"listeners:\n  - address: 127.0.0.1:80\n    offer_tls_upgrade: maybe\n",
     "t.yaml:3:24: ", "listeners[0].offer_tls_upgrade: expected off, optional or required"},
    {"listeners:\n  - address: 127.0.0.1:80\n    proxy_protocol: v3\n",
     "t.yaml:3:21: ", "listeners[0].proxy_protocol: expected off, v1, v2 or any, got \"v3\""},
    {"listeners:\n  - address: 127.0.0.1:80\n    proxy_protocol: [v1]\n",
     "t.yaml:3:21: ", "listeners[0].proxy_protocol"},
    {"listeners:\n  - address: 127.0.0.1:80\nupstreams:\n  a:\n    servers: [{address: "
     "127.0.0.1:1}]\n"
     "    send_proxy: any\n",
     "t.yaml:6:17: ", "upstreams.a.send_proxy: expected off, v1 or v2, got \"any\""},
    {"listeners:\n  - address: 127.0.0.1:80\n    offer_tls_upgrade: optional\n",
     "t.yaml:3:24: ", "needs tls.certificates"},
    {"listeners:\n  - address: 127.0.0.1:80\n    tls: {min_version: TLS1.2}\n",
     "t.yaml:3:10: ", "listeners[0].tls: missing required key \"certificates\""},
    {"listeners:\n  - address: 127.0.0.1:80\n    tls: {certificates: []}\n",
     "t.yaml:3:25: ", "listeners[0].tls.certificates: must not be empty"},
    {"listeners:\n  - address: 127.0.0.1:80\n    tls: {certificates: [{cert: a.pem}]}\n",
     "t.yaml:3:26: ", "listeners[0].tls.certificates[0]: missing required key \"key\""},
    {"listeners:\n  - address: 127.0.0.1:80\n"
     "    tls: {certificates: [{cert: demo.pem, key: demo.key}], min_version: TLS1.1}\n",
     "t.yaml:3:73: ", "listeners[0].tls.min_version: expected TLS1.2 or TLS1.3"},
    {"listeners:\n  - address: 127.0.0.1:80\n    tls: {certificates: [{cert: a, key: b, x: c}]}\n",
     "t.yaml:3:44: ", "unknown key \"x\" in listeners[0].tls.certificates[0]"},
    /* admin */
    {L "admin: {}\n", "t.yaml:3:8: ", "admin: missing required key \"address\""},
    {L "admin: {address: 127.0.0.1:8080}\n",
     "t.yaml:3:18: ", "admin.address: \"127.0.0.1:8080\" is also listeners[0]"},
    {L "admin: {address: 127.0.0.1:9901, port: 1}\n",
     "t.yaml:3:34: ", "unknown key \"port\" in admin"},
    /* upstreams */
    {L "upstreams: [web]\n", "t.yaml:3:12: ", "upstreams: expected a mapping"},
    {L "upstreams:\n  web: {}\n",
     "t.yaml:4:8: ", "upstreams.web: missing required key \"servers\""},
    {L "upstreams:\n  web: {servers: []}\n",
     "t.yaml:4:18: ", "upstreams.web.servers: must not be empty"},
    {L "upstreams:\n  web: {servers: [{weight: 1}]}\n",
     "t.yaml:4:19: ", "upstreams.web.servers[0]: missing required key \"address\""},
    {L "upstreams:\n  web:\n    servers: [{address: 127.0.0.1:9000}]\n"
       "  web:\n    servers: [{address: 127.0.0.1:9001}]\n",
     "t.yaml:6:3: ", "duplicate key \"web\" in upstreams"},
    /* A name is looked up at run time, so only its form is checked at load. */
    {L "upstreams:\n  web:\n    servers: [{address: 'no space.invalid:80'}]\n", "t.yaml:5:25: ",
     "upstreams.web.servers[0].address: \"no space.invalid\" is neither an IP address nor a "
     "valid host name"},
    {L "upstreams:\n  web:\n    servers: [{address: ':80'}]\n", "t.yaml:5:25: ", "needs a host"},
    {L "upstreams:\n  web:\n    servers: [{address: 127.0.0.1:9000, weight: 0}]\n",
     "t.yaml:5:49: ", "upstreams.web.servers[0].weight: expected a positive integer"},
    {L "upstreams:\n  web:\n    servers: [{address: 127.0.0.1:9000, weight: -2}]\n",
     "t.yaml:5:49: ", "weight"},
    {L "upstreams:\n  web:\n    servers: [{address: 127.0.0.1:9000, weight: abc}]\n",
     "t.yaml:5:49: ", "weight"},
    {L U "    balance: random\n",
     "t.yaml:6:14: ", "upstreams.web.balance: unknown balance \"random\""},
    {L U "    balance: hash(foo)\n", "t.yaml:6:14: ", "unknown hash key"},
    {L U "    balance: hash(header:)\n", "t.yaml:6:14: ", "unknown hash key"},
    {L U "    balance: hash()\n", "t.yaml:6:14: ", "unknown balance"},
    {L U "    tls: {verify: yes}\n",
     "t.yaml:6:19: ", "upstreams.web.tls.verify: expected true or false, got \"yes\""},
    {L U "    tls: {cert: c.pem}\n", "t.yaml:6:10: ", "upstreams.web.tls: cert and key"},
    {L "upstreams:\n  web:\n    servers:\n      - address: 127.0.0.1:9000\n"
       "      - {address: \"127.0.0.1:9000\", weight: 2}\n",
     "t.yaml:7:19: ",
     "upstreams.web.servers[1].address: \"127.0.0.1:9000\" is listed already (servers[0])"},
    {L U "    health: {path: healthz}\n",
     "t.yaml:6:20: ", "upstreams.web.health.path: must start with"},
    {L U "    health: {path: \"/a b\"}\n", "t.yaml:6:20: ",
     "upstreams.web.health.path: only visible ASCII characters, no spaces (byte 2"},
    {L U "    health: {path: \"/h\\r\\nX: y\"}\n", "t.yaml:6:20: ", "(byte 2 is 0x0d)"},
    {L U "    health: {path: /" PATH300 "}\n",
     "t.yaml:6:20: ", "upstreams.web.health.path: at most 256 bytes, got 301"},
    {L U "    health: {interval: 5 s}\n",
     "t.yaml:6:24: ", "upstreams.web.health.interval: invalid duration \"5 s\""},
    {L U "    health: {interval: 0s}\n", "t.yaml:6:24: ", "must be greater than zero"},
    {L U "    health: {healthy: 0}\n",
     "t.yaml:6:23: ", "upstreams.web.health.healthy: expected a positive integer"},
    {L U "    health: {retries: 3}\n",
     "t.yaml:6:14: ", "unknown key \"retries\" in upstreams.web.health"},
    /* routes */
    {L "routes:\n  - upstream: x\n",
     "t.yaml:4:15: ", "routes[0].upstream: no upstream named \"x\""},
    {L U "routes:\n  - name: a\n    upstream: web\n  - upstream: chta\n",
     "t.yaml:9:15: ", "routes[1].upstream: no upstream named \"chta\""},
    {L U "routes:\n  - match: {path: /}\n",
     "t.yaml:7:5: ", "routes[0]: missing required key \"upstream\""},
    {L U "routes: {a: 1}\n", "t.yaml:6:9: ", "routes: expected a list"},
    {L U "routes:\n  - upstream: web\n    mtch: {}\n",
     "t.yaml:8:5: ", "unknown key \"mtch\" in routes[0]"},
    {L U "routes:\n  - upstream: web\n    match: {hots: a}\n",
     "t.yaml:8:13: ", "unknown key \"hots\" in routes[0].match"},
    {L U "routes:\n  - upstream: web\n    match: {host: a.*.com}\n",
     "t.yaml:8:19: ", "routes[0].match.host: only a leading"},
    {L U "routes:\n  - upstream: web\n    match: {host: \"*example.com\"}\n",
     "t.yaml:8:19: ", "wildcard"},
    {L U "routes:\n  - upstream: web\n    match: {host: a.com:80}\n", "t.yaml:8:19: ", "port"},
    {L U "routes:\n  - upstream: web\n    match: {path_prefix: ws}\n",
     "t.yaml:8:26: ", "routes[0].match.path_prefix: must start with"},
    {L U "routes:\n  - upstream: web\n    match: {methods: []}\n",
     "t.yaml:8:22: ", "routes[0].match.methods: must not be empty"},
    {L U "routes:\n  - upstream: web\n    match: {methods: GET}\n",
     "t.yaml:8:22: ", "expected a list"},
    {L U "routes:\n  - upstream: web\n    match: {methods: [[GET]]}\n",
     "t.yaml:8:23: ", "routes[0].match.methods[0]: expected a scalar value"},
    {L U "routes:\n  - upstream: web\n    match: {headers: [{value: x}]}\n",
     "t.yaml:8:23: ", "routes[0].match.headers[0]: missing required key \"name\""},
    {L U "routes:\n  - upstream: web\n    match: {headers: [X-Env]}\n",
     "t.yaml:8:23: ", "routes[0].match.headers[0]: expected a mapping"},
    {L U "routes:\n  - upstream: web\n    match: {upgrade: []}\n",
     "t.yaml:8:22: ", "must not be empty"},
    {L U "routes:\n  - upstream: web\n    allow_upgrades: websocket\n",
     "t.yaml:8:21: ", "routes[0].allow_upgrades: expected a list"},
    {L U "routes:\n  - upstream: web\n    websocket: {check_accept: 1}\n",
     "t.yaml:8:31: ", "routes[0].websocket.check_accept: expected true or false"},
    {L U "routes:\n  - upstream: web\n    require_tls: \"yes\"\n",
     "t.yaml:8:18: ", "expected true or false"},
    {L U "routes:\n  - upstream: web\n    timeouts: {tunnel_idle: 1.5h}\n",
     "t.yaml:8:29: ", "routes[0].timeouts.tunnel_idle: invalid duration \"1.5h\""},
    {L U "routes:\n  - upstream: web\n    timeouts: {client_idle: 5s}\n",
     "t.yaml:8:16: ", "unknown key \"client_idle\" in routes[0].timeouts"},
    /* globals */
    {L "timeouts:\n  connect: 5 s\n",
     "t.yaml:4:12: ", "timeouts.connect: invalid duration \"5 s\""},
    {L "timeouts: {connect: 0s}\n", "t.yaml:3:21: ", "timeouts.connect: must be greater than zero"},
    {L "timeouts: {response: 5}\n", "t.yaml:3:22: ", "invalid duration \"5\""},
    {L "timeouts: {header: 5s}\n", "t.yaml:3:12: ", "unknown key \"header\" in timeouts"},
    {L "limits:\n  max_header_bytes: 10kib\n",
     "t.yaml:4:21: ", "limits.max_header_bytes: invalid size \"10kib\""},
    {L "limits: {max_header_bytes: 0}\n", "t.yaml:3:28: ", "must be greater than zero"},
    {L "limits: {max_connections: abc}\n",
     "t.yaml:3:27: ", "limits.max_connections: expected a positive integer, got \"abc\""},
    {L "limits: {max_headers: 0}\n", "t.yaml:3:23: ", "limits.max_headers"},
    {L "limits: {header_timeout: 10}\n",
     "t.yaml:3:26: ", "limits.header_timeout: invalid duration"},
    {L "forwarding: {via: yes}\n",
     "t.yaml:3:19: ", "forwarding.via: expected true or false, got \"yes\""},
    {L "forwarding: {via: True}\n", "t.yaml:3:19: ", "forwarding.via"},
    {L "forwarding: {x_forwarded: true}\n",
     "t.yaml:3:14: ", "unknown key \"x_forwarded\" in forwarding"},
    {L "access_log: {file: x}\n",
     "t.yaml:3:13: ", "access_log: expected a scalar value, got a mapping"},
    {L "access_log:\n", "t.yaml:3:12: ", "access_log: expected a string, got null"},
    {L "paths: {normalize: yes}\n",
     "t.yaml:3:20: ", "paths.normalize: expected true or false, got \"yes\""},
    {L "paths: {escaped_slashes: decode}\n",
     "t.yaml:3:26: ", "paths.escaped_slashes: expected keep or reject, got \"decode\""},
    {L "paths: {normalise: true}\n", "t.yaml:3:9: ", "unknown key \"normalise\" in paths"},
    {L "paths: {normalize: false, merge_slashes: false}\n",
     "t.yaml:3:20: ", "paths: merge_slashes and escaped_slashes need normalize: true"},
    {L "paths: {escaped_slashes: reject, normalize: false}\n",
     "t.yaml:3:45: ", "need normalize: true"},
    /* diagnostics, request ids, admin auth */
    {L "log_level: verbose\n", "t.yaml:3:12: ", "log_level: expected error, warn, info or debug"},
    {L "log_level: INFO\n", "t.yaml:3:12: ", "log_level: expected error"},
    {L "log_format: logfmt\n", "t.yaml:3:13: ", "log_format: expected text or json"},
    {L "forwarding: {request_id: 1}\n", "t.yaml:3:26: ", "forwarding.request_id: expected true"},
    {L "forwarding: {request_id_header: \"X Id\"}\n",
     "t.yaml:3:33: ", "forwarding.request_id_header: \"X Id\" is not a valid header field name"},
    {L "forwarding: {request_id_header: Content-Length}\n", "t.yaml:3:33: ",
     "forwarding.request_id_header: \"Content-Length\" is a field the proxy manages"},
    {L "forwarding: {request_id_header: Sec-WebSocket-Key}\n",
     "t.yaml:3:33: ", "the proxy manages"},
    {L "workers: 257\n", "t.yaml:3:10: ", "workers: at most 256, got 257"},
    {L "timeouts: {connect: 50d}\n", "t.yaml:3:21: ", "timeouts.connect: at most 49d, got \"50d\""},
    {L "limits: {max_header_bytes: 4GiB}\n",
     "t.yaml:3:28: ", "limits.max_header_bytes: must be between 512 bytes and 1MiB"},
    {L "limits: {max_header_bytes: 100}\n", "t.yaml:3:28: ", "must be between 512 bytes and 1MiB"},
    {L "upstreams:\n  web:\n    servers: [{address: 127.0.0.1:9000, weight: 1000}]\n",
     "t.yaml:5:49: ", "upstreams.web.servers[0].weight: at most 256, got 1000"},
    {L U "    tls: {sni: \"api.internal:443\"}\n", "t.yaml:6:16: ",
     "upstreams.web.tls.sni: \"api.internal:443\" is neither a host name nor an IP address"},
    {L U "    balance: \"hash(header: X-User)\"\n", "t.yaml:6:14: ", "unknown hash key"},
    {L U "routes:\n  - upstream: web\n    match: {headers: [{name: \"X User\"}]}\n",
     "t.yaml:8:30: ", "is not a valid header field name"},
    {L U "routes:\n  - upstream: web\n    match: {host: example.com.}\n",
     "t.yaml:8:19: ", "routes[0].match.host: \"example.com.\" ends with \".\""},
    {L U "routes:\n  - upstream: web\n    websocket: {subprotocols: "
         "[a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q]}\n",
     "t.yaml:8:31: ", "routes[0].websocket.subprotocols: at most 16 entries, got 17"},
    {L U "routes:\n  - {name: api, upstream: web}\n  - {name: api, upstream: web}\n",
     "t.yaml:8:12: ", "routes[1].name: \"api\" is routes[0]'s name already"},
    {L U "routes:\n  - {name: \"#1\", upstream: web}\n",
     "t.yaml:7:12: ", "routes[0].name: \"#1\" must not start with \"#\""},
    {L "admin: {address: 127.0.0.1:9901, token: short}\n",
     "t.yaml:3:41: ", "admin.token: the token must be 16 to 4096 characters long, got 5"},
    {L "admin: {address: 127.0.0.1:9901, token: \"0123456789abcdef 0\"}\n",
     "t.yaml:3:41: ", "visible ASCII"},
    {L "admin: {address: 127.0.0.1:9901, token_file: /nonexistent/token}\n",
     "t.yaml:3:46: ", "admin.token_file: cannot read \"/nonexistent/token\""},
    {L "admin: {address: 127.0.0.1:9901, token: 0123456789abcdef, token_file: /etc/hostname}\n",
     "t.yaml:3:71: ", "admin: token and token_file are exclusive"},
};

START_TEST(test_errors) {
  const err_case *c = &errors[_i];
  sy_config_error err = {{0}};
  sy_config *cfg = load(c->yaml, &err);
  if (cfg) sy_config_unref(cfg);
  ck_assert_msg(cfg == NULL, "case %d loaded but should fail:\n%s", _i, c->yaml);
  ck_assert_msg(strncmp(err.msg, c->prefix, strlen(c->prefix)) == 0,
                "case %d: want prefix \"%s\", got \"%s\"", _i, c->prefix, err.msg);
  ck_assert_msg(strstr(err.msg, c->word) != NULL, "case %d: want \"%s\" in \"%s\"", _i, c->word,
                err.msg);
}
END_TEST

START_TEST(test_defaults) {
  sy_config *cfg = load_ok(L);
  ck_assert_int_eq(cfg->refs, 1);
  ck_assert_str_eq(cfg->path, "t.yaml");
  ck_assert_uint_eq(cfg->workers, 0);
  ck_assert_uint_eq(cfg->nlisteners, 1);
  ck_assert_str_eq(cfg->listeners[0].name, "127.0.0.1:8080");
  ck_assert_str_eq(cfg->listeners[0].addr.text, "127.0.0.1:8080");
  ck_assert_str_eq(cfg->listeners[0].addr.host, "127.0.0.1");
  ck_assert_uint_eq(cfg->listeners[0].addr.port, 8080);
  ck_assert_int_eq(cfg->listeners[0].addr.sa.ss_family, AF_INET);
  ck_assert_uint_eq(cfg->listeners[0].addr.salen, sizeof(struct sockaddr_in));
  ck_assert_int_eq(cfg->listeners[0].tls.enabled, 0);
  ck_assert_int_eq(cfg->listeners[0].offer_tls_upgrade, SY_TLS_OFFER_OFF);
  ck_assert_uint_eq(cfg->listeners[0].proxy_protocol, 0);
  ck_assert_int_eq(cfg->listeners[0].line, 2);
  ck_assert_int_eq(cfg->listeners[0].column, 5);
  ck_assert_int_eq(cfg->admin_enabled, 0);
  ck_assert_uint_eq(cfg->nupstreams, 0);
  ck_assert_uint_eq(cfg->nroutes, 0);
  ck_assert_uint_eq(cfg->timeouts.connect, 5000);
  ck_assert_uint_eq(cfg->timeouts.response, 60000);
  ck_assert_uint_eq(cfg->timeouts.client_idle, 60000);
  ck_assert_uint_eq(cfg->timeouts.header, 10000);
  ck_assert_uint_eq(cfg->timeouts.tunnel_idle, 3600000);
  ck_assert_uint_eq(cfg->timeouts.tunnel_fin, 30000);
  ck_assert_uint_eq(cfg->limits.max_connections, 100000);
  ck_assert_uint_eq(cfg->limits.max_header_bytes, 32768);
  ck_assert_uint_eq(cfg->limits.max_headers, 100);
  ck_assert_int_eq(cfg->forwarding.x_forwarded_for, 1);
  ck_assert_int_eq(cfg->forwarding.x_forwarded_proto, 1);
  ck_assert_int_eq(cfg->forwarding.x_forwarded_host, 1);
  ck_assert_int_eq(cfg->forwarding.via, 1);
  ck_assert_int_eq(cfg->paths.normalize, 1);
  ck_assert_int_eq(cfg->paths.merge_slashes, 1);
  ck_assert_int_eq(cfg->paths.reject_escaped_slashes, 0);
  ck_assert_int_eq(cfg->forwarding.request_id, 0);
  ck_assert_str_eq(cfg->forwarding.request_id_header, "X-Request-Id");
  ck_assert_ptr_null(cfg->admin_token);
  ck_assert_int_eq(cfg->log_level, 2 /* info */);
  ck_assert_int_eq(cfg->log_format, 0 /* text */);
  ck_assert_ptr_null(cfg->access_log);
  sy_config_unref(cfg);
}
END_TEST

static const char full_yaml[] =
    "workers: 4\n"
    "listeners:\n"
    "  - name: public\n"
    "    address: '*:8080'\n"
    "    offer_tls_upgrade: required\n"
    "    tls:\n"
    "      certificates: [{cert: demo.pem, key: demo.key}, {cert: demo.pem, key: demo.key}]\n"
    "      min_version: TLS1.3\n"
    "      ciphers: HIGH\n"
    "  - address: \"[::1]:8443\"\n"
    "  - address: localhost:8081\n"
    "admin: {address: 127.0.0.1:9901}\n"
    "routes:\n"
    "  - name: chat\n"
    "    match:\n"
    "      host: Chat.Example.COM\n"
    "      path_prefix: /ws\n"
    "      path: /ws/exact\n"
    "      methods: [GET, POST]\n"
    "      headers: [{name: X-Env, value: canary}, {name: X-Debug}, {name: X-Empty, value: ''}]\n"
    "      upgrade: [websocket]\n"
    "    upstream: chat\n"
    "    allow_upgrades: ['*', h2c]\n"
    "    websocket: {check_accept: true, subprotocols: [chat, superchat]}\n"
    "    require_tls: true\n"
    "    timeouts: {connect: 1s, response: 0s, tunnel_idle: 2h, tunnel_fin: 250ms}\n"
    "  - upstream: web\n"
    "    allow_upgrades: []\n"
    "    websocket: {subprotocols: []}\n"
    "upstreams:\n"
    "  web:\n"
    "    servers: [{address: 127.0.0.1:9000, weight: 2}, {address: localhost:9001}]\n"
    "  chat:\n"
    "    balance: hash(header:X-User)\n"
    "    servers:\n"
    "      - address: \"[::1]:9002\"\n"
    "    tls: {ca: demo.pem, sni: chat.internal, cert: demo.pem, key: demo.key}\n"
    "    health: {interval: 10s}\n"
    "  lc:\n"
    "    balance: least_conn\n"
    "    servers: [{address: 127.0.0.1:9003}]\n"
    "    tls: {verify: false}\n"
    "    health: {path: /healthz, interval: 1m, timeout: 500ms, healthy: 1, unhealthy: 5}\n"
    "timeouts: {connect: 2s, response: 30s, client_idle: 1m, tunnel_idle: 1d, tunnel_fin: 10s}\n"
    "limits: {max_connections: 5000, max_header_bytes: 64KiB, max_headers: 50, header_timeout: "
    "3s}\n"
    "forwarding: {x_forwarded_for: false, x_forwarded_proto: true, x_forwarded_host: false, via: "
    "false}\n"
    "access_log: /var/log/sy.log\n";

START_TEST(test_full) {
  sy_config *cfg = load_ok(full_yaml);
  ck_assert_uint_eq(cfg->workers, 4);
  ck_assert_uint_eq(cfg->nlisteners, 3);

  const sy_listener_cfg *l = &cfg->listeners[0];
  ck_assert_str_eq(l->name, "public");
  ck_assert_str_eq(l->addr.text, "*:8080");
  ck_assert_str_eq(l->addr.host, "0.0.0.0");
  ck_assert_int_eq(l->addr.sa.ss_family, AF_INET);
  const struct sockaddr_in *sin = (const void *)&l->addr.sa;
  ck_assert_uint_eq(sin->sin_addr.s_addr, htonl(INADDR_ANY));
  ck_assert_uint_eq(ntohs(sin->sin_port), 8080);
  ck_assert_int_eq(l->offer_tls_upgrade, SY_TLS_OFFER_REQUIRED);
  ck_assert_int_eq(l->tls.enabled, 1);
  ck_assert_uint_eq(l->tls.ncerts, 2);
  ck_assert_str_eq(l->tls.certs[1].cert, "demo.pem");
  ck_assert_str_eq(l->tls.certs[1].key, "demo.key");
  ck_assert_str_eq(l->tls.min_version, "TLS1.3");
  ck_assert_str_eq(l->tls.ciphers, "HIGH");

  l = &cfg->listeners[1];
  ck_assert_str_eq(l->name, "[::1]:8443");
  ck_assert_str_eq(l->addr.host, "::1");
  ck_assert_uint_eq(l->addr.port, 8443);
  ck_assert_int_eq(l->addr.sa.ss_family, AF_INET6);
  ck_assert_uint_eq(l->addr.salen, sizeof(struct sockaddr_in6));
  ck_assert_ptr_null(l->tls.min_version);
  ck_assert_str_eq(cfg->listeners[2].addr.host, "localhost");
  ck_assert_int_eq(cfg->listeners[2].addr.sa.ss_family, AF_INET);

  ck_assert_int_eq(cfg->admin_enabled, 1);
  ck_assert_str_eq(cfg->admin_addr.text, "127.0.0.1:9901");
  ck_assert_uint_eq(cfg->admin_addr.port, 9901);

  ck_assert_uint_eq(cfg->nupstreams, 3);
  const sy_upstream_cfg *web = &cfg->upstreams[0], *chat = &cfg->upstreams[1];
  ck_assert_str_eq(web->name, "web");
  ck_assert_int_eq(web->balance, SY_BALANCE_ROUND_ROBIN);
  ck_assert_ptr_null(web->hash_key);
  ck_assert_uint_eq(web->nservers, 2);
  ck_assert_uint_eq(web->servers[0].weight, 2);
  ck_assert_uint_eq(web->servers[1].weight, 1);
  ck_assert_str_eq(web->servers[1].addr.host, "localhost");
  ck_assert_uint_eq(web->servers[1].addr.port, 9001);
  ck_assert_int_eq(web->tls.enabled, 0);
  ck_assert_int_eq(web->health.enabled, 0);
  ck_assert_str_eq(chat->name, "chat");
  ck_assert_int_eq(chat->balance, SY_BALANCE_HASH);
  ck_assert_str_eq(chat->hash_key, "header:X-User");
  ck_assert_int_eq(chat->servers[0].addr.sa.ss_family, AF_INET6);
  ck_assert_int_eq(chat->tls.enabled, 1);
  ck_assert_int_eq(chat->tls.verify, 1);
  ck_assert_str_eq(chat->tls.ca, "demo.pem");
  ck_assert_str_eq(chat->tls.sni, "chat.internal");
  ck_assert_str_eq(chat->tls.cert, "demo.pem");
  ck_assert_str_eq(chat->tls.key, "demo.key");
  ck_assert_int_eq(chat->health.enabled, 1);
  ck_assert_str_eq(chat->health.path, "/");
  ck_assert_uint_eq(chat->health.interval, 10000);
  ck_assert_uint_eq(chat->health.timeout, 2000);
  ck_assert_uint_eq(chat->health.healthy, 2);
  ck_assert_uint_eq(chat->health.unhealthy, 3);
  const sy_upstream_cfg *lc = &cfg->upstreams[2];
  ck_assert_int_eq(lc->balance, SY_BALANCE_LEAST_CONN);
  ck_assert_int_eq(lc->tls.enabled, 1);
  ck_assert_int_eq(lc->tls.verify, 0);
  ck_assert_str_eq(lc->health.path, "/healthz");
  ck_assert_uint_eq(lc->health.interval, 60000);
  ck_assert_uint_eq(lc->health.timeout, 500);
  ck_assert_uint_eq(lc->health.healthy, 1);
  ck_assert_uint_eq(lc->health.unhealthy, 5);

  ck_assert_uint_eq(cfg->nroutes, 2);
  const sy_route_cfg *r = &cfg->routes[0];
  ck_assert_str_eq(r->name, "chat");
  ck_assert_uint_eq(r->index, 0);
  ck_assert_int_eq(r->line, 14);
  ck_assert_int_eq(r->column, 5);
  ck_assert_str_eq(r->host, "chat.example.com");
  ck_assert_str_eq(r->path_prefix, "/ws");
  ck_assert_str_eq(r->path, "/ws/exact");
  ck_assert_uint_eq(r->nmethods, 2);
  ck_assert_str_eq(r->methods[1], "POST");
  ck_assert_uint_eq(r->nheaders, 3);
  ck_assert_str_eq(r->headers[0].name, "X-Env");
  ck_assert_str_eq(r->headers[0].value, "canary");
  ck_assert_ptr_null(r->headers[1].value);
  ck_assert_str_eq(r->headers[2].value, "");
  ck_assert_uint_eq(r->nmatch_upgrade, 1);
  ck_assert_str_eq(r->match_upgrade[0], "websocket");
  ck_assert_str_eq(r->upstream_name, "chat");
  ck_assert_ptr_eq(r->upstream, chat);
  ck_assert_int_eq(r->allow_any_upgrade, 1);
  ck_assert_uint_eq(r->nallow_upgrades, 2);
  ck_assert_str_eq(r->allow_upgrades[0], "*");
  ck_assert_str_eq(r->allow_upgrades[1], "h2c");
  ck_assert_int_eq(r->ws_check_accept, 1);
  ck_assert_int_eq(r->ws_subprotocols_set, 1);
  ck_assert_uint_eq(r->nws_subprotocols, 2);
  ck_assert_str_eq(r->ws_subprotocols[1], "superchat");
  ck_assert_int_eq(r->require_tls, 1);
  ck_assert_uint_eq(r->timeouts.connect, 1000);
  ck_assert_uint_eq(r->timeouts.response, 0);
  ck_assert_uint_eq(r->timeouts.tunnel_idle, 7200000);
  ck_assert_uint_eq(r->timeouts.tunnel_fin, 250);
  ck_assert_uint_eq(r->timeouts.client_idle, 0);

  r = &cfg->routes[1];
  ck_assert_ptr_null(r->name);
  ck_assert_uint_eq(r->index, 1);
  ck_assert_ptr_null(r->host);
  ck_assert_ptr_eq(r->upstream, web);
  ck_assert_int_eq(r->allow_any_upgrade, 0);
  ck_assert_uint_eq(r->nallow_upgrades, 0);
  ck_assert_int_eq(r->ws_check_accept, 0);
  ck_assert_int_eq(r->ws_subprotocols_set, 1);
  ck_assert_uint_eq(r->nws_subprotocols, 0);
  ck_assert_int_eq(r->require_tls, 0);

  ck_assert_uint_eq(cfg->timeouts.connect, 2000);
  ck_assert_uint_eq(cfg->timeouts.response, 30000);
  ck_assert_uint_eq(cfg->timeouts.client_idle, 60000);
  ck_assert_uint_eq(cfg->timeouts.tunnel_idle, 86400000);
  ck_assert_uint_eq(cfg->timeouts.tunnel_fin, 10000);
  ck_assert_uint_eq(cfg->timeouts.header, 3000);
  ck_assert_uint_eq(cfg->limits.max_connections, 5000);
  ck_assert_uint_eq(cfg->limits.max_header_bytes, 65536);
  ck_assert_uint_eq(cfg->limits.max_headers, 50);
  ck_assert_int_eq(cfg->forwarding.x_forwarded_for, 0);
  ck_assert_int_eq(cfg->forwarding.x_forwarded_proto, 1);
  ck_assert_int_eq(cfg->forwarding.x_forwarded_host, 0);
  ck_assert_int_eq(cfg->forwarding.via, 0);
  ck_assert_str_eq(cfg->access_log, "/var/log/sy.log");
  sy_config_unref(cfg);
}
END_TEST

START_TEST(test_route_defaults) {
  sy_config *cfg = load_ok(L U "routes:\n  - upstream: web\n");
  const sy_route_cfg *r = &cfg->routes[0];
  ck_assert_int_eq(r->allow_any_upgrade, 1);
  ck_assert_uint_eq(r->nallow_upgrades, 0);
  ck_assert_int_eq(r->ws_subprotocols_set, 0);
  ck_assert_uint_eq(r->nmethods + r->nheaders + r->nmatch_upgrade, 0);
  ck_assert_ptr_null(r->path_prefix);
  ck_assert_ptr_null(r->path);
  ck_assert_uint_eq(r->timeouts.connect + r->timeouts.response + r->timeouts.tunnel_idle +
                        r->timeouts.tunnel_fin,
                    0);
  sy_config_unref(cfg);
}
END_TEST

/* Route paths match what clients send: long ones and UTF-8 load (only the
 * health probe's path, written into a request line, is held to 256 bytes of
 * visible ASCII). */
START_TEST(test_route_paths_are_not_health_paths) {
  sy_config *cfg = load_ok(L U "routes:\n  - upstream: web\n    match: {path_prefix: /" PATH300
                               "}\n  - upstream: web\n    match: {path: \"/caf\u00e9 menu\"}\n");
  ck_assert_uint_eq(strlen(cfg->routes[0].path_prefix), 301);
  ck_assert_str_eq(cfg->routes[1].path, "/caf\xc3\xa9 menu");
  sy_config_unref(cfg);
}
END_TEST

START_TEST(test_addresses) {
  sy_config *cfg = load_ok("listeners:\n  - address: :8080\n  - address: \"[::]:8080\"\n"
                           "  - address: 127.0.0.1:65535\n  - address: 127.0.0.2:8080\n");
  ck_assert_str_eq(cfg->listeners[0].addr.host, "0.0.0.0");
  ck_assert_str_eq(cfg->listeners[0].addr.text, ":8080");
  ck_assert_str_eq(cfg->listeners[1].addr.host, "::");
  ck_assert_int_eq(cfg->listeners[1].addr.sa.ss_family, AF_INET6);
  ck_assert_uint_eq(cfg->listeners[2].addr.port, 65535);
  sy_config_unref(cfg);
}
END_TEST

static sy_config *load_check_only(const char *yaml, sy_config_error *err) {
  return sy_config_load_string_flags("t.yaml", yaml, strlen(yaml), SY_CONFIG_NO_RESOLVE, err);
}

/* -t: a name that cannot resolve passes (no DNS at check time); a numeric
 * address is still parsed into a socket address. */
START_TEST(test_check_only_skips_dns) {
  static const char yaml[] = L "upstreams:\n  web:\n    servers:\n"
                               "      - address: nonexistent.invalid:80\n"
                               "      - address: 127.0.0.1:9000\n"
                               "      - address: \"[::1]:9001\"\n";
  sy_config_error err = {{0}};
  sy_config *cfg = load_check_only(yaml, &err);
  ck_assert_msg(cfg != NULL, "unexpected error: %s", err.msg);
  ck_assert_uint_eq(cfg->upstreams[0].servers[0].addr.salen, 0);
  ck_assert_str_eq(cfg->upstreams[0].servers[0].addr.host, "nonexistent.invalid");
  ck_assert_uint_eq(cfg->upstreams[0].servers[0].addr.port, 80);
  ck_assert_int_eq(cfg->upstreams[0].servers[1].addr.sa.ss_family, AF_INET);
  ck_assert_int_eq(cfg->upstreams[0].servers[2].addr.sa.ss_family, AF_INET6);
  sy_config_unref(cfg);
  /* Loaded to run, the name is not looked up either: the resolver does that
   * while running (an unresolvable name means 503s, not a refused file). */
  cfg = load(yaml, &err);
  ck_assert_msg(cfg != NULL, "unexpected error: %s", err.msg);
  sy_config_unref(cfg);
}
END_TEST

/* What -t still refuses without DNS: bad host names and dangling references. */
START_TEST(test_check_only_still_checks) {
  static const char *const bad[] = {
      L "upstreams:\n  web:\n    servers: [{address: 'bad host:80'}]\n",
      L "upstreams:\n  web:\n    servers: [{address: '-lead.example:80'}]\n",
      L "upstreams:\n  web:\n    servers: [{address: 'a..b:80'}]\n",
      L "upstreams:\n  web:\n    servers: [{address: 'x_y!:80'}]\n",
      L U "routes:\n  - upstream: nope\n",
      L "upstreams:\n  web:\n    servers: [{address: 'demo:0'}]\n",
  };
  static const char *const word[] = {
      "host name",   "host name", "host name", "host name", "no upstream named \"nope\"",
      "invalid port"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    sy_config_error err = {{0}};
    ck_assert_msg(load_check_only(bad[i], &err) == NULL, "case %zu accepted", i);
    ck_assert_msg(strstr(err.msg, word[i]) != NULL, "case %zu: %s", i, err.msg);
    ck_assert_msg(strncmp(err.msg, "t.yaml:", 7) == 0, "case %zu: %s", i, err.msg);
  }
  /* Names as Kubernetes and SRV records write them pass. */
  sy_config_error err = {{0}};
  sy_config *cfg = load_check_only(L "upstreams:\n  web:\n    servers:\n"
                                     "      - address: chat.default.svc.cluster.local.:9000\n"
                                     "      - address: _http._tcp.demo:9000\n",
                                   &err);
  ck_assert_msg(cfg != NULL, "unexpected error: %s", err.msg);
  sy_config_unref(cfg);
}
END_TEST

START_TEST(test_misc_values) {
  sy_config *cfg =
      load_ok(L "workers: auto\naccess_log: \"off\"\nlimits: {max_header_bytes: 1000}\n"
                "upstreams:\n  a: {balance: hash(client), servers: [{address: "
                "127.0.0.1:1}]}\n  b: {balance: 'hash(cookie:sid)', servers: "
                "[{address: 127.0.0.1:2}]}\n  c: {balance: round_robin, servers: "
                "[{address: 127.0.0.1:3}]}\n");
  ck_assert_uint_eq(cfg->workers, 0);
  ck_assert_int_eq(cfg->worker_cpu_affinity, 0); /* off unless asked */
  ck_assert_str_eq(cfg->access_log, "off");
  ck_assert_uint_eq(cfg->limits.max_header_bytes, 1000);
  ck_assert_str_eq(cfg->upstreams[0].hash_key, "client");
  ck_assert_str_eq(cfg->upstreams[1].hash_key, "cookie:sid");
  ck_assert_int_eq(cfg->upstreams[2].balance, SY_BALANCE_ROUND_ROBIN);
  sy_config_unref(cfg);
  cfg = load_ok(L "worker_cpu_affinity: auto\n");
  ck_assert_int_eq(cfg->worker_cpu_affinity, 1);
  sy_config_unref(cfg);
}
END_TEST

START_TEST(test_paths) {
  sy_config *cfg = load_ok(L "paths: {merge_slashes: false, escaped_slashes: reject}\n");
  ck_assert_int_eq(cfg->paths.normalize, 1);
  ck_assert_int_eq(cfg->paths.merge_slashes, 0);
  ck_assert_int_eq(cfg->paths.reject_escaped_slashes, 1);
  sy_config_unref(cfg);
  cfg = load_ok(L "paths: {normalize: false}\n");
  ck_assert_int_eq(cfg->paths.normalize, 0);
  sy_config_unref(cfg);
  cfg = load_ok(L "paths: {escaped_slashes: keep, normalize: true, merge_slashes: true}\n");
  ck_assert_int_eq(cfg->paths.normalize, 1);
  ck_assert_int_eq(cfg->paths.merge_slashes, 1);
  ck_assert_int_eq(cfg->paths.reject_escaped_slashes, 0);
  sy_config_unref(cfg);
}
END_TEST

START_TEST(test_ops_keys) {
  sy_config *cfg = load_ok(L "log_level: debug\nlog_format: json\n"
                             "forwarding: {request_id: true, request_id_header: X-Trace-Id}\n"
                             "admin: {address: 127.0.0.1:9901, token: 0123456789abcdef}\n");
  ck_assert_int_eq(cfg->log_level, 3);
  ck_assert_int_eq(cfg->log_format, 1);
  ck_assert_int_eq(cfg->forwarding.request_id, 1);
  ck_assert_str_eq(cfg->forwarding.request_id_header, "X-Trace-Id");
  ck_assert_str_eq(cfg->admin_token, "0123456789abcdef");
  sy_config_unref(cfg);

  /* token_file: one trailing newline is not part of the token */
  char path[] = "/tmp/sy-token-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, "fedcba9876543210xyz\n", 20), 20);
  close(fd);
  char yaml[256];
  snprintf(yaml, sizeof(yaml), L "admin: {address: 127.0.0.1:9901, token_file: %s}\n", path);
  cfg = load_ok(yaml);
  ck_assert_str_eq(cfg->admin_token, "fedcba9876543210xyz");
  sy_config_unref(cfg);
  unlink(path);
}
END_TEST

START_TEST(test_refcount) {
  sy_config *cfg = load_ok(L);
  ck_assert_ptr_eq(sy_config_ref(cfg), cfg);
  ck_assert_int_eq(cfg->refs, 2);
  sy_config_unref(cfg);
  ck_assert_int_eq(cfg->refs, 1);
  sy_config_unref(cfg);
  sy_config_unref(NULL);
  ck_assert_ptr_null(sy_config_ref(NULL));
}
END_TEST

START_TEST(test_missing_file) {
  sy_config_error err;
  ck_assert_ptr_null(sy_config_load("/nonexistent/dir/sy.yaml", &err));
  ck_assert_str_eq(err.msg, "/nonexistent/dir/sy.yaml: cannot open: No such file or directory");
}
END_TEST

START_TEST(test_file_errors_name_the_file) {
  char path[] = "/tmp/sy_cfg_XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  const char text[] = "listeners:\n  - address: 127.0.0.1:80\n    bogus: 1\n";
  ck_assert_int_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
  close(fd);
  sy_config_error err;
  char want[128];
  snprintf(want, sizeof want, "%s:3:5: unknown key \"bogus\" in listeners[0]", path);
  ck_assert_ptr_null(sy_config_load(path, &err));
  ck_assert_str_eq(err.msg, want);
  unlink(path);
}
END_TEST

START_TEST(test_exact_message) {
  sy_config_error err;
  ck_assert_ptr_null(load(L U "routes:\n  - upstream: chta\n", &err));
  ck_assert_str_eq(err.msg, "t.yaml:7:15: routes[0].upstream: no upstream named \"chta\"");
}
END_TEST

START_TEST(test_shipped_default) {
  const char *dir = getenv("SY_SOURCE_DIR");
  ck_assert_msg(dir != NULL, "SY_SOURCE_DIR is not set (ctest sets it)");
  char path[4096];
  snprintf(path, sizeof path, "%s/config/switchyard.yaml", dir);
  sy_config_error err;
  sy_config *cfg = sy_config_load(path, &err);
  ck_assert_msg(cfg != NULL, "%s", err.msg);
  ck_assert_uint_eq(cfg->nlisteners, 1);
  ck_assert_str_eq(cfg->listeners[0].name, "public");
  ck_assert_str_eq(cfg->listeners[0].addr.text, "127.0.0.1:8080");
  ck_assert_int_eq(cfg->admin_enabled, 1); /* the status page, on loopback only */
  ck_assert_str_eq(cfg->admin_addr.text, "127.0.0.1:9901");
  ck_assert_uint_eq(cfg->nupstreams, 1);
  ck_assert_str_eq(cfg->upstreams[0].name, "demo");
  ck_assert_str_eq(cfg->upstreams[0].servers[0].addr.text, "127.0.0.1:9000");
  ck_assert_uint_eq(cfg->nroutes, 2);
  ck_assert_str_eq(cfg->routes[0].name, "ws");
  ck_assert_str_eq(cfg->routes[0].path_prefix, "/ws");
  ck_assert_uint_eq(cfg->routes[0].nmatch_upgrade, 1);
  ck_assert_str_eq(cfg->routes[0].match_upgrade[0], "websocket");
  ck_assert_int_eq(cfg->routes[0].ws_check_accept, 1);
  ck_assert_ptr_eq(cfg->routes[0].upstream, &cfg->upstreams[0]);
  ck_assert_ptr_null(cfg->routes[1].path_prefix);
  ck_assert_uint_eq(cfg->routes[1].nmatch_upgrade, 0);
  ck_assert_ptr_eq(cfg->routes[1].upstream, &cfg->upstreams[0]);
  sy_config_unref(cfg);
}
END_TEST

static int is_yaml(const char *name) {
  size_t n = strlen(name);
  return n > 5 && strcmp(name + n - 5, ".yaml") == 0;
}

START_TEST(test_all_shipped_configs_load) {
  const char *src = getenv("SY_SOURCE_DIR");
  ck_assert_msg(src != NULL, "SY_SOURCE_DIR is not set (ctest sets it)");
  char dirpath[4096], path[4400];
  snprintf(dirpath, sizeof dirpath, "%s/config", src);
  DIR *d = opendir(dirpath);
  ck_assert_msg(d != NULL, "cannot open %s", dirpath);
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (!is_yaml(e->d_name)) continue;
    snprintf(path, sizeof path, "%s/%s", dirpath, e->d_name);
    sy_config_error err;
    sy_config *cfg = sy_config_load(path, &err);
    ck_assert_msg(cfg != NULL, "%s", err.msg);
    sy_config_unref(cfg);
    n++;
  }
  closedir(d);
  ck_assert_int_ge(n, 2); /* switchyard.yaml and examples.yaml at least */
}
END_TEST

START_TEST(test_proxy_protocol_keys) {
  static const char *const modes[] = {"off", "v1", "v2", "any"};
  for (unsigned i = 0; i < 4; i++) {
    char yaml[512];
    snprintf(yaml, sizeof yaml,
             "listeners:\n  - address: 127.0.0.1:80\n    proxy_protocol: %s\n"
             "upstreams:\n  a:\n    servers: [{address: 127.0.0.1:1}]\n    send_proxy: %s\n"
             "  b:\n    servers: [{address: 127.0.0.1:2}]\n",
             modes[i], i < 3 ? modes[i] : "v2");
    sy_config *cfg = load_ok(yaml);
    ck_assert_uint_eq(cfg->listeners[0].proxy_protocol, i);
    ck_assert_uint_eq(cfg->upstreams[0].send_proxy, i < 3 ? i : SY_PP_V2);
    ck_assert_uint_eq(cfg->upstreams[1].send_proxy, 0);
    sy_config_unref(cfg);
  }
  ck_assert_uint_eq(SY_PP_V1 | SY_PP_V2, 3);
}
END_TEST

static Suite *config_suite(void) {
  Suite *s = suite_create("config");
  TCase *tc = tcase_create("errors");
  tcase_add_loop_test(tc, test_errors, 0, (int)(sizeof errors / sizeof errors[0]));
  suite_add_tcase(s, tc);
  tc = tcase_create("values");
  tcase_add_test(tc, test_defaults);
  tcase_add_test(tc, test_full);
  tcase_add_test(tc, test_route_defaults);
  tcase_add_test(tc, test_route_paths_are_not_health_paths);
  tcase_add_test(tc, test_addresses);
  tcase_add_test(tc, test_misc_values);
  tcase_add_test(tc, test_paths);
  tcase_add_test(tc, test_check_only_skips_dns);
  tcase_add_test(tc, test_check_only_still_checks);
  tcase_add_test(tc, test_refcount);
  tcase_add_test(tc, test_missing_file);
  tcase_add_test(tc, test_file_errors_name_the_file);
  tcase_add_test(tc, test_exact_message);
  tcase_add_test(tc, test_ops_keys);
  tcase_add_test(tc, test_proxy_protocol_keys);
  suite_add_tcase(s, tc);
  tc = tcase_create("shipped");
  tcase_add_test(tc, test_shipped_default);
  tcase_add_test(tc, test_all_shipped_configs_load);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  /* Certificates named in the cases are the demo pair, found relative to
   * the working directory since the cases load from a string. */
  const char *src = getenv("SY_SOURCE_DIR");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/config/tls", src ? src : ".");
  if (chdir(dir) != 0) {
    perror(dir);
    return EXIT_FAILURE;
  }
  SRunner *sr = srunner_create(config_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
