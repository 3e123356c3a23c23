/* Steering of SO_REUSEPORT groups: the classic BPF hash program and the
   hand-assembled eBPF round-robin program with its two maps. */
#define _GNU_SOURCE
#include "swarm_bpf.h"

#include <errno.h>
#include <linux/filter.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int swarm_attach_reuseport_steering(int fd, unsigned n, int ipv6) {
    if (n == 0) { errno = EINVAL; return -1; }
    /* The skb data starts after the TCP header; SKF_NET_OFF reaches the IP header. */
    uint32_t sport = ipv6 ? 40 : 20;   /* TCP source port, assuming no IP options / extension headers */
    uint32_t saddr = ipv6 ? 20 : 12;   /* (last 32 bits of) the source address */
    struct sock_filter code[] = {
        { BPF_LD | BPF_H | BPF_ABS, 0, 0, (uint32_t)SKF_NET_OFF + sport },
        { BPF_ALU | BPF_RSH | BPF_K, 0, 0, 1 },
        { BPF_MISC | BPF_TAX, 0, 0, 0 },
        { BPF_LD | BPF_W | BPF_ABS, 0, 0, (uint32_t)SKF_NET_OFF + saddr },
        { BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0 },
        { BPF_ALU | BPF_MOD | BPF_K, 0, 0, n },
        { BPF_RET | BPF_A, 0, 0, 0 },
    };
    struct sock_fprog prog = { sizeof code / sizeof code[0], code };
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog);
}

/* Round-robin steering of a SO_REUSEPORT group with an eBPF program
 * (BPF_PROG_TYPE_SK_REUSEPORT): a counter in an array map picks the next
 * index modulo the number of live slots, and a REUSEPORT_SOCKARRAY maps
 * each slot index to its socket. An index with no socket falls back to the
 * kernel's hash. Needs CAP_BPF (root); callers fall back to the classic BPF
 * program otherwise. */
#include <linux/bpf.h>

static long swarm_bpf(int cmd, union bpf_attr *attr) {
    return syscall(SYS_bpf, cmd, attr, sizeof *attr);
}

static struct bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
    struct bpf_insn i;
    memset(&i, 0, sizeof i);
    i.code = code;
    i.dst_reg = dst;
    i.src_reg = src;
    i.off = off;
    i.imm = imm;
    return i;
}

int swarm_rr_create(unsigned max_slots, int *state_map, int *sock_map, char *log, unsigned log_size) {
    return swarm_rr_create_counted(max_slots, state_map, sock_map, NULL, log, log_size);
}

/* With count_map: also an array of max_slots u64 counters, index i counting the
   new connections steered to socket-array index i (round-robin and hand-over,
   not health probes, not the kernel's fallback when the index is empty): one
   map lookup and one atomic add per new connection. swarmd reads the counters
   and charges each index's increase to the slot that sits there. */
