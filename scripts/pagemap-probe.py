#!/usr/bin/env python3
"""Does this kernel's PAGEMAP_SCAN report pages nobody touched as written?

Gantry keeps up to --pool-keep-resident of each pooled memory resident and
resets it in place; wasmtime asks PAGEMAP_SCAN which pages were written so it
zeroes only those. This maps 1 MiB of anonymous memory, writes two pages,
reads one, and asks the same question wasmtime asks (written, not the zero
page, not file-backed). An exact kernel answers 2 pages; a kernel that also
reports never-touched pages answers 255, and then every release zeroes the
whole kept memory.
"""
import ctypes
import fcntl
import os
import struct
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")
SIZE = 256 * PAGE
WRITTEN, FILE, PFNZERO = 1 << 1, 1 << 2, 1 << 5
ARG_LEN = 12 * 8
PAGEMAP_SCAN = (3 << 30) | (ARG_LEN << 16) | (ord("f") << 8) | 16


def main() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                          ctypes.c_int, ctypes.c_int, ctypes.c_long]
    base = libc.mmap(None, SIZE, 0x1 | 0x2, 0x02 | 0x20, -1, 0)
    if base in (None, ctypes.c_void_p(-1).value):
        print("pagemap probe: mmap failed")
        return 1
    mem = (ctypes.c_char * SIZE).from_address(base)
    mem[3 * PAGE] = b"w"
    mem[200 * PAGE] = b"w"
    _ = mem[100 * PAGE]  # a read maps the shared zero page
    regions = (ctypes.c_uint64 * (3 * 64))()
    arg = bytearray(struct.pack(
        "12Q", ARG_LEN, 0, base, base + SIZE, 0, ctypes.addressof(regions), 64,
        256, PFNZERO | FILE, WRITTEN | PFNZERO | FILE, 0, 0))
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
        finally:
            os.close(fd)
    except OSError as e:
        print(f"pagemap probe: no PAGEMAP_SCAN here ({e.strerror}); "
              "kept memory is zeroed whole on every release")
        return 0
    pages = sum((regions[3 * i + 1] - regions[3 * i]) // PAGE for i in range(n))
    verdict = ("exact" if pages == 2 else
               "also reports never-touched pages: a release zeroes the whole kept memory")
    print(f"pagemap probe ({os.uname().release}): 2 pages written, "
          f"PAGEMAP_SCAN reports {pages} as written: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
