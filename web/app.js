// SpellTraction browser client: protocol v2 (docs/PROTOCOL.md) over WebSocket.
// The resume token lives in localStorage: a reload (or a blink of Wi-Fi) is the
// same player, with the same letters and score.
// Plain JS and a canvas; no build step, nothing loaded from elsewhere.
"use strict";

(function () {
  // ---------------------------------------------------------------------------
  // Protocol
  // ---------------------------------------------------------------------------
  const PROTOCOL_VERSION = 2;
  const HELLO = 0x01, MOVE = 0x02;
  const WELCOME = 0x81, TICK = 0x82, SCORED = 0x83, YOU = 0x84, STATS = 0x85, FAME = 0x86,
        ERROR = 0x8f;
  const ERR = { VERSION: 1, BAD_MESSAGE: 2, SERVER_FULL: 3, SHUTDOWN: 4, FLOOD: 5,
                HELLO_TIMEOUT: 6, BAD_FRAME: 7, TAKEN_OVER: 8, BAD_NAME: 9 };
  const RESUMED = 1, TOKEN_UNKNOWN = 2;  // WELCOME v2: how we came in
  const TOKEN_KEY = "spelltraction.token", NAME_KEY = "spelltraction.name";
  const PARKED = 0xff;
  const PAUSED_P99 = 0xffffffff;  // STATS' tick-lateness field while the world is paused (v2)
  const SHAPES = ["circle", "square", "triangle", "diamond"];
  const MOVE_BUCKET = 4;          // the server's per-player move allowance
  const FORGET_AFTER_MS = 120000; // drop markers not seen moving for this long

  // One u16-length-prefixed frame; a WebSocket message holds whole frames.
  function framed(bytes) {
    const out = new Uint8Array(2 + bytes.length);
    out[0] = bytes.length >> 8;
    out[1] = bytes.length & 0xff;
    out.set(bytes, 2);
    return out;
  }

  // Version 1: 8 bytes. Version 2: + the 16-byte resume token (zeros: none) and a name.
  function helloFrame(version, token, name) {
    const nameBytes = new TextEncoder().encode(name || "");
    const b = new Uint8Array(version >= 2 ? 25 + nameBytes.length : 8);
    const v = new DataView(b.buffer);
    v.setUint8(0, HELLO);
    v.setUint16(1, version);
    v.setUint8(3, 0xff);          // shape: server's choice
    v.setUint32(4, 0xffffffff);   // colour: server's choice
    if (version >= 2) {
      if (token && token.length === 16) b.set(token, 8);
      v.setUint8(24, nameBytes.length);
      b.set(nameBytes, 25);
    }
    return framed(b);
  }

  const toHex = (bytes) => Array.from(bytes, (x) => x.toString(16).padStart(2, "0")).join("");
  function fromHex(text) {
    if (!/^[0-9a-f]{32}$/.test(text || "")) return null;
    const out = new Uint8Array(16);
    for (let i = 0; i < 16; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
    return out;
  }
  // localStorage may be missing or refuse (private modes): play on without it.
  function stored(key) { try { return localStorage.getItem(key); } catch (e) { return null; } }
  function store(key, value) { try { localStorage.setItem(key, value); } catch (e) { /* ok */ } }

  function moveFrame(seq, x, y) {
    const b = new Uint8Array(7);
    const v = new DataView(b.buffer);
    v.setUint8(0, MOVE);
    v.setUint16(1, seq);
    v.setUint16(3, x);
    v.setUint16(5, y);
    return framed(b);
  }

  const ascii = (view, start, n) => {
    let s = "";
    for (let i = 0; i < n; i++) s += String.fromCharCode(view.getUint8(start + i));
    return s;
  };

  function decode(view) {
    const type = view.getUint8(0);
    switch (type) {
      case WELCOME: {
        const m = { type, version: view.getUint16(1), id: view.getUint32(3), shape: view.getUint8(7),
                    colour: view.getUint32(8), tickMs: view.getUint16(12), cols: view.getUint8(14),
                    rows: view.getUint8(15), cellPx: view.getUint16(16), holdTicks: view.getUint8(18),
                    statsEvery: view.getUint8(19), maxMovers: view.getUint8(20),
                    resumed: 0, token: null };
        if (m.version >= 2 && view.byteLength >= 38) {
          m.resumed = view.getUint8(21);
          m.token = new Uint8Array(view.buffer, view.byteOffset + 22, 16).slice();
        }
        return m;
      }
      case FAME: {
        const m = { type, entries: [] };
        let p = 2;
        for (let i = 0, n = view.getUint8(1); i < n && p + 9 <= view.byteLength; i++) {
          const id = view.getUint32(p), score = view.getUint32(p + 4), len = view.getUint8(p + 8);
          const name = new TextDecoder().decode(new Uint8Array(view.buffer, view.byteOffset + p + 9, len));
          m.entries.push({ id, score, name });
          p += 9 + len;
        }
        return m;
      }
      case TICK: {
        const m = { type, number: view.getUint32(1), attractor: view.getUint8(5),
                    held: view.getUint8(6), board: ascii(view, 7, 12), players: view.getUint32(19),
                    counts: [], movers: [], gone: [] };
        for (let i = 0; i < 12; i++) m.counts.push(view.getUint32(23 + 4 * i));
        const nm = view.getUint8(71);
        let p = 72;
        for (let i = 0; i < nm; i++, p += 12) {
          m.movers.push({ id: view.getUint32(p), x: view.getUint16(p + 4), y: view.getUint16(p + 6),
                          shape: view.getUint8(p + 8),
                          colour: (view.getUint8(p + 9) << 16) | (view.getUint8(p + 10) << 8) |
                                  view.getUint8(p + 11) });
        }
        const ng = view.getUint8(p);
        p += 1;
        for (let i = 0; i < ng; i++, p += 4) m.gone.push(view.getUint32(p));
        return m;
      }
      case SCORED:
        return { type, cell: view.getUint8(1), old: String.fromCharCode(view.getUint8(2)),
                 fresh: String.fromCharCode(view.getUint8(3)), scorers: view.getUint32(4) };
      case YOU:
        return { type, seq: view.getUint16(1), x: view.getUint16(3), y: view.getUint16(5),
                 score: view.getUint32(7), letters: ascii(view, 11, 3) };
      case STATS:
        return { type, connections: view.getUint32(1), players: view.getUint32(5),
                 uptime: view.getUint32(9), rssKb: view.getUint32(13),
                 startRssKb: view.getUint32(17), tickP99Us: view.getUint32(21) };
      case ERROR: {
        const bytes = new Uint8Array(view.buffer, view.byteOffset + 2, view.byteLength - 2);
        return { type, code: view.getUint8(1), text: new TextDecoder().decode(bytes) };
      }
      default:
        return { type };
    }
  }

  // ---------------------------------------------------------------------------
  // State (exposed on window for people curious in the console, and for tests)
  // ---------------------------------------------------------------------------
  const params = new URLSearchParams(location.search);
  const state = {
    status: "connecting",      // connecting | playing | waiting | error
    statusText: "",
    id: 0, shape: 0, colour: 0xffffff,
    tickMs: 250, holdTicks: 20, cols: 4, rows: 3, cellPx: 117,
    board: "", counts: new Array(12).fill(0), players: 0,
    attractor: PARKED, held: 0, tick: 0, ticksSeen: 0,
    me: null,                  // {x, y, dx, dy, score, letters, seq}
    others: new Map(),         // id -> {x, y, dx, dy, shape, colour, seen}
    stats: null,
    lastScored: null,
    drawnLetters: "",          // what the last frame drew, cell 0 first
    moves: { sent: 0, seq: 0, tokens: MOVE_BUCKET, queued: null },
    error: null,
    resumed: false,            // this session came back as the player we were
    fame: [],                  // the hall of fame: [{id, score, name}], best first
    elsewhere: false,          // a newer tab (or device) took our player over
    paused: false,             // v2: the world's server is away; a STATS said so, no TICK since
  };
  window.spelltraction = { state, version: PROTOCOL_VERSION };

  // ---------------------------------------------------------------------------
  // Connection, with reconnects that back off
  // ---------------------------------------------------------------------------
  let ws = null;
  let retryDelay = 1000;
  let retryTimer = 0;
  let stopRetrying = false;

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  function connect() {
    clearTimeout(retryTimer);
    stopRetrying = false;
    setStatus("wait", `Connecting to ${location.host}…`);
    const version = Number(params.get("protocol") || PROTOCOL_VERSION);  // ?protocol=N to test errors
    if (params.has("name")) store(NAME_KEY, params.get("name"));  // ?name=Ada: shown in the hall of fame
    const token = fromHex(stored(TOKEN_KEY));
    const name = stored(NAME_KEY) || "";
    let sock;
    try {
      sock = new WebSocket(wsUrl());
    } catch (e) {
      scheduleReconnect(`cannot connect: ${e.message}`);
      return;
    }
    ws = sock;
    sock.binaryType = "arraybuffer";
    sock.onopen = () => sock.send(helloFrame(version, token, name));
    sock.onmessage = (ev) => { if (ws === sock) receive(ev.data); };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      state.me = null;
      setPaused(false);  // the connection's status line says what happens now
      state.status = state.error && stopRetrying ? "error" : "waiting";
      if (stopRetrying) return;
      const why = state.error ? state.error.text : (ev.code === 1006 ? "connection lost" : `closed (${ev.code})`);
      scheduleReconnect(why);
    };
  }

  function scheduleReconnect(why) {
    const delay = Math.round(retryDelay * (0.8 + Math.random() * 0.4));
    retryDelay = Math.min(retryDelay * 2, 30000);
    const until = Date.now() + delay;
    const show = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      setStatus("wait", `${why}; reconnecting in ${left} s`);
      if (left > 0 && !ws) retryTimer = setTimeout(show, 250);
    };
    show();
    setTimeout(() => { if (!ws && !stopRetrying) connect(); }, delay);
  }

  function receive(buffer) {
    const view = new DataView(buffer);
    let pos = 0;
    while (pos + 2 <= view.byteLength) {
      const len = view.getUint16(pos);
      if (pos + 2 + len > view.byteLength) break;  // the server never splits a frame
      handle(decode(new DataView(buffer, pos + 2, len)));
      pos += 2 + len;
    }
  }

  function handle(m) {
    switch (m.type) {
      case WELCOME:
        Object.assign(state, { id: m.id, shape: m.shape, colour: m.colour, tickMs: m.tickMs,
                               holdTicks: m.holdTicks, cols: m.cols, rows: m.rows, cellPx: m.cellPx,
                               error: null, status: "playing" });
        state.others.clear();
        state.moves.tokens = MOVE_BUCKET;
        state.resumed = m.resumed === RESUMED;
        state.elsewhere = false;
        if (m.token) store(TOKEN_KEY, toHex(m.token));
        retryDelay = 1000;
        const colour = colourName(m.colour);
        const article = /^[aeiou]/.test(colour) ? "an" : "a";
        const again = state.resumed ? "Welcome back! " : "";
        setStatus("ok", `${again}Playing as #${m.id}, ${article} ${colour} ${SHAPES[m.shape] || "marker"}`);
        ui.whoami.textContent = `Player #${m.id} · ${SHAPES[m.shape] || "?"}`;
        break;
      case YOU: onYou(m); break;
      case TICK: onTick(m); break;
      case SCORED: onScored(m); break;
      case STATS:
        if (m.tickP99Us === PAUSED_P99) {  // v2: the world is paused (not a lateness)
          m.tickP99Us = state.stats ? state.stats.tickP99Us : 0;
          state.stats = m;
          setPaused(true);
        } else {
          state.stats = m;
        }
        renderStats();
        break;
      case FAME: state.fame = m.entries; renderFame(); break;
      case ERROR: onError(m); break;
      default: break;  // newer server, unknown message: ignore
    }
  }

  function onYou(m) {
    const me = state.me;
    const moves = state.moves;
    const lettersChanged = !me || me.letters !== m.letters;
    const scoreChanged = me && me.score !== m.score;
    if (!me) {
      state.me = { x: m.x, y: m.y, dx: m.x, dy: m.y, score: m.score, letters: m.letters, seq: m.seq };
    } else {
      me.score = m.score;
      me.letters = m.letters;
      me.seq = m.seq;
      // The server's position wins, unless a newer move of ours is on its way.
      if (m.seq === moves.seq && !moves.queued) { me.x = m.x; me.y = m.y; }
    }
    renderHand(lettersChanged && me !== null, scoreChanged);
  }

  function onTick(m) {
    if (state.paused) setPaused(false);
    const now = performance.now();
    state.tick = m.number;
    state.ticksSeen += 1;
    state.board = m.board;
    state.counts = m.counts;
    state.players = m.players;
    if (m.attractor !== state.attractor) state.attractorSince = now;
    state.attractor = m.attractor;
    state.held = m.held;
    for (const mv of m.movers) {
      if (mv.id === state.id) continue;
      const o = state.others.get(mv.id);
      if (o) { o.x = mv.x; o.y = mv.y; o.seen = now; o.shape = mv.shape; o.colour = mv.colour; }
      else state.others.set(mv.id, { x: mv.x, y: mv.y, dx: mv.x, dy: mv.y, shape: mv.shape,
                                      colour: mv.colour, seen: now, born: now });
    }
    for (const id of m.gone) state.others.delete(id);
    for (const [id, o] of state.others) if (now - o.seen > FORGET_AFTER_MS) state.others.delete(id);
    // The server refills one move per tick; mirror it so clicks are never dropped.
    const moves = state.moves;
    moves.tokens = Math.min(MOVE_BUCKET, moves.tokens + 1);
    if (moves.queued) { const q = moves.queued; moves.queued = null; sendMove(q.x, q.y); }
    renderAttractor();
    renderHand(false, false);
  }

  function onScored(m) {
    state.lastScored = { ...m, at: performance.now() };
    const mine = state.me && state.me.letters.includes(m.old);
    toast(`“${m.old}” scored for ${m.scorers} player${m.scorers === 1 ? "" : "s"}` +
          (mine ? " — including you!" : ""));
  }

  function onError(m) {
    state.error = m;
    if (m.code === ERR.TAKEN_OVER) {
      // Another tab (or device) resumed our player: don't take it back by
      // ourselves, or two tabs would kick each other forever.
      stopRetrying = true;
      state.elsewhere = true;
      setStatus("error", "Playing in another tab");
      ui.retry.textContent = "Play here";
      ui.retry.hidden = false;
    } else if (m.code === ERR.VERSION || m.code === ERR.BAD_NAME) {
      stopRetrying = true;
      setStatus("error", m.text);
      ui.retry.hidden = false;
    } else {
      setStatus("error", m.text);
    }
  }

  // ---------------------------------------------------------------------------
  // Moving: optimistic, within the server's rate limit
  // ---------------------------------------------------------------------------
  function sendMove(x, y) {
    const moves = state.moves;
    const me = state.me;
    if (!ws || ws.readyState !== WebSocket.OPEN || !me) return;
    me.x = x; me.y = y;  // show it now; the YOU echo corrects it
    if (moves.tokens <= 0) { moves.queued = { x, y }; return; }
    moves.tokens -= 1;
    moves.seq = (moves.seq % 0xffff) + 1;
    moves.sent += 1;
    ws.send(moveFrame(moves.seq, x, y));
  }

  function boardPoint(ev) {
    const rect = canvas.getBoundingClientRect();
    const w = state.cols * state.cellPx, h = state.rows * state.cellPx;
    const x = Math.round(((ev.clientX - rect.left) / rect.width) * w);
    const y = Math.round(((ev.clientY - rect.top) / rect.height) * h);
    return { x: Math.max(0, Math.min(w - 1, x)), y: Math.max(0, Math.min(h - 1, y)) };
  }

  // ---------------------------------------------------------------------------
  // Drawing
  // ---------------------------------------------------------------------------
  const canvas = document.getElementById("board");
  const ctx = canvas.getContext("2d");
  const ui = {
    status: document.getElementById("status"),
    statusText: document.getElementById("status-text"),
    retry: document.getElementById("retry"),
    hand: document.getElementById("hand"),
    score: document.getElementById("score"),
    whoami: document.getElementById("whoami"),
    fame: document.getElementById("fame"),
    attractor: document.getElementById("attractor"),
    toast: document.getElementById("toast"),
    paused: document.getElementById("paused"),
    stats: {
      players: document.getElementById("st-players"), conns: document.getElementById("st-conns"),
      uptime: document.getElementById("st-uptime"), mem: document.getElementById("st-mem"),
      mem0: document.getElementById("st-mem0"),
      p99: document.getElementById("st-p99"),
    },
  };

  // A paused world keeps our socket and our place: say so over the board
  // until the next TICK; no reconnecting.
  let statusBeforePause = null;
  function setPaused(on) {
    if (state.paused === on) return;
    state.paused = on;
    ui.paused.hidden = !on;
    if (on) {
      statusBeforePause = [ui.status.className.replace("status ", ""), state.statusText];
      setStatus("wait", "Game paused: the server is restarting");
    } else if (statusBeforePause && ws) {
      setStatus(...statusBeforePause);
    }
    renderStats();
  }

  function setStatus(kind, text) {
    state.statusText = text;
    ui.status.className = "status " + kind;
    ui.statusText.textContent = text;
    if (kind !== "error") ui.retry.hidden = true;
  }

  function resize() {
    const dpr = Math.min(window.devicePixelRatio || 1, 3);
    const rect = canvas.getBoundingClientRect();
    const w = Math.max(1, Math.round(rect.width * dpr));
    const h = Math.max(1, Math.round(rect.height * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  }

  const css = (c) => "#" + (c & 0xffffff).toString(16).padStart(6, "0");
  // Crowd colour map: empty navy, through violet, to a packed hot orange.
  const HEAT = [[0, [33, 44, 76]], [0.45, [92, 62, 128]], [1, [232, 112, 48]]];
  function heatColour(h) {
    for (let k = 1; k < HEAT.length; k++) {
      const [h1, c1] = HEAT[k], [h0, c0] = HEAT[k - 1];
      if (h <= h1) {
        const t = (h - h0) / (h1 - h0);
        return c0.map((v, j) => Math.round(v + (c1[j] - v) * t));
      }
    }
    return HEAT[HEAT.length - 1][1];
  }
  function colourName(c) {
    const r = (c >> 16) & 255, g = (c >> 8) & 255, b = c & 255;
    const max = Math.max(r, g, b), min = Math.min(r, g, b);
    if (max - min < 30) return max > 180 ? "white" : max > 90 ? "grey" : "dark";
    let h = 0;
    if (max === r) h = ((g - b) / (max - min)) % 6;
    else if (max === g) h = (b - r) / (max - min) + 2;
    else h = (r - g) / (max - min) + 4;
    h = (h * 60 + 360) % 360;
    const names = [[15, "red"], [40, "orange"], [65, "yellow"], [160, "green"], [200, "cyan"],
                   [255, "blue"], [290, "purple"], [335, "pink"], [360, "red"]];
    return names.find(([lim]) => h < lim)[1];
  }

  function shapePath(shape, x, y, r) {
    ctx.beginPath();
    switch (shape) {
      case 1: ctx.rect(x - r * 0.85, y - r * 0.85, r * 1.7, r * 1.7); break;
      case 2: ctx.moveTo(x, y - r); ctx.lineTo(x + r * 0.95, y + r * 0.75);
              ctx.lineTo(x - r * 0.95, y + r * 0.75); ctx.closePath(); break;
      case 3: ctx.moveTo(x, y - r); ctx.lineTo(x + r, y); ctx.lineTo(x, y + r);
              ctx.lineTo(x - r, y); ctx.closePath(); break;
      default: ctx.arc(x, y, r, 0, Math.PI * 2);
    }
  }

  let lastFrame = performance.now();

  function draw(now) {
    const dt = Math.min(0.1, (now - lastFrame) / 1000);
    lastFrame = now;
    resize();
    const W = state.cols * state.cellPx, H = state.rows * state.cellPx, cell = state.cellPx;
    const scale = canvas.width / W;
    ctx.setTransform(scale, 0, 0, scale, 0, 0);
    ctx.clearRect(0, 0, W, H);

    const maxCount = Math.max(1, ...state.counts);
    const myLetters = state.me ? state.me.letters : "";
    let drawn = "";
    for (let i = 0; i < state.cols * state.rows; i++) {
      const cx = (i % state.cols) * cell, cy = Math.floor(i / state.cols) * cell;
      const n = state.counts[i] || 0;
      const heat = n / maxCount;
      // Tile, shaded by its crowd: cool and empty to hot and packed.
      const top = heatColour(heat), bottom = heatColour(heat * 0.85);
      const g = ctx.createLinearGradient(cx, cy, cx, cy + cell);
      g.addColorStop(0, `rgb(${top[0]}, ${top[1]}, ${top[2]})`);
      g.addColorStop(1, `rgb(${bottom[0] * 0.8}, ${bottom[1] * 0.8}, ${bottom[2] * 0.8})`);
      ctx.fillStyle = g;
      roundRect(cx + 3, cy + 3, cell - 6, cell - 6, 10);
      ctx.fill();

      const letter = state.board[i] || "";
      drawn += letter;
      const mine = letter && myLetters.includes(letter);
      if (mine) {
        ctx.strokeStyle = "rgba(255, 197, 77, 0.9)";
        ctx.lineWidth = 3;
        roundRect(cx + 4.5, cy + 4.5, cell - 9, cell - 9, 9);
        ctx.stroke();
      }
      ctx.fillStyle = mine ? "#ffd77a" : "rgba(231, 235, 247, 0.92)";
      ctx.font = `800 ${Math.round(cell * 0.56)}px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(letter, cx + cell / 2, cy + cell / 2 + 3);
    }
    state.drawnLetters = drawn;

    drawScoredFlash(now, cell);
    drawAttractor(now, cell);

    // Other players ease toward where the server last saw them. Markers
    // keep a readable size on small screens.
    const ease = 1 - Math.exp(-dt * 8);
    const grow = Math.max(1, 0.8 / (scale / (window.devicePixelRatio || 1)));
    for (const o of state.others.values()) {
      o.dx += (o.x - o.dx) * ease;
      o.dy += (o.y - o.dy) * ease;
      const fadeIn = Math.min(1, (now - o.born) / 400);
      ctx.globalAlpha = 0.9 * fadeIn;
      shapePath(o.shape, o.dx, o.dy, 7 * grow);
      ctx.fillStyle = css(o.colour);
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "rgba(10, 14, 24, 0.85)";
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    drawCounts(cell);
    drawCountdown(cell);

    // Me, on top: bigger, ringed, labelled.
    const me = state.me;
    if (me) {
      const fast = 1 - Math.exp(-dt * 16);
      me.dx += (me.x - me.dx) * fast;
      me.dy += (me.y - me.dy) * fast;
      const pulse = 1 + 0.08 * Math.sin(now / 180);
      ctx.beginPath();
      ctx.arc(me.dx, me.dy, 17 * pulse, 0, Math.PI * 2);
      ctx.fillStyle = "rgba(255, 255, 255, 0.12)";
      ctx.fill();
      shapePath(state.shape, me.dx, me.dy, 11);
      ctx.fillStyle = css(state.colour);
      ctx.fill();
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#ffffff";
      ctx.stroke();
      ctx.font = "700 12px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.textBaseline = "bottom";
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(10, 14, 24, 0.8)";
      ctx.strokeText("you", me.dx, me.dy - 16);
      ctx.fillStyle = "#ffffff";
      ctx.fillText("you", me.dx, me.dy - 16);
    }

    if (state.status !== "playing" || !ws) {
      ctx.fillStyle = "rgba(14, 19, 32, 0.55)";
      ctx.fillRect(0, 0, W, H);
      ctx.fillStyle = "#e7ebf7";
      ctx.font = "700 18px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      const why = state.elsewhere ? "Playing in another tab" : state.error && !ws ? state.error.text : null;
      ctx.fillText(why || (ws ? "Joining…" : "Not connected"),
                   W / 2, H / 2, W - 40);
    }
    requestAnimationFrame(draw);
  }

  function roundRect(x, y, w, h, r) {
    ctx.beginPath();
    ctx.moveTo(x + r, y);
    ctx.arcTo(x + w, y, x + w, y + h, r);
    ctx.arcTo(x + w, y + h, x, y + h, r);
    ctx.arcTo(x, y + h, x, y, r);
    ctx.arcTo(x, y, x + w, y, r);
    ctx.closePath();
  }

  // Crowd counts, top right of each cell, over the markers so they stay readable.
  function drawCounts(cell) {
    ctx.font = `700 ${Math.round(cell * 0.115)}px system-ui, sans-serif`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let i = 0; i < state.cols * state.rows; i++) {
      const n = state.counts[i] || 0;
      if (n <= 0) continue;
      const text = n.toLocaleString();
      const w = Math.max(22, ctx.measureText(text).width + 12), h = 20;
      const x = (i % state.cols) * cell + cell - 9 - w, y = Math.floor(i / state.cols) * cell + 9;
      ctx.fillStyle = "rgba(10, 14, 24, 0.55)";
      roundRect(x, y, w, h, 10);
      ctx.fill();
      ctx.fillStyle = "rgba(231, 235, 247, 0.95)";
      ctx.fillText(text, x + w / 2, y + h / 2 + 1);
    }
  }

  function drawAttractor(now, cell) {
    if (state.attractor === PARKED || state.held <= 0) return;
    const i = state.attractor;
    const cx = (i % state.cols) * cell + cell / 2, cy = Math.floor(i / state.cols) * cell + cell / 2;
    const goal = state.holdTicks + 1;  // scores on the 21st tick held
    const frac = Math.min(1, state.held / goal);
    const pulse = 0.5 + 0.5 * Math.sin(now / 160);
    const r = cell * 0.44;
    // Pulsing glow.
    ctx.beginPath();
    ctx.arc(cx, cy, r + 2 + 3 * pulse, 0, Math.PI * 2);
    ctx.strokeStyle = `rgba(255, 197, 77, ${0.25 + 0.35 * pulse})`;
    ctx.lineWidth = 6;
    ctx.stroke();
    // Countdown ring: fills up to scoring.
    ctx.beginPath();
    ctx.arc(cx, cy, r, -Math.PI / 2, -Math.PI / 2 + frac * Math.PI * 2);
    ctx.strokeStyle = "#ffc54d";
    ctx.lineWidth = 5;
    ctx.lineCap = "round";
    ctx.stroke();
    ctx.lineCap = "butt";
  }

  // Time left to scoring, on a pill over the markers at the cell's foot.
  function drawCountdown(cell) {
    if (state.attractor === PARKED || state.held <= 0) return;
    const i = state.attractor;
    const cx = (i % state.cols) * cell + cell / 2, cy = Math.floor(i / state.cols) * cell + cell;
    const left = Math.max(0, state.holdTicks + 1 - state.held) * state.tickMs / 1000;
    const text = `${left.toFixed(1)} s`;
    ctx.font = `800 ${Math.round(cell * 0.12)}px system-ui, sans-serif`;
    const w = ctx.measureText(text).width + 16, h = 22;
    ctx.fillStyle = "rgba(255, 197, 77, 0.95)";
    roundRect(cx - w / 2, cy - h - 10, w, h, 11);
    ctx.fill();
    ctx.fillStyle = "#2b2000";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(text, cx, cy - 10 - h / 2 + 1);
  }

  function drawScoredFlash(now, cell) {
    const s = state.lastScored;
    if (!s) return;
    const age = (now - s.at) / 900;
    if (age >= 1) return;
    const cx = (s.cell % state.cols) * cell, cy = Math.floor(s.cell / state.cols) * cell;
    ctx.fillStyle = `rgba(255, 240, 200, ${0.7 * (1 - age)})`;
    roundRect(cx + 3, cy + 3, cell - 6, cell - 6, 10);
    ctx.fill();
  }

  // ---------------------------------------------------------------------------
  // Panel
  // ---------------------------------------------------------------------------
  let shownLetters = "";
  let shownScore = -1;

  function renderHand(flash, bump) {
    const me = state.me;
    const letters = me ? me.letters : "···";
    const tiles = ui.hand.children;
    for (let k = 0; k < 3; k++) {
      const t = tiles[k];
      const ch = letters[k] || "·";
      if (t.textContent !== ch) {
        t.textContent = ch;
        if (flash && shownLetters) { t.classList.remove("flash"); void t.offsetWidth; t.classList.add("flash"); }
      }
      t.classList.toggle("onboard", !!me && state.board.includes(ch));
    }
    shownLetters = me ? letters : "";
    if (me && me.score !== shownScore) {
      ui.score.textContent = String(me.score);
      if (bump && shownScore >= 0) {
        const p = ui.score.parentElement;
        p.classList.remove("bump"); void p.offsetWidth; p.classList.add("bump");
      }
      shownScore = me.score;
    }
  }

  function renderAttractor() {
    if (state.attractor === PARKED) {
      ui.attractor.textContent = "Parked: no single biggest crowd.";
      return;
    }
    const goal = state.holdTicks + 1;
    const letter = state.board[state.attractor] || "?";
    const left = Math.max(0, goal - state.held) * state.tickMs / 1000;
    ui.attractor.innerHTML = "";
    const strong = document.createElement("strong");
    strong.textContent = letter;
    ui.attractor.append("On ", strong, ` (${state.held}/${goal}): scores in ${left.toFixed(1)} s`);
  }

  function renderStats() {
    const s = state.stats;
    if (!s) return;
    const mb = (kb) => (kb / 1024).toFixed(1) + " MB";
    ui.stats.players.textContent = s.players.toLocaleString();
    ui.stats.conns.textContent = s.connections.toLocaleString();
    ui.stats.uptime.textContent = duration(s.uptime);
    ui.stats.mem.textContent = mb(s.rssKb);
    ui.stats.mem0.textContent = mb(s.startRssKb);
    ui.stats.p99.textContent = state.paused ? "paused" : (s.tickP99Us / 1000).toFixed(1) + " ms";
  }

  function renderFame() {
    const list = ui.fame;
    if (!list) return;
    list.textContent = "";
    if (!state.fame.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No scores yet.";
      list.append(li);
      return;
    }
    for (const e of state.fame) {
      const li = document.createElement("li");
      if (e.id === state.id) li.className = "me";
      const who = document.createElement("span");
      who.textContent = e.name || `#${e.id}`;
      const score = document.createElement("strong");
      score.textContent = String(e.score);
      li.append(who, score);
      list.append(li);
    }
  }

  function duration(sec) {
    const d = Math.floor(sec / 86400), h = Math.floor(sec / 3600) % 24, m = Math.floor(sec / 60) % 60;
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${m} min`;
    if (m) return `${m} min ${sec % 60} s`;
    return `${sec} s`;
  }

  let toastTimer = 0;
  function toast(text) {
    ui.toast.hidden = true;
    void ui.toast.offsetWidth;
    ui.toast.textContent = text;
    ui.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 3200);
  }

  // ---------------------------------------------------------------------------
  // Start
  // ---------------------------------------------------------------------------
  canvas.addEventListener("pointerdown", (ev) => {
    ev.preventDefault();
    const p = boardPoint(ev);
    sendMove(p.x, p.y);
  });
  ui.retry.addEventListener("click", () => {
    retryDelay = 1000;
    state.error = null;
    state.elsewhere = false;
    ui.retry.textContent = "Try again";
    connect();
  });
  window.addEventListener("resize", resize);
  document.addEventListener("visibilitychange", () => {
    // Reconnect at once when a tab that lost its connection comes back.
    if (!document.hidden && !ws && !stopRetrying) { retryDelay = 1000; connect(); }
  });
  connect();
  requestAnimationFrame(draw);
})();
