#ifndef SWARM_NOTIFY_H
#define SWARM_NOTIFY_H

/// sd_notify(0, state) without libsystemd: one datagram to $NOTIFY_SOCKET.
/// Returns 1 when sent, 0 without NOTIFY_SOCKET, -errno on failure.
int swarm_notify(const char *state);

#endif