int swarm_rr_create_counted(unsigned max_slots, int *state_map, int *sock_map, int *count_map, char *log, unsigned log_size) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = sizeof(struct swarm_rr_state);
    attr.max_entries = 1;
    int state = (int)swarm_bpf(BPF_MAP_CREATE, &attr);
    if (state < 0) return -1;

    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_REUSEPORT_SOCKARRAY;
    attr.key_size = 4;
    attr.value_size = 8;
    attr.max_entries = max_slots;
    int socks = (int)swarm_bpf(BPF_MAP_CREATE, &attr);
    if (socks < 0) { int e = errno; close(state); errno = e; return -1; }
    int counts = -1;
    if (count_map) {
        memset(&attr, 0, sizeof attr);
        attr.map_type = BPF_MAP_TYPE_ARRAY;
        attr.key_size = 4;
        attr.value_size = 8;
        attr.max_entries = max_slots;
        counts = (int)swarm_bpf(BPF_MAP_CREATE, &attr);
        if (counts < 0) { int e = errno; close(state); close(socks); errno = e; return -1; }
    }

    struct bpf_insn prog[96];
    int n = 0;
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_1, 0, 0);          /* r6 = ctx */
    /* A health probe: its TCP source port (the first two bytes of the TCP header,
       where the data of an SK_REUSEPORT context starts) names the index. */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_6, 0, 0);          /* r1 = ctx */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_2, 0, 0, 0);                 /* r2 = offset 0 */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0);
    prog[n++] = insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, -16);               /* r3 = fp-16 */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, 2);                 /* r4 = 2 bytes */
    prog[n++] = insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_skb_load_bytes);
    int jump_not_probe_1 = n;
    prog[n++] = insn(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_0, 0, 0, 0);                   /* if r0 != 0 goto normal */
    prog[n++] = insn(BPF_LDX | BPF_MEM | BPF_H, BPF_REG_8, BPF_REG_10, -16, 0);         /* r8 = sport (network order) */
    prog[n++] = insn(BPF_ALU | BPF_END | BPF_TO_BE, BPF_REG_8, 0, 0, 16);              /* r8 = ntohs(r8) */
    prog[n++] = insn(BPF_ALU64 | BPF_SUB | BPF_K, BPF_REG_8, 0, 0, SWARM_PROBE_PORT_BASE);
    int jump_not_probe_2 = n;
    prog[n++] = insn(BPF_JMP | BPF_JGE | BPF_K, BPF_REG_8, 0, 0, (int32_t)max_slots);  /* unsigned: below the base wraps */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_9, 0, 0, 0);                 /* r9 = 0: not counted */
    int jump_probe_select = n;
    prog[n++] = insn(BPF_JMP | BPF_JA, 0, 0, 0, 0);                                    /* goto select */
    prog[jump_not_probe_1].off = (int16_t)(n - jump_not_probe_1 - 1);
    prog[jump_not_probe_2].off = (int16_t)(n - jump_not_probe_2 - 1);
    prog[n++] = insn(BPF_ST | BPF_MEM | BPF_W, BPF_REG_10, 0, -4, 0);                  /* *(u32 *)(fp-4) = 0 */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0);
    prog[n++] = insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4);                /* r2 = fp-4 */
    prog[n++] = insn(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, state);/* r1 = &state */
    prog[n++] = insn(0, 0, 0, 0, 0);
    prog[n++] = insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem);
    int jump_to_pass_1 = n;
    prog[n++] = insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 0, 0);                   /* if r0 == 0 goto pass */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_7, BPF_REG_0, 0, 0);          /* r7 = value */
    /* A hand-over pending: the next `quota` connections go to index `target`. Two
       CPUs may both take the last one; the quota then ends at -1, which is as done. */
    prog[n++] = insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_1, BPF_REG_7, 16, 0);          /* r1 = quota */
    int jump_to_rr = n;
    prog[n++] = insn(BPF_JMP | BPF_JSLE | BPF_K, BPF_REG_1, 0, 0, 0);                  /* if quota <= 0 goto rr */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, -1);
    prog[n++] = insn(BPF_STX | BPF_DW | BPF_ATOMIC, BPF_REG_7, BPF_REG_1, 16, BPF_ADD); /* lock quota -= 1 */
    prog[n++] = insn(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_8, BPF_REG_7, 12, 0);           /* r8 = target */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_9, 0, 0, 1);                 /* r9 = 1: counted */
    int jump_to_select = n;
    prog[n++] = insn(BPF_JMP | BPF_JA, 0, 0, 0, 0);                                    /* goto select */
    prog[jump_to_rr].off = (int16_t)(n - jump_to_rr - 1);
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 1);
    prog[n++] = insn(BPF_STX | BPF_DW | BPF_ATOMIC, BPF_REG_7, BPF_REG_1, 0, BPF_ADD);  /* lock counter += 1 */
    prog[n++] = insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_8, BPF_REG_7, 0, 0);           /* r8 = counter */
    prog[n++] = insn(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_9, BPF_REG_7, 8, 0);            /* r9 = live slots */
    int jump_to_pass_2 = n;
    prog[n++] = insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_9, 0, 0, 0);                   /* if r9 == 0 goto pass */
    prog[n++] = insn(BPF_ALU64 | BPF_MOD | BPF_X, BPF_REG_8, BPF_REG_9, 0, 0);          /* r8 %= r9 */
    prog[jump_to_select].off = (int16_t)(n - jump_to_select - 1);
    prog[jump_probe_select].off = (int16_t)(n - jump_probe_select - 1);
    prog[n++] = insn(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10, BPF_REG_8, -8, 0);          /* *(u32 *)(fp-8) = r8 */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_6, 0, 0);          /* r1 = ctx */
    prog[n++] = insn(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_2, BPF_PSEUDO_MAP_FD, 0, socks);/* r2 = &socks */
    prog[n++] = insn(0, 0, 0, 0, 0);
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0);
    prog[n++] = insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, -8);                /* r3 = fp-8 */
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, 0);                 /* flags */
    prog[n++] = insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_select_reuseport);
    /* r9 (callee-saved) is non-zero on the round-robin path (the live count) and the hand-over path. */
    int jump_uncounted_1 = -1, jump_uncounted_2 = -1, jump_uncounted_3 = -1;
    if (counts >= 0) {
        jump_uncounted_1 = n;
        prog[n++] = insn(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_0, 0, 0, 0);               /* not selected: not counted */
        jump_uncounted_2 = n;
        prog[n++] = insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_9, 0, 0, 0);               /* a probe: not counted */
        prog[n++] = insn(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, counts);
        prog[n++] = insn(0, 0, 0, 0, 0);
        prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0);
        prog[n++] = insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -8);            /* r2 = fp-8: the index */
        prog[n++] = insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem);
        jump_uncounted_3 = n;
        prog[n++] = insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 0, 0);
        prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 1);
        prog[n++] = insn(BPF_STX | BPF_DW | BPF_ATOMIC, BPF_REG_0, BPF_REG_1, 0, BPF_ADD); /* lock count += 1 */
    }
    int pass = n;
    prog[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, SK_PASS);
    prog[n++] = insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    prog[jump_to_pass_1].off = (int16_t)(pass - jump_to_pass_1 - 1);
    prog[jump_to_pass_2].off = (int16_t)(pass - jump_to_pass_2 - 1);
    if (counts >= 0) {
        prog[jump_uncounted_1].off = (int16_t)(pass - jump_uncounted_1 - 1);
        prog[jump_uncounted_2].off = (int16_t)(pass - jump_uncounted_2 - 1);
        prog[jump_uncounted_3].off = (int16_t)(pass - jump_uncounted_3 - 1);
    }

    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SK_REUSEPORT;
    attr.insn_cnt = (uint32_t)n;
    attr.insns = (uint64_t)(uintptr_t)prog;
    attr.license = (uint64_t)(uintptr_t)"GPL";
    if (log && log_size) {
        log[0] = 0;
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
        attr.log_level = 1;
    }
    int fd = (int)swarm_bpf(BPF_PROG_LOAD, &attr);
    if (fd < 0) { int e = errno; close(state); close(socks); if (counts >= 0) close(counts); errno = e; return -1; }
    *state_map = state;
    *sock_map = socks;
    if (count_map) *count_map = counts;
    return fd;
}

