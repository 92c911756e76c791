// bench/floor.py's Node peer: the same broadcast workload on Node's `net` module.
//
// Every connection gets the same 102-byte frame (a u16 big-endian length of
// 100, then 100 bytes: one Buffer, shared) every 250 ms from one setInterval;
// what a client sends is read and thrown away; a client that closes is
// dropped. TCP_NODELAY on each socket, as netcore sets it. Written as a Node
// user would write it: `socket.write` queues what the kernel does not take
// at once, so nothing is lost.
//
//     node bench/peers/broadcast.js [PORT [PERIOD_MS]]   # port 0 (default): any free port
//
// Prints "listening PORT" once ready; on SIGTERM or SIGINT prints one line of
// counters ("ticks T sends S short H accepted A": short = writes that returned
// false, Node's queue for that socket past its high-water mark) and exits 0.
// Loopback (127.0.0.1) only.
"use strict";

const net = require("net");

const port = Number(process.argv[2] || 0);
const period = Number(process.argv[3] || 250) || 250;
const PAYLOAD = 100;
const frame = Buffer.alloc(2 + PAYLOAD, "x");
frame.writeUInt16BE(PAYLOAD, 0);

const conns = new Set();
let ticks = 0;
let sends = 0;
let shorts = 0;
let accepted = 0;

const server = net.createServer({ noDelay: true }, (socket) => {
  accepted++;
  conns.add(socket);
  socket.on("data", () => {}); // drained, thrown away
  socket.on("error", () => {}); // a reset: 'close' follows
  socket.on("close", () => conns.delete(socket));
});
server.maxConnections = 1 << 20;

setInterval(() => {
  ticks++;
  for (const socket of conns) {
    sends++;
    if (!socket.write(frame)) shorts++; // queued past the socket's high-water mark
  }
}, period);

function stop() {
  process.stdout.write(`ticks ${ticks} sends ${sends} short ${shorts} accepted ${accepted}\n`,
    () => process.exit(0));
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

server.listen({ port, host: "127.0.0.1", backlog: 4096 }, () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
