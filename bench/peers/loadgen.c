/* loadgen.c: SpellTraction players in C, for benches where Python bots cannot
 * make the load (every player moving every tick at 15,000 players needs more
 * than the one core the bots get).
 *
 * Speaks what `spelltraction.py bots` speaks over TCP (protocol 1): HELLO,
 * then a MOVE every --move-every seconds at a random phase per player, and
 * reads everything the server sends. Prints a "ramp:" line once the players
 * are in, holds --duration seconds, then one JSON line with the keys of
 * `bots --json` that bench/capacity.py reads. Move latency is move -> the
 * YOU that echoes its seq, for every move (the Python bots time probes only).
 *
 * Build: cc -O2 -o loadgen loadgen.c   (bench/capacity.py --load c does it)
 * Run:   ./loadgen --host 127.0.0.1 --port 12150 --count 15000 --duration 10
 * Linux only (epoll). One process: --count must fit the open-files limit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HELLO 0x01
#define MOVE 0x02
#define WELCOME 0x81
#define TICK 0x82
#define YOU 0x84
#define BOARD_W 468
#define BOARD_H 351
#define HIST_BINS 5000 /* ms */
#define BUF 8192

enum { CONNECTING, HELLO_SENT, PLAYING, DONE };

typedef struct {
    int fd;
    int state;
    uint32_t ticks, first_tick, last_tick; /* during the hold */
    double last_at;                        /* when its last TICK came */
    double move_at;                        /* next move */
    uint16_t seq;                          /* of its last move */
    double sent_at;                        /* of its last move, 0 once echoed */
    int held;                              /* bytes of a partial frame in buf */
    unsigned char *buf;
} Bot;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static double uniform(void) { /* xorshift64* in [0, 1) */
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    return ((rng * 2685821657736338717ULL) >> 11) * (1.0 / 9007199254740992.0);
}

static uint64_t interval_hist[HIST_BINS + 1], latency_hist[HIST_BINS + 1];

static double pct(const uint64_t *hist, double p) {
    uint64_t total = 0, seen = 0;
    for (int i = 0; i <= HIST_BINS; i++) total += hist[i];
    if (!total) return -1;
    for (int i = 0; i <= HIST_BINS; i++) {
        seen += hist[i];
        if (seen >= p / 100.0 * total) return i;
    }
    return HIST_BINS;
}

static Bot *bots;
static int count, connected, failed, dropped, epfd;
static long long frames, bytes_in, moves_sent, latency_samples;
static double hold_start = 1e300;

/* The players' next moves: a binary min-heap of bot indices by move_at. */
static int *heap, heap_len;

static void heap_push(int i) {
    int k = heap_len++;
    while (k > 0) {
        int parent = (k - 1) / 2;
        if (bots[heap[parent]].move_at <= bots[i].move_at) break;
        heap[k] = heap[parent];
        k = parent;
    }
    heap[k] = i;
}

static int heap_pop(void) {
    int top = heap[0], last = heap[--heap_len], k = 0;
    for (;;) {
        int c = 2 * k + 1;
        if (c >= heap_len) break;
        if (c + 1 < heap_len && bots[heap[c + 1]].move_at < bots[heap[c]].move_at) c++;
        if (bots[last].move_at <= bots[heap[c]].move_at) break;
        heap[k] = heap[c];
        k = c;
    }
    if (heap_len) heap[k] = last;
    return top;
}

static void drop(Bot *b, int was_playing) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, b->fd, NULL);
    close(b->fd);
    b->fd = -1;
    if (was_playing) { connected--; dropped++; } else failed++;
    b->state = DONE;
}

static void on_frame(Bot *b, const unsigned char *p, int len, double t) {
    frames++;
    if (p[0] == TICK && len >= 5) {
        uint32_t n = (uint32_t)p[1] << 24 | p[2] << 16 | p[3] << 8 | p[4];
        if (t >= hold_start) {
            if (!b->ticks) b->first_tick = n;
            else {
                int ms = (int)((t - b->last_at) * 1000);
                interval_hist[ms < HIST_BINS ? ms : HIST_BINS]++;
            }
            b->ticks++;
            b->last_tick = n;
        }
        b->last_at = t;
    } else if (p[0] == YOU && len >= 3) {
        uint16_t seq = (uint16_t)(p[1] << 8 | p[2]);
        if (b->sent_at > 0 && seq == b->seq) {
            if (t >= hold_start) {
                int ms = (int)((t - b->sent_at) * 1000);
                latency_hist[ms < HIST_BINS ? ms : HIST_BINS]++;
                latency_samples++;
            }
            b->sent_at = 0;
        }
    } else if (p[0] == WELCOME && b->state == HELLO_SENT) {
        b->state = PLAYING;
        connected++;
    }
}