int swarm_rr_attach(int prog, int sock) {
    return setsockopt(sock, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &prog, sizeof prog);
}

int swarm_rr_set_socket(int sock_map, unsigned index, int sock) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    uint64_t value = (uint64_t)sock;
    attr.map_fd = (uint32_t)sock_map;
    attr.key = (uint64_t)(uintptr_t)&index;
    attr.value = (uint64_t)(uintptr_t)&value;
    attr.flags = BPF_ANY;
    return (int)swarm_bpf(BPF_MAP_UPDATE_ELEM, &attr);
}

/* Read-modify-write of the state: the program's counter keeps running meanwhile
   (a lost increment only shifts the round-robin by one). */
static int swarm_rr_update_state(int state_map, int set_count, unsigned count, unsigned target, int64_t quota) {
    uint32_t key = 0;
    struct swarm_rr_state st;
    memset(&st, 0, sizeof st);
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = (uint32_t)state_map;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)&st;
    (void)swarm_bpf(BPF_MAP_LOOKUP_ELEM, &attr);
    if (set_count) st.live = count;
    st.target = target;
    st.quota = quota;
    attr.flags = BPF_ANY;
    return (int)swarm_bpf(BPF_MAP_UPDATE_ELEM, &attr);
}

int swarm_rr_read_state(int state_map, struct swarm_rr_state *out) {
    uint32_t key = 0;
    memset(out, 0, sizeof *out);
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = (uint32_t)state_map;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)out;
    return (int)swarm_bpf(BPF_MAP_LOOKUP_ELEM, &attr);
}

