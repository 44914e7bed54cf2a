/* LD_PRELOAD shim for the disk-full test (tests/test_checkpointing.py): once armed with
 * enospc_arm(1) (ctypes.CDLL(None)), every write to a file under $ENOSPC_DIR fails with ENOSPC,
 * as on a full file system, whatever writes it (Python, orbax, tensorstore's C++). No tmpfs,
 * no mount namespace, no privilege needed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>

static int armed = 0;
void enospc_arm(int on) { armed = on; }

static int target(int fd) {
    if (!armed) return 0;
    const char *dir = getenv("ENOSPC_DIR");
    if (!dir) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    return strncmp(path, dir, strlen(dir)) == 0;
}
#define FAIL_IF(fd) do { if (target(fd)) { errno = ENOSPC; return -1; } } while (0)
#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *b, size_t n) { REAL(write); FAIL_IF(fd); return real(fd, b, n); }
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) { REAL(pwrite); FAIL_IF(fd); return real(fd, b, n, o); }
ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) { REAL(pwrite64); FAIL_IF(fd); return real(fd, b, n, o); }
ssize_t writev(int fd, const struct iovec *v, int c) { REAL(writev); FAIL_IF(fd); return real(fd, v, c); }
ssize_t pwritev(int fd, const struct iovec *v, int c, off_t o) { REAL(pwritev); FAIL_IF(fd); return real(fd, v, c, o); }
ssize_t pwritev2(int fd, const struct iovec *v, int c, off_t o, int f) { REAL(pwritev2); FAIL_IF(fd); return real(fd, v, c, o, f); }
int fallocate(int fd, int m, off_t o, off_t l) { REAL(fallocate); FAIL_IF(fd); return real(fd, m, o, l); }
int posix_fallocate(int fd, off_t o, off_t l) { REAL(posix_fallocate); if (target(fd)) return ENOSPC; return real(fd, o, l); }
