#!/usr/bin/env node
// A WebSocket client built on node's `ws` package, driven by
// tests/integration/test_interop_ws.py.
//
//   node ws_client.js URL SCENARIO [JSON-OPTIONS]
//
// Runs one scenario against URL and prints one JSON line with what it observed
// (the Python test makes the assertions). Exit status 0 when the scenario ran to
// its end, 2 on a failure or on the overall deadline (the JSON then has "error").
//
// Scenarios:
//   echo          text, UTF-8 text, 1 MiB random binary, client ping -> pong,
//                 and with {"serverCmds":true} a server ping -> client pong
//   close         the client closes with opts.code / opts.reason
//   server-close  the server closes (needs serverCmds) with opts.code / opts.reason
//   deflate       offers permessage-deflate, sends compressible text + binary
//   protocols     offers opts.protocols, reports the chosen one
//   many          opts.connections concurrent WebSockets, opts.messages each
//   handshake     only opens (or fails to open) and reports the response
'use strict';

const crypto = require('crypto');
const WebSocket = require('ws');

const [url, scenario, optsJson] = process.argv.slice(2);
const opts = optsJson ? JSON.parse(optsJson) : {};
const DEADLINE_MS = opts.deadlineMs || 20000;

const report = { scenario, url };

function done(code) {
  process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(code));
}

const overall = setTimeout(() => {
  report.error = 'deadline of ' + DEADLINE_MS + ' ms passed in step: ' + report.step;
  done(2);
}, DEADLINE_MS);

const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');

// Opens a WebSocket; resolves with a small wrapper once open. The wrapper
// queues messages so steps can `await next()` them in order.
function open(wsOptions, protocols) {
  return new Promise((resolve, reject) => {
    const ws = protocols ? new WebSocket(url, protocols, wsOptions) : new WebSocket(url, wsOptions);
    const w = { ws, queue: [], waiters: [], pongs: [], pingsReceived: [], closeInfo: null, sock: null };
    w.closed = new Promise((res) => {
      ws.on('close', (code, reason) => {
        w.closeInfo = { code, reason: reason.toString() };
        res(w.closeInfo);
        for (const wt of w.waiters.splice(0)) wt.reject(new Error('closed ' + code + ' while waiting for a message'));
      });
    });
    ws.on('upgrade', (res) => {
      w.sock = res.socket;
      report.upgradeStatus = res.statusCode;
      report.upgradeHeaders = res.rawHeaders;
    });
    ws.on('unexpected-response', (req, res) => {
      const body = [];
      res.on('data', (d) => body.push(d));
      res.on('end', () => {
        report.unexpectedResponse = {
          status: res.statusCode,
          rawHeaders: res.rawHeaders,
          body: Buffer.concat(body).toString(),
        };
        reject(new Error('unexpected response ' + res.statusCode));
      });
      res.on('error', () => reject(new Error('unexpected response ' + res.statusCode)));
    });
    ws.on('error', (e) => {
      report.wsErrors = (report.wsErrors || []).concat(String(e));
      reject(e);
    });
    ws.on('message', (data, isBinary) => {
      const m = { data, isBinary };
      const wt = w.waiters.shift();
      if (wt) wt.resolve(m);
      else w.queue.push(m);
    });
    ws.on('pong', (d) => w.pongs.push(d.toString()));
    ws.on('ping', (d) => w.pingsReceived.push(d.toString()));
    w.next = () => (w.queue.length ? Promise.resolve(w.queue.shift())
      : new Promise((res2, rej2) => w.waiters.push({ resolve: res2, reject: rej2 })));
    ws.on('open', () => resolve(w));
  });
}

function waitFor(pred, what) {
  // Resolved from event handlers; polled with setImmediate/short timers, bounded
  // by the overall deadline.
  return new Promise((resolve) => {
    const tick = () => (pred() ? resolve() : setTimeout(tick, 5));
    report.step = 'waiting for ' + what;
    tick();
  });
}

async function echoRoundTrip(w, payload, binary, label) {
  report.step = 'echo ' + label;
  w.ws.send(payload, { binary });
  const m = await w.next();
  return {
    sentLen: Buffer.byteLength(payload),
    gotLen: m.data.length,
    isBinary: m.isBinary,
    equal: Buffer.compare(Buffer.from(payload), m.data) === 0,
    sentSha: sha(Buffer.from(payload)),
    gotSha: sha(m.data),
  };
}

async function cmd(w, text) {
  report.step = 'command ' + text;
  w.ws.send(text);
  const m = await w.next();
  return m.data.toString();
}

