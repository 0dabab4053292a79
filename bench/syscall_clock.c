/*
 * A bench instrument (LD_PRELOAD): times the C library calls that enter the kernel on the way to a first
 * exit (open, ioctl, mmap, munmap, close), so that bench/breakdown.py --first can split a Python
 * workload's time into time in system calls and time in Python. Not part of kvm.
 *
 * syscall_clock_start() zeroes the counters and starts counting; syscall_clock_ns() and
 * syscall_clock_calls() read them. Built by breakdown.py into bench/build/syscall_clock.so.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <sys/types.h>
#include <time.h>

static long total_ns, calls;
static int counting;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

void syscall_clock_start(void) {
    total_ns = 0;
    calls = 0;
    counting = 1;
}

long syscall_clock_ns(void) {
    return total_ns;
}

long syscall_clock_calls(void) {
    return calls;
}

/* Defines `name` forwarding to the C library's, timed while counting. */
#define TIMED(ret, name, params, args)                       \
    ret name params {                                        \
        static ret(*real) params;                            \
        if (real == NULL)                                    \
            real = (ret(*) params)dlsym(RTLD_NEXT, #name);   \
        if (!counting)                                       \
            return real args;                                \
        long start = now_ns();                               \
        ret result = real args;                              \
        total_ns += now_ns() - start;                        \
        calls++;                                             \
        return result;                                       \
    }

TIMED(int, ioctl, (int fd, unsigned long request, void *arg), (fd, request, arg))
TIMED(int, close, (int fd), (fd))
TIMED(void *, mmap, (void *address, size_t length, int prot, int flags, int fd, off_t offset),
      (address, length, prot, flags, fd, offset))
TIMED(void *, mmap64, (void *address, size_t length, int prot, int flags, int fd, off_t offset),
      (address, length, prot, flags, fd, offset))
TIMED(int, munmap, (void *address, size_t length), (address, length))
TIMED(int, open64, (const char *path, int flags, mode_t mode), (path, flags, mode))
TIMED(int, open, (const char *path, int flags, mode_t mode), (path, flags, mode))
