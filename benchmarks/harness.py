"""What both benchmarks share: their command line, cases run in fresh processes, memory and machine
measurement, the run's record (with the CPU time other jobs took), and their sections of docs/benchmarks.md."""
import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from mdpr_plugin.errors import InputError, MissingFileError, reporting_errors
from mdpr_plugin.tools.common import check_output_file, positive_int

GIB = 1024 ** 3
# this folder sits in the checkout, beside train_net.py, configs/ and docs/ (it is not installed)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_threads(threads):
    """Thread limits for the libraries' pools, unless already set (worker processes get them before
    importing torch / numpy; here they serve the in-process mode)."""
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, str(threads))


def log(message):
    """Progress on stderr, so that stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ timing
def repeat_timed(step, warmup, repeats, budget=float("inf"), sync=lambda: None):
    """``(first, times)``: ``step`` run ``warmup`` times untimed (the first of them timed on its own: a
    compilation shows there), then timed until ``repeats`` runs, at least two, fewer once they have taken
    ``budget`` seconds. A first call over a quarter of the budget cuts the warm-up short, so that a slow mode (bf16
    on a CPU without bf16 units runs ~20x slower) does not hold up a whole run. ``sync`` waits for queued device
    work (CUDA) around each timed call."""
    def timed():
        sync()
        start = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - start

    first = timed()
    for _ in range(warmup - 1):
        if first > budget / 4:
            break
        step()
    times = []
    while len(times) < repeats and (len(times) < 2 or sum(times) < budget):
        times.append(timed())
    return first, times


# ------------------------------------------------------------------------------------ memory
def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Measurement:
    """Wall time and peak memory of steps run in this process."""

    def __init__(self):
        self.process_peak = _status_kib("VmHWM") * 1024  # what the process reached before any step

    def __call__(self, step):
        """Run ``step()``; return (result, seconds, peak RSS the step added, in bytes)."""
        gc.collect()
        reset = _reset_peak()
        before = _status_kib("VmRSS")
        start = time.perf_counter()
        result = step()
        seconds = time.perf_counter() - start
        peak = _status_kib("VmHWM")
        self.process_peak = max(self.process_peak, peak * 1024)
        return result, seconds, (peak - before) * 1024 if reset else float("nan")


def memory_total():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------- worker processes
def run_isolated(module, argument, threads):
    """``module``'s ``--worker`` on ``argument`` in a fresh interpreter, the thread variables set before any
    import, so that no earlier case's allocator or thread pools touch its times and peak memory. The
    worker's log goes straight to this process's stderr; its result comes as the last line of its stdout."""
    # the checkout first on the path: ``-m benchmarks.<name>`` is found from whatever folder the run started in
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, **{v: str(threads) for v in THREAD_VARIABLES})
    command = [sys.executable, "-m", module, "--worker", json.dumps(argument)]
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return {**argument, "failed": reason}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cases(cases, call, describe, summarise, save=None):
    """``call`` on every case, one progress line before and one after each; ``save(results)`` after every
    case, so that a long run's results survive an interruption."""
    results = []
    for case in cases:
        log(f"{describe(case)} ...")
        results.append(call(case))
        log(f"  {summarise(results[-1])}")
        if save:
            save(results)
    return results


def saver(path, **fields):
    """``save(results)`` for :func:`run_cases`: ``fields`` and the results so far as JSON at ``path``."""
    def save(results):
        if path:
            with open(path, "w") as f:
                json.dump({**fields, "results": results}, f, indent=1)
    return save