static void on_readable(Bot *b, double t, double move_every) {
    for (;;) {
        ssize_t n = recv(b->fd, b->buf + b->held, BUF - b->held, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n <= 0) { drop(b, b->state == PLAYING); return; }
        bytes_in += n;
        int end = b->held + (int)n, pos = 0;
        while (end - pos >= 2) {
            int len = b->buf[pos] << 8 | b->buf[pos + 1];
            if (end - pos < 2 + len) break;
            int was = b->state;
            on_frame(b, b->buf + pos + 2, len, t);
            if (was != PLAYING && b->state == PLAYING && move_every > 0) {
                b->move_at = t + uniform() * move_every; /* a random phase */
                heap_push((int)(b - bots));
            }
            pos += 2 + len;
        }
        if (end - pos >= BUF) { drop(b, b->state == PLAYING); return; } /* a frame > BUF */
        memmove(b->buf, b->buf + pos, end - pos);
        b->held = end - pos;
        if (n < BUF - (end - (int)n)) return; /* a short read: drained */
    }
}

static int start_connect(Bot *b, struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    struct linger lg = {1, 0}; /* as the Python bots: no TIME_WAIT pile-up */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (connect(fd, (struct sockaddr *)addr, sizeof *addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    b->fd = fd;
    b->state = CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)(b - bots)};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 12150, json = 0;
    double duration = 10, move_every = 0.25, ramp_timeout = 120;
    count = 1000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--host")) host = v, i++;
        else if (!strcmp(a, "--port")) port = atoi(v), i++;
        else if (!strcmp(a, "--count")) count = atoi(v), i++;
        else if (!strcmp(a, "--duration")) duration = atof(v), i++;
        else if (!strcmp(a, "--move-every")) move_every = atof(v), i++;
        else if (!strcmp(a, "--ramp-timeout")) ramp_timeout = atof(v), i++;
        else if (!strcmp(a, "--probes")) i++; /* every move is timed here */
        else if (!strcmp(a, "--json")) json = 1;
        else { fprintf(stderr, "loadgen: unknown argument %s\n", a); return 2; }
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)count + 16 > rl.rlim_cur) {
        fprintf(stderr, "loadgen: %d players need more than the %ld open files allowed\n",
                count, (long)rl.rlim_cur);
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    bots = calloc(count, sizeof *bots);
    heap = malloc(sizeof *heap * (size_t)(count > 0 ? count : 1));
    unsigned char *bufs = malloc((size_t)count * BUF);
    epfd = epoll_create1(0);
    for (int i = 0; i < count; i++) bots[i].buf = bufs + (size_t)i * BUF, bots[i].fd = -1;
    printf("bots: %d to %s:%d (TCP) in C, moving every %g s, holding %g s\n",
           count, host, port, move_every, duration);
    fflush(stdout);
    static unsigned char hello[] = {0, 8, HELLO, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    double t0 = now(), ramp_end = 0, end = 1e300, next_report = t0 + 1;
    int opened = 0, outstanding = 0;
    struct epoll_event *events = malloc(sizeof *events * 1024);
    uint16_t seq = 0;
    for (;;) {
        double t = now();
        /* Up to 256 at a time, and at most 512 players between connect() and
         * WELCOME: paced by how fast the server lets players in, so its
         * accept queue never overflows (a dropped SYN waits 1, 3, 7... s). */
        for (int k = 0; k < 256 && opened < count && outstanding < 512; k++, opened++) {
            if (start_connect(&bots[opened], &addr) < 0) { failed++; bots[opened].state = DONE; }
            else outstanding++;
        }
        if (!ramp_end) {
            if (connected + failed + dropped >= count || t - t0 > ramp_timeout) {
                ramp_end = t;
                hold_start = t;
                end = t + duration;
                printf("ramp: %d/%d connected in %.1f s (%d failed); holding %g s\n",
                       connected, count, t - t0, failed, duration);
                fflush(stdout);
            } else if (t >= next_report) {
                printf("ramp %5.1f s: %d connected, %d failed, %d dropped\n", t - t0, connected,
                       failed, dropped);
                fflush(stdout);
                next_report += 1;
            }
        }
        if (t >= end) break;
        /* moves due, earliest first, with those due within the next millisecond:
         * the loop sleeps at least 1 ms instead of spinning between moves */
        double next_move = t + 0.05;
        while (heap_len && bots[heap[0]].move_at <= t + 0.001) {
            int i = heap_pop();
            Bot *b = &bots[i];
            if (b->state != PLAYING) continue; /* gone: out of the schedule */
            seq++;
            uint16_t x = (uint16_t)(uniform() * BOARD_W), y = (uint16_t)(uniform() * BOARD_H);
            unsigned char m[9] = {0, 7, MOVE, seq >> 8, seq & 0xFF, x >> 8, x & 0xFF,
                                  y >> 8, y & 0xFF};
            if (send(b->fd, m, sizeof m, MSG_NOSIGNAL) == (ssize_t)sizeof m) {
                moves_sent++;
                b->seq = seq;
                b->sent_at = t;
            }
            b->move_at += move_every;
            if (b->move_at <= t) b->move_at = t + move_every; /* fell behind: no burst */
            heap_push(i);
        }
        if (heap_len && bots[heap[0]].move_at < next_move) next_move = bots[heap[0]].move_at;
        int timeout = (int)((next_move - now()) * 1000);
        if (timeout < 1) timeout = 1;
        if (opened < count) timeout = 0;
        int n = epoll_wait(epfd, events, 1024, timeout);
        t = now();
        for (int k = 0; k < n; k++) {
            Bot *b = &bots[events[k].data.u32];
            if (b->fd < 0) continue;
            if (b->state == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(b->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || send(b->fd, hello, sizeof hello, MSG_NOSIGNAL) != sizeof hello) {
                    outstanding--;
                    drop(b, 0);
                    continue;
                }
                b->state = HELLO_SENT;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = events[k].data.u32};
                epoll_ctl(epfd, EPOLL_CTL_MOD, b->fd, &ev);
                continue;
            }
            int was = b->state;
            on_readable(b, t, move_every);
            if (was == HELLO_SENT && b->state != HELLO_SENT) outstanding--; /* in, or gone */
        }
    }
    /* tick fraction per player: ticks received / ticks the server numbered meanwhile */
    double fmin = 1.0, fsum = 0;
    int below = 0, playing = 0;
    for (int i = 0; i < count; i++) {
        Bot *b = &bots[i];
        if (b->state != PLAYING) continue;
        playing++;
        double f = b->ticks ? (double)b->ticks / (b->last_tick - b->first_tick + 1) : 0;
        if (f < fmin) fmin = f;
        fsum += f;
        if (f < 0.95) below++;
    }
    double i50 = pct(interval_hist, 50), i99 = pct(interval_hist, 99);
    double l50 = pct(latency_hist, 50), l99 = pct(latency_hist, 99);
    printf("  ticks received per player: min %.1f%%, %d below 95%%\n", 100 * fmin, below);
    if (json) {
        printf("{\"bots\": %d, \"connected\": %d, \"failed\": %d, \"dropped\": %d, \"frames\": %lld, "
               "\"bytes\": %lld, \"moves_sent\": %lld, \"ramp_s\": %.2f, ",
               count, connected, failed, dropped, frames, bytes_in, moves_sent, ramp_end - t0);
        if (i50 >= 0) printf("\"tick_interval_ms_p50\": %.1f, \"tick_interval_ms_p99\": %.1f, ", i50, i99);
        else printf("\"tick_interval_ms_p50\": null, \"tick_interval_ms_p99\": null, ");
        if (l50 >= 0) printf("\"move_latency_ms_p50\": %.1f, \"move_latency_ms_p99\": %.1f, ", l50, l99);
        else printf("\"move_latency_ms_p50\": null, \"move_latency_ms_p99\": null, ");
        printf("\"latency_samples\": %lld, \"tick_fraction_min\": %.4f, \"tick_fraction_mean\": %.4f, "
               "\"bots_below_95pct_ticks\": %d, \"load\": \"c\", \"errors\": {}}\n",
               latency_samples, playing ? fmin : 0.0, playing ? fsum / playing : 0.0, below);
    }
    for (int i = 0; i < count; i++)
        if (bots[i].fd >= 0) close(bots[i].fd);
    return 0;
}
