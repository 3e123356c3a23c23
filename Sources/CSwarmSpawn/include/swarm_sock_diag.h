#ifndef SWARM_SOCK_DIAG_H
#define SWARM_SOCK_DIAG_H

#include <stdint.h>
#include <sys/types.h>

/* Established TCP connections on local port `port` among the socket inodes
   `inodes` (sorted ascending): one process's connections. -1 and errno on failure. */
int swarm_count_established(uint16_t port, const uint32_t *inodes, int ninodes);

/* getdents64(2) (glibc declares it for C only): a directory's entries a
   bufferful at a time, from the offset the fd is at. The listening probe
   reads a window of /proc/PID/task this way instead of every thread. */
ssize_t swarm_getdents64(int fd, void *buf, size_t len);

#endif
