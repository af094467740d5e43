#!/usr/bin/env node
// A WebSocket echo server built on node's `ws` package, used as the backend
// behind Switchyard by tests/integration/test_interop_ws.py.
//
//   node ws_server.js [--deflate] [--protocols a,b] [--greet] [--reject STATUS]
//
// --greet: send "welcome" right after the handshake, so the first frame may
// share a TCP segment with the 101. --reject STATUS: refuse every handshake
// with that HTTP status (verifyClient).
//
// Listens on 127.0.0.1, port chosen by the kernel, and prints one JSON line
// {"event":"listening","port":N} on stdout. Every later event is a JSON line too
// (connection with the request head the backend saw, close with code/reason).
// It exits when its stdin closes (the test process went away) or on SIGTERM,
// so it can never outlive the test that started it.
//
// Messages: anything is echoed back with the same type, except text messages
// that start with "cmd:":
//   cmd:info              -> JSON {headers, protocol, extensions, bytesRead}
//   cmd:ping:PAYLOAD      -> the server pings with PAYLOAD, then sends
//                            "pong:PAYLOAD" once the client's pong arrives
//   cmd:close:CODE:REASON -> the server closes with CODE and REASON
'use strict';

const { WebSocketServer } = require('ws');

const args = process.argv.slice(2);
const deflate = args.includes('--deflate');
const pi = args.indexOf('--protocols');
const protocols = pi >= 0 ? args[pi + 1].split(',') : null;
const greet = args.includes('--greet');
const ri = args.indexOf('--reject');
const rejectStatus = ri >= 0 ? Number(args[ri + 1]) : 0;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  maxPayload: 64 * 1024 * 1024,
  // threshold 0: every message is compressed when the extension is negotiated.
  perMessageDeflate: deflate ? { threshold: 0 } : false,
  verifyClient: rejectStatus
    ? (info, cb) => {
        emit({ event: 'rejected', url: info.req.url, rawHeaders: info.req.rawHeaders });
        cb(false, rejectStatus, 'refused by test server', { 'X-Test': 'rejected' });
      }
    : undefined,
  handleProtocols: protocols
    ? (offered /* Set */) => {
        for (const p of protocols) if (offered.has(p)) return p;
        return false;
      }
    : undefined,
});

wss.on('listening', () => emit({ event: 'listening', port: wss.address().port }));
wss.on('error', (e) => {
  emit({ event: 'error', message: String(e) });
  process.exit(3);
});

let nconn = 0;
wss.on('connection', (ws, req) => {
  const id = ++nconn;
  const sock = req.socket;
  emit({
    event: 'connection',
    id,
    url: req.url,
    rawHeaders: req.rawHeaders,
    protocol: ws.protocol,
    extensions: ws.extensions,
  });
  if (greet) ws.send('welcome');
  const pendingPings = [];
  ws.on('pong', (data) => {
    const want = pendingPings.shift();
    ws.send('pong:' + data.toString() + (want === data.toString() ? '' : ':MISMATCH'));
  });
  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      const text = data.toString();
      if (text.startsWith('cmd:')) {
        const parts = text.split(':');
        if (parts[1] === 'info') {
          ws.send(JSON.stringify({
            rawHeaders: req.rawHeaders,
            protocol: ws.protocol,
            extensions: ws.extensions,
            bytesRead: sock.bytesRead,
            bytesWritten: sock.bytesWritten,
          }));
        } else if (parts[1] === 'ping') {
          const payload = parts.slice(2).join(':');
          pendingPings.push(payload);
          ws.ping(payload);
        } else if (parts[1] === 'close') {
          ws.close(Number(parts[2]), parts.slice(3).join(':'));
        } else {
          ws.send('unknown command');
        }
        return;
      }
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code, reason) => {
    emit({ event: 'close', id, code, reason: reason.toString(), bytesRead: sock.bytesRead });
  });
  ws.on('error', (e) => emit({ event: 'ws-error', id, message: String(e) }));
});

function shutdown() {
  for (const c of wss.clients) c.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.stdin.on('end', shutdown);
process.stdin.on('error', shutdown);
process.stdin.resume();
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