int swarm_rr_set_count(int state_map, unsigned count) {
    /* The socket array changed: a pending hand-over's index may name another slot now. */
    return swarm_rr_update_state(state_map, 1, count, 0, 0);
}

int swarm_rr_set_handover(int state_map, unsigned target, unsigned quota) {
    return swarm_rr_update_state(state_map, 0, 0, target, (int64_t)quota);
}

int swarm_rr_clear_socket(int sock_map, unsigned index) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = (uint32_t)sock_map;
    attr.key = (uint64_t)(uintptr_t)&index;
    long r = swarm_bpf(BPF_MAP_DELETE_ELEM, &attr);
    return (r < 0 && errno == ENOENT) ? 0 : (int)r;
}


/* One BPF_MAP_LOOKUP_BATCH for the whole array (Linux >= 5.6): swarmd reads
   the counters whenever an app's steering changes, and one lookup per index
   made that O(slots) system calls per change (4,096 slots starting: 16 M).
   Older kernels (EINVAL, ENOTSUPP) get the per-index loop. Indices past the
   map's end read as 0. */
int swarm_rr_read_counts(int count_map, unsigned n, uint64_t *out) {
    static int batch_unsupported;
    if (n > 0 && !batch_unsupported) {
        uint32_t keys_stack[1024];
        uint32_t *keys = n <= 1024 ? keys_stack : malloc(n * sizeof *keys);
        if (keys) {
            unsigned got = 0;
            uint32_t token = 0;
            int done = 0, failed = 0;
            while (got < n && !done) {
                union bpf_attr attr;
                memset(&attr, 0, sizeof attr);
                attr.batch.map_fd = (uint32_t)count_map;
                attr.batch.in_batch = got == 0 ? 0 : (uint64_t)(uintptr_t)&token;
                attr.batch.out_batch = (uint64_t)(uintptr_t)&token;
                attr.batch.keys = (uint64_t)(uintptr_t)(keys + got);
                attr.batch.values = (uint64_t)(uintptr_t)(out + got);
                attr.batch.count = n - got;
                long r = swarm_bpf(BPF_MAP_LOOKUP_BATCH, &attr);
                /* ENOENT: the map's end reached; count says how many came. */
                if (r < 0 && errno != ENOENT) { failed = errno; break; }
                if (attr.batch.count == 0) break;
                got += attr.batch.count;
                if (r < 0) done = 1;
            }
            if (keys != keys_stack) free(keys);
            if (!failed) {
                for (unsigned i = got; i < n; i++) out[i] = 0;
                return 0;
            }
            if (failed != EINVAL && failed != ENOTSUP && failed != 524 /* ENOTSUPP */) { errno = failed; return -1; }
            batch_unsupported = 1;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        uint32_t key = i;
        out[i] = 0;
        attr.map_fd = (uint32_t)count_map;
        attr.key = (uint64_t)(uintptr_t)&key;
        attr.value = (uint64_t)(uintptr_t)&out[i];
        if (swarm_bpf(BPF_MAP_LOOKUP_ELEM, &attr) < 0) {
            if (errno != ENOENT) return -1;
            for (; i < n; i++) out[i] = 0;  /* past the map's end */
            return 0;
        }
    }
    return 0;
}
