"""Step the wall clock of a child process, and only its wall clock.

    shim = WallClockShim(tmp_path)                     # compiles the shim with cc
    agent = AgentProcess(config, env=shim.env).start()
    shim.step(-3600)                                   # its CLOCK_REALTIME jumps back an hour

A tiny LD_PRELOAD library overrides `clock_gettime` (CLOCK_REALTIME and its coarse variant),
`gettimeofday` and `time`, adding an offset it reads from a shared 8-byte file (nanoseconds,
little-endian int64) on every call; CLOCK_MONOTONIC and every sleep stay real. libfaketime
0.9.10 with DONT_FAKE_MONOTONIC=1 makes Python's `time.sleep` fail with EINVAL here, and
changing the machine's clock needs root and disturbs every other process. Needs `cc` (gcc).
"""

from __future__ import annotations

import mmap
import shutil
import struct
import subprocess
from pathlib import Path

NS_PER_S = 1_000_000_000
OFFSET_FORMAT = "<q"  # what the C side reads: a little-endian int64 of nanoseconds

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static volatile const int64_t *offset_ns;

__attribute__((constructor)) static void shim_init(void) {
    real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    const char *path = getenv("WALL_CLOCK_OFFSET_FILE");
    if (path == NULL) return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    void *map = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map != MAP_FAILED) offset_ns = map;
}

static void shift(struct timespec *ts) {
    int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + (offset_ns ? *offset_ns : 0);
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (real_clock_gettime == NULL) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) shift(ts);
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0) {  /* glibc declares tv nonnull */
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return (time_t)-1;
    if (out != NULL) *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


class WallClockShim:
    """Compiled into `workdir`; `env` is what a child process needs to be stepped."""

    def __init__(self, workdir: Path) -> None:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RuntimeError("no C compiler: install gcc (scripts/test does)")
        workdir.mkdir(parents=True, exist_ok=True)
        source = workdir / "wallclock_shim.c"
        source.write_text(SHIM_C)
        self.library = workdir / "wallclock_shim.so"
        built = subprocess.run(  # noqa: S603 - a fixed compiler command on our own source
            [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(self.library),
             str(source), "-ldl"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if built.returncode != 0:
            raise RuntimeError(f"cannot build the wall-clock shim:\n{built.stderr}")
        self.offset_file = workdir / "wallclock_offset"
        self.offset_file.write_bytes(struct.pack(OFFSET_FORMAT, 0))
        self.offset_s = 0.0

    @property
    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(self.library), "WALL_CLOCK_OFFSET_FILE": str(self.offset_file)}

    def set_offset(self, offset_s: float) -> None:
        """The child's wall clock reads real time + `offset_s` from its next reading on."""
        with self.offset_file.open("r+b") as f, mmap.mmap(f.fileno(), 8) as shared:
            shared[:8] = struct.pack(OFFSET_FORMAT, round(offset_s * NS_PER_S))
        self.offset_s = offset_s

    def step(self, delta_s: float) -> None:
        """Steps the child's wall clock by `delta_s` (negative: back)."""
        self.set_offset(self.offset_s + delta_s)
