#define _GNU_SOURCE
#include "swarm_notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The notification protocol is documented as stable, and sd_notify(3) gives
   this standalone implementation for programs that do not link libsystemd.
   Kernel.swift (linked by swarmctl too) needs only this, and loading
   libsystemd with its six dependencies was a third of swarmctl's start-up.
   Path and abstract AF_UNIX sockets only: systemd hands a service nothing else. */
int swarm_notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path) return 0;
    if (!state || !*state) return -EINVAL;
    if (path[0] != '/' && path[0] != '@') return -EAFNOSUPPORT;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t path_length = strlen(path);
    if (path_length >= sizeof addr.sun_path) return -E2BIG;
    memcpy(addr.sun_path, path, path_length);
    if (addr.sun_path[0] == '@') addr.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int r = 1;
    size_t length = strlen(state);
    if (connect(fd, (struct sockaddr *)&addr, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_length)) != 0) {
        r = -errno;
    } else {
        ssize_t written = write(fd, state, length);
        if (written != (ssize_t)length) r = written < 0 ? -errno : -EPROTO;
    }
    close(fd);
    return r;
}
