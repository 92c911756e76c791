/* The floor for bench/floor.py: a broadcast server in C on epoll, doing no
 * more than the workload needs, so what it costs is the kernel's price of
 * the workload and nothing else.
 *
 * Every connection gets the same 102-byte frame (a u16 big-endian length of
 * 100, then 100 bytes) every 250 ms; what a client sends is read and thrown
 * away; a client that closes is dropped. One process, one thread, one epoll
 * set: the listening socket, a timerfd for the tick, and every connection
 * (level-triggered reads). TCP_NODELAY on each accepted socket, as netcore
 * sets it. The connection table is an array of fds (4 bytes a connection),
 * allocated for the open-files limit up front and touched only as
 * connections arrive, so RSS grows by what a connection really costs this
 * process; the fd -> slot index beside it is filled (-1) at start, so it is
 * part of the empty server's RSS.
 *
 * A send that would block, or is short, is counted ("short") and the rest of
 * that frame dropped: with a client that drains, it does not happen, and
 * the count says whether it did. The floor queues nothing.
 *
 *     cc -O2 -o floor bench/peers/floor.c
 *     ./floor [PORT [PERIOD_MS]]      # port 0 (default): any free port
 *
 * Prints "listening PORT" once ready; on SIGTERM or SIGINT prints one line
 * of counters ("ticks T sends S short H accepted A") and exits 0.
 * Loopback (127.0.0.1) only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define FRAME_PAYLOAD 100
#define MAX_EVENTS 1024

static int *conns;      /* the open connections, in no order */
static int *slot_of;    /* fd -> index into conns, -1 if none */
static size_t nconns;
static size_t max_fds;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void drop(int epfd, int fd) {
    int slot = slot_of[fd];
    if (slot < 0)
        return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    int last = conns[--nconns];
    conns[slot] = last;
    slot_of[last] = slot;
    slot_of[fd] = -1;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int period_ms = argc > 2 ? atoi(argv[2]) : 250;
    if (period_ms <= 0)
        period_ms = 250;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("getrlimit");
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    max_fds = rl.rlim_cur;
    conns = malloc(max_fds * sizeof *conns);
    slot_of = malloc(max_fds * sizeof *slot_of);
    if (!conns || !slot_of)
        die("malloc");
    memset(slot_of, 0xff, max_fds * sizeof *slot_of); /* -1: no connection */

    unsigned char frame[2 + FRAME_PAYLOAD];
    frame[0] = FRAME_PAYLOAD >> 8;
    frame[1] = FRAME_PAYLOAD & 0xff;
    memset(frame + 2, 'x', FRAME_PAYLOAD);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0)
        die("bind");
    if (listen(lfd, 4096) != 0)
        die("listen");
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);

    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0)
        die("timerfd_create");
    struct itimerspec its = {
        .it_interval = {period_ms / 1000, (long)(period_ms % 1000) * 1000000L},
        .it_value = {period_ms / 1000, (long)(period_ms % 1000) * 1000000L},
    };
    if (timerfd_settime(tfd, 0, &its, NULL) != 0)
        die("timerfd_settime");

    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigprocmask(SIG_BLOCK, &stop, NULL);
    int sfd = signalfd(-1, &stop, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        die("signalfd");
    signal(SIGPIPE, SIG_IGN);

    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = lfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.fd = tfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.fd = sfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);

    printf("listening %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    uint64_t ticks = 0, sends = 0, shorts = 0, accepted = 0;
    char sink[65536];
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0)
                        break; /* EAGAIN, or out of fds: try again on the next wakeup */
                    if ((size_t)c >= max_fds) {
                        close(c);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN};
                    cev.data.fd = c;
                    epoll_ctl(epfd, EPOLL_CTL_ADD, c, &cev);
                    slot_of[c] = (int)nconns;
                    conns[nconns++] = c;
                    accepted++;
                }
            } else if (fd == tfd) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) != sizeof expirations)
                    continue;
                ticks++;
                /* Backwards, so a connection dropped mid-loop (swapped with
                 * the last) does not skip anyone. */
                for (size_t k = nconns; k-- > 0;) {
                    int c = conns[k];
                    ssize_t w = send(c, frame, sizeof frame, MSG_NOSIGNAL | MSG_DONTWAIT);
                    if (w == (ssize_t)sizeof frame) {
                        sends++;
                    } else if (w >= 0 || errno == EAGAIN || errno == EWOULDBLOCK) {
                        shorts++;
                    } else {
                        drop(epfd, c);
                    }
                }
            } else if (fd == sfd) {
                printf("ticks %llu sends %llu short %llu accepted %llu\n",
                       (unsigned long long)ticks, (unsigned long long)sends,
                       (unsigned long long)shorts, (unsigned long long)accepted);
                fflush(stdout);
                return 0;
            } else {
                for (;;) {
                    ssize_t r = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
                    if (r > 0)
                        continue;
                    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                    drop(epfd, fd); /* EOF or error */
                    break;
                }
            }
        }
    }
}
