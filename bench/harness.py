"""The benchmarks' small public harness, shared by every ``cli.py bench`` command: a warm page
cache, timing, ratios, a command's peak memory and the machine's description (their generated
photos are ``shards/synth/photos.py``'s)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from shards.base.errors import WsmlError

SAMPLE_S = 0.02  # /proc sampling period of the process-tree RSS


def warm_page_cache(root: Path) -> None:
    """Read every file once so both contenders read from the page cache."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(1 << 20):
                    pass


LAUNCHER = (
    "import os, sys; pid = os.fork()\n"
    "if pid == 0: os.execv(sys.argv[1], sys.argv[1:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "sys.stderr.write('\\nWSML_MAXRSS %d\\n' % usage.ru_maxrss)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))"
)


def peak_rss(cmd: list[str]) -> dict:
    """Run ``cmd``; return its peak memory in MB: ``process`` (ru_maxrss: the largest single
    process among it and the descendants it waited for) and ``tree`` (the summed PSS of the
    live process tree, sampled from /proc; None without /proc)."""
    launcher = [sys.executable, "-S", "-c", LAUNCHER, *cmd]
    proc = subprocess.Popen(launcher, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stop, tree = threading.Event(), [None]
    sampler = threading.Thread(target=_sample_tree, args=(proc.pid, stop, tree), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    output = proc.stdout.read()
    proc.wait()
    elapsed = time.perf_counter() - t0
    stop.set()
    sampler.join()
    proc.stdout.close()
    if proc.returncode:
        tail = output.decode(errors="replace").strip()[-2000:]
        raise WsmlError(f"{cmd[0]} failed (exit {proc.returncode}): {tail}")
    maxrss = int(output.rsplit(b"WSML_MAXRSS ", 1)[1].split()[0])
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    mb = lambda b: None if b is None else b / 1e6  # noqa: E731
    return {"process_mb": mb(maxrss * scale), "tree_mb": mb(tree[0]), "seconds": elapsed}


class PeakRSS:
    """This process's peak resident set from a point on: ``reset()`` starts the count (Linux's
    ``/proc/self/clear_refs``; elsewhere the peak stays the process's whole-life one) and
    ``gb()`` reads it, so a benchmark's own input generation is not counted in what it times."""

    def __init__(self) -> None:
        self.resettable = False

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False

    def gb(self) -> float:
        if self.resettable:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 2**20  # KiB
        import resource

        scale = 2**30 if sys.platform == "darwin" else 2**20  # ru_maxrss: bytes / KiB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _sample_tree(pid: int, stop: threading.Event, peak: list) -> None:
    """Peak of the process tree's summed PSS (proportional set size: pages shared by forked
    workers count once in total, where summed RSS would count them in every process)."""
    if not os.path.isdir("/proc"):
        return
    while not stop.wait(SAMPLE_S):
        total = 0
        for p in _descendants(pid):
            total += _pss(p)
        peak[0] = max(peak[0] or 0, total)


def _pss(pid: int) -> int:
    """Bytes of a process's PSS (its RSS where smaps_rollup is unavailable); 0 once it exited."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def machine_info() -> dict:
    """CPU model, cores (total and usable), RAM, Python and tar versions."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model
            )
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    tar = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout
    return {
        "cpu": model or platform.machine(),
        "cpu_count": os.cpu_count(),
        "nproc": usable,
        "ram_gb": ram / 1e9,
        "python": platform.python_version(),
        "tar": tar.splitlines()[0] if tar else "?",
        "platform": platform.platform(),
    }


def time_epochs(run: Callable[[], int], repeats: int) -> dict:
    """The median images/s of ``repeats`` calls of ``run`` (each returns its image count)."""
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = run()
        rates.append(n / (time.perf_counter() - t))
    return {"images_per_s": statistics.median(rates), "runs": [round(r, 1) for r in rates]}


def summarize_ratios(ratios: Sequence[float]) -> dict:
    """The median of per-round ratios (each taken within one round of alternating runs, so a
    drift of a shared machine cancels out) and their range."""
    return {
        "median": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
        "runs": [round(r, 3) for r in ratios],
    }


def format_ratio(r: dict, unit: str = "×") -> str:
    """``3.47× (3.20–3.69)``: the median and the range of the rounds (one round: the ratio)."""
    if len(r["runs"]) == 1:
        return f"{r['median']:.2f}{unit}"
    return f"{r['median']:.2f}{unit} ({r['low']:.2f}–{r['high']:.2f})"


def summarize_rounds(rounds: Sequence[dict[str, Sequence[float]]], base: str) -> dict:
    """Rounds of alternating ways, each round ``{way: (train s, scoring s)}``: each way's
    median over the rounds (``WAY_train``, ``WAY_eval``, ``WAY_total``, each its own median)
    and, where ``base`` ran, each other way's total over ``base``'s in the same round: the
    median and range of those ratios (``ratios["papers/sweep"]``)."""
    ways = list(rounds[0])
    out: dict = {"rounds": [{w: list(t) for w, t in r.items()} for r in rounds]}
    for w in ways:
        out[f"{w}_train"] = statistics.median(r[w][0] for r in rounds)
        out[f"{w}_eval"] = statistics.median(r[w][1] for r in rounds)
        out[f"{w}_total"] = statistics.median(sum(r[w]) for r in rounds)
    if base in ways:
        out["ratios"] = {
            f"{w}/{base}": summarize_ratios([sum(r[w]) / sum(r[base]) for r in rounds])
            for w in ways
            if w != base
        }
    return out
