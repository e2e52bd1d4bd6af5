/* Hostile probes run inside a confined worker by the escape battery (tests/escape.rs).
 * Each subcommand attempts one escape with a raw syscall and prints
 *   BLOCKED <errno name>   (exit 0) when the kernel refused it, or
 *   ESCAPED <detail>       (exit 1) when it succeeded.
 * Compiled with gcc at test time. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <termios.h>
#include <unistd.h>

static int verdict(long rc, const char *what) {
    if (rc < 0) {
        printf("BLOCKED %s %s\n", what, strerrorname_np(errno));
        return 0;
    }
    printf("ESCAPED %s rc=%ld\n", what, rc);
    return 1;
}

static int sock_connect(int family, struct sockaddr *addr, socklen_t len, const char *what) {
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0) return verdict(-1, what);
    return verdict(connect(fd, addr, len), what);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: probe <name> [arg]\n"); return 2; }
    const char *p = argv[1];
    const char *arg = argc > 2 ? argv[2] : "";
    if (!strcmp(p, "mount")) return verdict(mount("none", "/tmp", "tmpfs", 0, NULL), p);
    if (!strcmp(p, "umount")) return verdict(umount2("/workspace", MNT_DETACH), p);
    if (!strcmp(p, "chroot")) return verdict(chroot("/tmp"), p);
    if (!strcmp(p, "pivot_root")) return verdict(syscall(SYS_pivot_root, "/tmp", "/tmp"), p);
    if (!strcmp(p, "unshare_user")) return verdict(unshare(CLONE_NEWUSER), p);
    if (!strcmp(p, "unshare_net")) return verdict(unshare(CLONE_NEWNET), p);
    if (!strcmp(p, "setns")) { int fd = open("/proc/1/ns/mnt", O_RDONLY); return verdict(fd < 0 ? fd : setns(fd, 0), p); }
    if (!strcmp(p, "clone_newuser")) {
        long rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (rc == 0) _exit(0);
        if (rc > 0) waitpid(rc, NULL, 0);
        return verdict(rc, p);
    }
    if (!strcmp(p, "ptrace_attach")) return verdict(ptrace(PTRACE_ATTACH, atoi(arg), 0, 0), p);
    if (!strcmp(p, "ptrace_traceme")) return verdict(ptrace(PTRACE_TRACEME, 0, 0, 0), p);
    if (!strcmp(p, "process_vm_readv")) {
        char buf[16]; struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
        return verdict(process_vm_readv(atoi(arg), &local, 1, &remote, 1, 0), p);
    }
    if (!strcmp(p, "kill")) return verdict(kill(atoi(arg), SIGKILL), p);
    if (!strcmp(p, "io_uring_setup")) { struct io_uring_params prm; memset(&prm, 0, sizeof prm); return verdict(syscall(SYS_io_uring_setup, 4, &prm), p); }
    if (!strcmp(p, "keyctl")) return verdict(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0), p);
    if (!strcmp(p, "add_key")) return verdict(syscall(SYS_add_key, "user", "probe", "x", 1, -3), p);
    if (!strcmp(p, "bpf")) { union bpf_attr a; memset(&a, 0, sizeof a); a.map_type = BPF_MAP_TYPE_ARRAY; a.key_size = 4; a.value_size = 4; a.max_entries = 1; return verdict(syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a), p); }
    if (!strcmp(p, "userfaultfd")) return verdict(syscall(SYS_userfaultfd, 0), p);
    if (!strcmp(p, "perf_event_open")) { struct perf_event_attr a; memset(&a, 0, sizeof a); a.size = sizeof a; a.type = PERF_TYPE_SOFTWARE; a.config = PERF_COUNT_SW_CPU_CLOCK; return verdict(syscall(SYS_perf_event_open, &a, 0, -1, -1, 0), p); }
    if (!strcmp(p, "tiocsti")) { char c = 'x'; int fd = open("/dev/tty", O_RDWR); return verdict(ioctl(fd < 0 ? 0 : fd, TIOCSTI, &c), p); }
    if (!strcmp(p, "mknod")) return verdict(mknod(arg, S_IFCHR | 0666, makedev(1, 3)), p);
    if (!strcmp(p, "open_by_handle_at")) { char h[128]; memset(h, 0, sizeof h); ((unsigned int *)h)[0] = 8; return verdict(syscall(SYS_open_by_handle_at, AT_FDCWD, h, O_RDONLY), p); }
    if (!strcmp(p, "finit_module")) return verdict(syscall(SYS_finit_module, 0, "", 0), p);
    if (!strcmp(p, "setuid0")) return verdict(setuid(0) == 0 && geteuid() == 0 ? 0 : -1, p);
    if (!strcmp(p, "socket")) { int fam = atoi(arg); int type = fam == AF_PACKET || fam == AF_INET ? SOCK_RAW : SOCK_STREAM; if (fam == 16) type = SOCK_RAW; return verdict(socket(fam, type, fam == AF_INET ? IPPROTO_ICMP : 0), p); }
    if (!strcmp(p, "connect_unix")) { struct sockaddr_un a = {AF_UNIX}; strncpy(a.sun_path, arg, sizeof a.sun_path - 1); return sock_connect(AF_UNIX, (struct sockaddr *)&a, sizeof a, p); }
    if (!strcmp(p, "connect_abstract")) { struct sockaddr_un a = {AF_UNIX}; strncpy(a.sun_path + 1, arg, sizeof a.sun_path - 2); return sock_connect(AF_UNIX, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + strlen(arg), p); }
    if (!strcmp(p, "connect_tcp")) { struct sockaddr_in a = {AF_INET, htons(atoi(arg))}; a.sin_addr.s_addr = htonl(INADDR_LOOPBACK); return sock_connect(AF_INET, (struct sockaddr *)&a, sizeof a, p); }
    if (!strcmp(p, "memfill")) {
        size_t total = 0;
        for (;;) { char *m = malloc(64 << 20); if (!m) break; memset(m, 1, 64 << 20); total += 64 << 20; if (total > (64ULL << 30)) break; }
        printf("BLOCKED memfill allocated %zu MiB before ENOMEM\n", total >> 20);
        return total > (16ULL << 30);
    }
    if (!strcmp(p, "int80")) {
        /* i386 ptrace(PTRACE_TRACEME) through the 32-bit entry point: a filter that only
         * knows x86_64 numbers must kill the process on the architecture check. */
        pid_t c = fork();
        if (c == 0) {
            long r;
            __asm__ volatile("int $0x80" : "=a"(r) : "a"(26L), "b"(0L), "c"(0L), "d"(0L) : "memory");
            _exit(r < 0 ? 4 : 3);
        }
        int st = 0;
        waitpid(c, &st, 0);
        if (WIFSIGNALED(st)) { printf("BLOCKED int80 killed by signal %d\n", WTERMSIG(st)); return 0; }
        if (WEXITSTATUS(st) == 4) { printf("BLOCKED int80 refused\n"); return 0; }
        printf("ESCAPED int80 exit %d\n", WEXITSTATUS(st));
        return 1;
    }
    if (!strcmp(p, "inherited_fd")) { char b[64]; ssize_t n = read(atoi(arg), b, sizeof b); return verdict(n, p); }
    fprintf(stderr, "unknown probe %s\n", p);
    return 2;
}
