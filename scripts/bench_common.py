"""What the Python reference benchmarks share (imported from the scripts beside it)."""
import resource
from pathlib import Path


def peak_resident_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux that
    keeps the parent's peak across fork and exec, so it would report the benchmark's own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
