#ifndef SWARM_SOCK_DIAG_H
#define SWARM_SOCK_DIAG_H

#include <stdint.h>
#include <sys/types.h>

/* Established TCP connections on local port `port` among the socket inodes
   `inodes` (sorted ascending): one process's connections. `family`: AF_INET or
   AF_INET6 to look at that family only, 0 for both. -1 and errno on failure. */
int swarm_count_established(uint16_t port, int family, const uint32_t *inodes, int ninodes);

/* Accept-queue length (idiag_rqueue) of each listening TCP socket on `port`
   whose inode is inodes[i], into queues[i] (-1: not found). Returns how many
   were found, or -1 and errno. */
int swarm_listen_queues(uint16_t port, const uint32_t *inodes, int n, int32_t *queues);

/* getdents64(2) (glibc declares it for C only): a directory's entries a
   bufferful at a time, from the offset the fd is at. The listening probe
   reads a window of /proc/PID/task this way instead of every thread. */
ssize_t swarm_getdents64(int fd, void *buf, size_t len);

#endif