const scenarios = {
  async echo() {
    const w = await open({ perMessageDeflate: false });
    report.extensions = w.ws.extensions;
    report.protocol = w.ws.protocol;
    if (opts.greet) {
      report.step = 'greeting';
      report.greeting = (await w.next()).data.toString();
    }
    report.text = await echoRoundTrip(w, 'hello switchyard', false, 'text');
    report.utf8 = await echoRoundTrip(w, 'gr\u00fc\u00dfe \u2603 \ud83d\ude80', false, 'utf8');
    report.binary = await echoRoundTrip(w, crypto.randomBytes(1024 * 1024), true, 'binary 1 MiB');
    report.step = 'client ping';
    w.ws.ping('client-ping-1');
    await waitFor(() => w.pongs.length >= 1, 'pong');
    report.pongs = w.pongs.slice();
    if (opts.serverCmds) {
      const reply = await cmd(w, 'cmd:ping:server-ping-1');
      report.serverPing = { reply, pingsReceived: w.pingsReceived.slice() };
    }
    // Messages after the large one still flow in order.
    report.after = await echoRoundTrip(w, 'still here', false, 'after');
    report.step = 'normal close';
    w.ws.close(1000, 'done');
    report.close = await w.closed;
  },

  async close() {
    const w = await open({ perMessageDeflate: false });
    report.text = await echoRoundTrip(w, 'before close', false, 'text');
    report.step = 'client close';
    w.ws.close(opts.code, opts.reason);
    report.close = await w.closed;
  },

  async 'server-close'() {
    const w = await open({ perMessageDeflate: false });
    report.step = 'server close';
    w.ws.send('cmd:close:' + opts.code + ':' + opts.reason);
    report.close = await w.closed;
  },

  async deflate() {
    const w = await open({ perMessageDeflate: { threshold: 0 } });
    report.extensions = w.ws.extensions;
    const text = 'switchyard permessage-deflate '.repeat(16 * 1024); // ~480 KiB, compressible
    const bin = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < bin.length; i++) bin[i] = i % 251 < 128 ? 0x5a : i % 7;
    const before = { read: w.sock.bytesRead, written: w.sock.bytesWritten };
    report.text = await echoRoundTrip(w, text, false, 'compressible text');
    report.binary = await echoRoundTrip(w, bin, true, 'compressible binary');
    report.small = await echoRoundTrip(w, 'hi', false, 'small text');
    report.wire = {
      payloadBytesEachWay: Buffer.byteLength(text) + bin.length + 2,
      clientWrote: w.sock.bytesWritten - before.written,
      clientRead: w.sock.bytesRead - before.read,
    };
    if (opts.serverCmds) report.server = JSON.parse(await cmd(w, 'cmd:info'));
    report.step = 'normal close';
    w.ws.close(1000);
    report.close = await w.closed;
  },

  async protocols() {
    const w = await open({ perMessageDeflate: false }, opts.protocols);
    report.protocol = w.ws.protocol;
    if (opts.serverCmds) report.server = JSON.parse(await cmd(w, 'cmd:info'));
    w.ws.close(1000);
    report.close = await w.closed;
  },

  async many() {
    // opts.connections WebSockets at once, each with opts.messages messages of
    // random sizes (up to opts.maxSize bytes) in flight together; every echo
    // is checked in order on its own connection.
    const n = opts.connections || 20;
    const k = opts.messages || 20;
    const maxSize = opts.maxSize || 65536;
    report.step = 'opening ' + n + ' connections';
    const conns = await Promise.all(Array.from({ length: n }, () => open({ perMessageDeflate: false })));
    report.step = 'echoing on ' + n + ' connections';
    const results = await Promise.all(conns.map(async (w, ci) => {
      const sent = [];
      for (let i = 0; i < k; i++) {
        const size = i === 0 ? 0 : crypto.randomInt(1, maxSize + 1);
        const binary = i % 2 === 0;
        // text messages must be valid UTF-8: base64 of random bytes, cut to size
        const buf = binary ? crypto.randomBytes(size)
          : Buffer.from(crypto.randomBytes(size).toString('base64').slice(0, size));
        sent.push(buf);
        w.ws.send(buf, { binary });
      }
      let bad = 0;
      for (let i = 0; i < k; i++) {
        const m = await w.next();
        if (Buffer.compare(m.data, sent[i]) !== 0 || m.isBinary !== (i % 2 === 0)) bad++;
      }
      w.ws.close(1000, 'conn ' + ci);
      const c = await w.closed;
      return { bad, close: c };
    }));
    report.connections = n;
    report.mismatched = results.reduce((a, r) => a + r.bad, 0);
    report.closes = results.map((r) => r.close.code + ':' + r.close.reason);
  },

  async handshake() {
    // Reports the handshake outcome (101 or report.unexpectedResponse) without
    // treating a refusal as a failure of the scenario.
    try {
      const w = await open({ perMessageDeflate: false }, opts.protocols);
      report.protocol = w.ws.protocol;
      w.ws.close(1000);
      report.close = await w.closed;
    } catch (e) {
      if (!report.unexpectedResponse) throw e;
    }
  },
};

(async () => {
  const fn = scenarios[scenario];
  if (!fn) {
    report.error = 'unknown scenario ' + scenario;
    return done(2);
  }
  try {
    await fn();
    clearTimeout(overall);
    report.ok = true;
    done(0);
  } catch (e) {
    clearTimeout(overall);
    report.error = String(e && e.stack ? e.stack : e);
    done(2);
  }
})();
