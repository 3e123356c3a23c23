#define _GNU_SOURCE
#include "swarm_sock_diag.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- Established connections of one process on one port (sock_diag) ---- */

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>

static int swarm_cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Asks the kernel for established TCP sockets only (not the listening or
   TIME_WAIT ones, which /proc/net/tcp would list by the hundred thousand under
   short-lived connections), and counts those on local port `port` whose inode is
   in `inodes` (sorted ascending). `family` AF_INET or AF_INET6 dumps only that
   family (a listener's accepted connections are of its own family, v4-mapped
   ones included); anything else dumps both. Each dump walks the whole
   established hash (~1 ms on a test host), hence one where one does. -1 and
   errno on failure. */
int swarm_count_established(uint16_t port, int family, const uint32_t *inodes, int ninodes) {
    int total = 0;
    const int families[2] = { AF_INET, AF_INET6 };
    for (int f = 0; f < 2; f++) {
        if ((family == AF_INET || family == AF_INET6) && families[f] != family) continue;
        int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
        if (fd < 0) return -1;
        struct {
            struct nlmsghdr nlh;
            struct inet_diag_req_v2 req;
        } msg;
        memset(&msg, 0, sizeof msg);
        msg.nlh.nlmsg_len = sizeof msg;
        msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.req.sdiag_family = (uint8_t)families[f];
        msg.req.sdiag_protocol = IPPROTO_TCP;
        msg.req.idiag_states = 1u << TCP_ESTABLISHED;
        if (send(fd, &msg, sizeof msg, 0) < 0) { int e = errno; close(fd); errno = e; return -1; }
        char buf[32768] __attribute__((aligned(8)));  /* on the stack: callable from any thread */
        int done = 0;
        while (!done) {
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n < 0) {
                if (errno == EINTR) continue;
                int e = errno; close(fd); errno = e; return -1;
            }
            if (n == 0) break;
            for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
                if (h->nlmsg_type == NLMSG_DONE) { done = 1; break; }
                if (h->nlmsg_type == NLMSG_ERROR) {
                    struct nlmsgerr *err = NLMSG_DATA(h);
                    close(fd);
                    errno = err->error ? -err->error : EIO;
                    return -1;
                }
                struct inet_diag_msg *d = NLMSG_DATA(h);
                if (ntohs(d->id.idiag_sport) != port) continue;
                uint32_t inode = d->idiag_inode;
                if (bsearch(&inode, inodes, (size_t)ninodes, sizeof *inodes, swarm_cmp_u32)) total++;
            }
        }
        close(fd);
    }
    return total;
}

/* ---- Accept queues of listening sockets (hang detection) ---- */

/* For each listening TCP socket on local port `port` whose inode is inodes[i],
   queues[i] = its idiag_rqueue: for a listener, the connections waiting in its
   accept queue. Entries not found stay -1. One dump of the listening sockets
   per address family (a short list: listeners only). Returns how many were
   found, or -1 and errno on failure. */
int swarm_listen_queues(uint16_t port, const uint32_t *inodes, int n, int32_t *queues) {
    for (int i = 0; i < n; i++) queues[i] = -1;
    int found = 0;
    const int families[2] = { AF_INET, AF_INET6 };
    for (int f = 0; f < 2 && found < n; f++) {
        int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
        if (fd < 0) return -1;
        struct {
            struct nlmsghdr nlh;
            struct inet_diag_req_v2 req;
        } msg;
        memset(&msg, 0, sizeof msg);
        msg.nlh.nlmsg_len = sizeof msg;
        msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.req.sdiag_family = (uint8_t)families[f];
        msg.req.sdiag_protocol = IPPROTO_TCP;
        msg.req.idiag_states = 1u << TCP_LISTEN;
        if (send(fd, &msg, sizeof msg, 0) < 0) { int e = errno; close(fd); errno = e; return -1; }
        char buf[32768] __attribute__((aligned(8)));  /* on the stack: callable from any thread */
        int done = 0;
        while (!done) {
            ssize_t len = recv(fd, buf, sizeof buf, 0);
            if (len < 0) {
                if (errno == EINTR) continue;
                int e = errno; close(fd); errno = e; return -1;
            }
            if (len == 0) break;
            for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)len); h = NLMSG_NEXT(h, len)) {
                if (h->nlmsg_type == NLMSG_DONE) { done = 1; break; }
                if (h->nlmsg_type == NLMSG_ERROR) {
                    struct nlmsgerr *err = NLMSG_DATA(h);
                    close(fd);
                    errno = err->error ? -err->error : EIO;
                    return -1;
                }
                struct inet_diag_msg *d = NLMSG_DATA(h);
                if (ntohs(d->id.idiag_sport) != port) continue;
                for (int i = 0; i < n; i++) {
                    if (inodes[i] == d->idiag_inode && queues[i] < 0) {
                        queues[i] = (int32_t)d->idiag_rqueue;
                        found++;
                        break;
                    }
                }
            }
        }
        close(fd);
    }
    return found;
}

/* ---- Directory entries a bufferful at a time ---- */

#include <dirent.h>

ssize_t swarm_getdents64(int fd, void *buf, size_t len) {
    return getdents64(fd, buf, len);
}
