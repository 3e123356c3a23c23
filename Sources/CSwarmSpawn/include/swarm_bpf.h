#ifndef SWARM_BPF_H
#define SWARM_BPF_H

#include <stdint.h>

/// Attach a classic BPF reuseport program choosing among the first n sockets of the group.
int swarm_attach_reuseport_steering(int fd, unsigned n, int ipv6);

/* Health probes: a connection from source port SWARM_PROBE_PORT_BASE + i goes
   to socket-array index i (i < max_slots), whatever the round-robin says, so
   swarmd reaches one chosen worker. Above the default ephemeral range (…60999). */
#define SWARM_PROBE_PORT_BASE 61000

/* The round-robin program's state (its one-element array map). */
struct swarm_rr_state {
    uint64_t counter;  /* connections steered round-robin */
    uint32_t live;     /* sockets in the socket array: indices 0..live-1 */
    uint32_t target;   /* hand-over: socket-array index ... */
    int64_t quota;     /* ... and how many connections it still gets first */
};

/// eBPF round-robin steering of a reuseport group (needs CAP_BPF).
/// Returns the program fd, or -1 with errno (and the verifier's log in `log`).
int swarm_rr_create(unsigned max_slots, int *state_map, int *sock_map, char *log, unsigned log_size);
/* The same with a per-index connection counter map in *count_map (see bpf.c). */
int swarm_rr_create_counted(unsigned max_slots, int *state_map, int *sock_map, int *count_map, char *log, unsigned log_size);
/* Reads counters 0..n-1 of a count map into out. 0, or -1 and errno. */
int swarm_rr_read_counts(int count_map, unsigned n, uint64_t *out);
/// The program's state: its round-robin counter, live count and pending hand-over.
int swarm_rr_read_state(int state_map, struct swarm_rr_state *out);
int swarm_rr_attach(int prog, int sock);
int swarm_rr_set_socket(int sock_map, unsigned index, int sock);
int swarm_rr_set_count(int state_map, unsigned count);
/* The next `quota` new connections go to socket-array index `target`, then round-robin resumes. */
int swarm_rr_set_handover(int state_map, unsigned target, unsigned quota);
int swarm_rr_clear_socket(int sock_map, unsigned index);

#endif
