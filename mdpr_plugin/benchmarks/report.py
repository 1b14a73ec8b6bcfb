"""What the benchmarks share: their sections of docs/benchmarks.md, and whether other jobs shared the CPU."""
import os
import resource
import sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_threads(threads):
    """Thread limits for the libraries' pools, unless already set (worker processes get them before
    importing torch / numpy; here they serve the in-process mode)."""
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, str(threads))


def log(message):
    """Progress on stderr, so that stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


def write_section(path, section, start, end):
    """Replace the section between the ``start`` / ``end`` markers of ``path`` (or append it); the rest of
    the file is left alone."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def _busy_cpu_seconds():
    """Seconds all CPUs spent busy since boot (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds():
    """CPU seconds of this process and of its finished children (the benchmark's worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class OtherLoad:
    """The share of the machine's CPU time that *other* processes used while the benchmark ran.

    The load average cannot say this: it counts the benchmark's own threads (a 2-thread benchmark alone
    on 2 cores reads about 2) and lags by minutes. Here the busy time of all CPUs minus the benchmark's
    own CPU time (its workers included) is set against wall time x cores.
    """

    def __init__(self, wall_start):
        self.wall_start, self.busy_start, self.own_start = wall_start, _busy_cpu_seconds(), _own_cpu_seconds()

    def share(self, wall_end):
        busy = _busy_cpu_seconds()
        if busy is None or self.busy_start is None:
            return None
        others = (busy - self.busy_start) - (_own_cpu_seconds() - self.own_start)
        return max(0.0, others) / ((wall_end - self.wall_start) * os.cpu_count())
