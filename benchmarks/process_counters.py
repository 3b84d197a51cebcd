"""Counters a benchmark process reads about itself: peak resident memory of one step, bytes its TCP sockets
received (gloo's traffic on the wire).

Peak memory: `release_freed_memory()` sets glibc's mmap and trim thresholds to 64 KiB, so every tensor
above that size is its own mapping and leaves the resident set when freed (otherwise glibc keeps freed
heap memory, and a later step that reuses it would not show). `PeakMemory` then resets the kernel's
high-water mark (`echo 5 > /proc/self/clear_refs`) and reports VmHWM after the step minus VmRSS before it:
the memory every buffer of the step touched at its peak, gloo's included, not a tensor-allocation trace.

Bytes: `tcp_bytes_received()` sums tcpi_bytes_received (struct tcp_info, Linux >= 4.2) over the TCP
sockets this process has open; the difference around a step is what gloo received, headers included.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
RELEASE_THRESHOLD_BYTES = 64 * 1024
TCPI_BYTES_RECEIVED_OFFSET = 128  # offset of tcpi_bytes_received (u64) in struct tcp_info
TCP_INFO_LENGTH = 256


def release_freed_memory() -> None:
    """Make freed tensors above 64 KiB leave the resident set at once (see the module docstring)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    for parameter in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD):
        if libc.mallopt(parameter, RELEASE_THRESHOLD_BYTES) != 1:
            raise RuntimeError(f"mallopt({parameter}, {RELEASE_THRESHOLD_BYTES}) failed")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not found in /proc/self/status")


class PeakMemory:
    """`with PeakMemory() as peak: step()`, then `peak.extra_bytes`: the step's peak over the RSS before it."""

    extra_bytes: int

    def __enter__(self) -> PeakMemory:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current RSS
        self._rss_before = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.extra_bytes = _status_bytes("VmHWM") - self._rss_before


def tcp_bytes_received() -> int:
    """Bytes received so far by every TCP socket this process has open (one sample of a counter)."""
    total = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # the descriptor closed meanwhile, or it is no socket we can open
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LENGTH)
                if len(info) >= TCPI_BYTES_RECEIVED_OFFSET + 8:
                    total += struct.unpack_from("Q", info, TCPI_BYTES_RECEIVED_OFFSET)[0]
        finally:
            sock.close()
    return total