# ------------------------------------------------------------------------------ machine, run
def machine(*packages):
    """CPU, cores, memory, GPU, Python, and the versions of torch and ``packages`` (None where missing)."""
    import importlib

    import torch

    info = {"cpu": "unknown CPU", "cores": os.cpu_count(), "memory": memory_total(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    for name in packages:
        try:
            info[name] = importlib.import_module(name).__version__
        except ImportError:
            info[name] = None
    return info


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


@contextlib.contextmanager
def recording_run(**fields):
    """The run's record (JSON-able): ``fields``, start and end times, the load average at both, and the
    share of the CPU time other processes took, filled in when the block ends."""
    started = time.time()
    other_load = OtherLoad(started)
    run = {**fields, "started": started, "load": [os.getloadavg()[0]]}
    yield run
    finished = time.time()
    run.update(finished=finished, load=[run["load"][0], os.getloadavg()[0]],
               other_cpu_share=other_load.share(finished))


# ------------------------------------------------------------------------------------ report
@dataclass(frozen=True)
class Goal:
    """One of the project's goals, in its own words, against the number this run measured."""
    goal: str  # e.g. "Float32 inference at >= 75 % of the measured float32 ceiling"
    value: object  # the measured number the goal is about (None where the case did not complete)
    measured: str  # that number as the report states it
    met: bool

    def line(self):
        return f"- {self.goal}: {self.measured}, {'**met**' if self.met else '**missed**'}."


def _busy_warning(run, cores):
    # With more runnable threads than cores, OpenMP's threads wait for each other at every barrier:
    # times then vary by several x from call to call and against short reference measurements.
    share = run.get("other_cpu_share")
    if share is None:  # no /proc/stat: fall back on the load average at the start
        busy, what = run["load"][0] > 0.5 * cores, "load average above half the core count at the start"
    else:
        busy, what = share > 0.1, f"other processes used {100 * share:.0f} % of the CPU time"
    if not busy:
        return []
    return [f"**Other jobs shared the CPU during this run ({what}): the times below, and what is computed "
            "from them, are not reliable; rerun on a quiet machine.**", ""]


def _other_share_text(run):
    share = run.get("other_cpu_share")
    if share is None:
        return "CPU time of other processes not measured"
    return f"other processes used {100 * share:.1f} % of the machine's CPU time during the run"


def run_header(title, run, info, software, limited):
    """The lines that open a section: what ran when and for how long, on what machine, with what load.
    ``software``: the versions to name after torch's; ``limited``: what ran on ``run["threads"]`` threads."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["started"]))
    minutes = (run["finished"] - run["started"]) / 60
    gpu = f"; GPU {info['gpu']}" if info.get("gpu") else ""
    versions = "".join(f", {text}" for text in software)
    load = run["load"]
    return [
        f"## {title}",
        "",
        f"Generated by `{run['command']}` on {when} ({minutes:.1f} min).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory'] / GIB:.1f} GiB memory{gpu}; Python "
        f"{info['python']}, torch {info['torch']}{versions}; {limited} limited to {run['threads']} threads. Load "
        f"average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f} (it counts the benchmark's own "
        f"threads); {_other_share_text(run)} (times are wall-clock).",
        "",
        *_busy_warning(run, info["cores"]),
    ]


def goals_lines(goals):
    return ["### Goals", "", *(goal.line() for goal in goals)]


class Section:
    """A benchmark's part of a markdown file, between its two markers; the rest of the file is left alone."""

    def __init__(self, name):
        self.start, self.end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"

    def wrap(self, lines):
        return "\n".join([self.start, *lines, self.end])

    def write(self, path, section):
        """Replace this section of ``path`` (or append it)."""
        text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
        if self.start in text and self.end in text:
            before, rest = text.split(self.start, 1)
            text = before + section + rest.split(self.end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # as every tool makes its folders
        with open(path, "w") as f:
            f.write(text)


# ------------------------------------------------------------------------------ command line
def read_results(path):
    """The results ``--json`` wrote at ``path``, or the one error naming the file."""
    if not os.path.isfile(path):
        raise MissingFileError(f"--from-json {path} does not exist")
    with open(path) as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"--from-json {path} is not JSON ({error}); give a file written by --json") from None


def parser(prog, doc, threads, repeats, budget):
    """The options both benchmarks take; ``threads`` / ``repeats``: the defaults their help texts name."""
    options = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--small", action="store_true", help="tiny shapes, few repeats: seconds to minutes, for tests")
    # a 0 was taken as "not given": the default
    options.add_argument("--threads", type=positive_int, help=f"threads of torch, BLAS and OpenMP (default {threads})")
    options.add_argument("--repeats", type=positive_int,
                         help=f"timed runs at most, median reported (default {repeats})")
    options.add_argument("--budget", type=float, default=budget,
                         help="seconds of timed runs after which a case stops repeating")
    options.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                         help="a fresh process per case (default, except with --small)")
    options.add_argument("--no-isolate", dest="isolate", action="store_false")
    options.add_argument("--output", default="docs/benchmarks.md", help="markdown file whose section is (re)written")
    options.add_argument("--json", help="also write the raw results here (after every case)")
    options.add_argument("--from-json", help="do not run: report the results saved with --json")
    options.add_argument("--worker", help=argparse.SUPPRESS)
    return options


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's command line: run it (or read ``--from-json``), print its section on stdout and write it
    to ``--output`` where ``writes_docs(args)``; progress goes to stderr."""
    prog: str
    parse_args: Callable  # argv -> args (defaults filled in, except under --worker / --from-json)
    run_worker: Callable  # one case (a JSON-able dict) -> its result, in this process
    run_all: Callable  # args -> the JSON-able data ``render`` reports
    render: Callable  # data -> the section's markdown
    section: Section
    writes_docs: Callable  # args -> whether to write the section into --output
    worker_log_level: int = logging.WARNING

    def main(self, argv=None):
        """0 on success; bad input (a missing file, an unknown config key) is one line on stderr and status
        1, argparse's usage errors status 2."""
        with reporting_errors(self.prog):
            args = self.parse_args(argv)
            if args.worker:
                logging.basicConfig(level=self.worker_log_level, stream=sys.stderr,
                                    format="    %(asctime)s %(message)s")
                with contextlib.redirect_stdout(sys.stderr):  # what libraries print is not the result
                    result = self.run_worker(json.loads(args.worker))
                print(json.dumps(result))
                return 0
            self.check_outputs(args)  # before minutes of measuring, not after
            if args.from_json:
                text = self.render_saved(args.from_json)
            else:
                limit_threads(args.threads)
                with contextlib.redirect_stdout(sys.stderr):  # fastreid's ranking prints notes: not the report
                    data = self.run_all(args)
                text = self.render(data)
        print(text)
        if self.writes_docs(args):
            self.section.write(args.output, text)
            log(f"wrote {args.output}")
        return 0

    def check_outputs(self, args):
        if args.json and not args.from_json:
            check_output_file(args.json, "--json")
        if self.writes_docs(args):
            check_output_file(args.output, "--output")

    def render_saved(self, path):
        """The section of the results saved at ``path``; a file of other content is the one error naming it."""
        data = read_results(path)
        try:
            return self.render(data)
        except (KeyError, TypeError, IndexError, AttributeError) as error:
            raise InputError(f"--from-json {path} does not hold this benchmark's results ({type(error).__name__}: "
                             f"{error}); give a file its --json wrote") from None
