#ifndef SWARM_SOCK_DIAG_H
#define SWARM_SOCK_DIAG_H

#include <stdint.h>

/* Established TCP connections on local port `port` among the socket inodes
   `inodes` (sorted ascending): one process's connections. -1 and errno on failure. */
int swarm_count_established(uint16_t port, const uint32_t *inodes, int ninodes);

#endif
