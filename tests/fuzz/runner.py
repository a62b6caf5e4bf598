"""Run seeded fuzz cases in long-lived forked workers under limits, and classify how each one ended.

    PYTHONPATH=tests python -m fuzz.runner --cases 20000 --seed 1 --json out.json --save-failures failures/

The parent builds the seeds, imports camelid and runs every seed once (so imports, Numba's compiled
helpers and Jinja are warm), then forks a worker that runs cases one after another (a fresh worker
every `recycle` cases, and after one dies). Before each case the worker resets its peak-RSS counter and
lowers its RLIMIT_AS to its current address space plus twice the file plus MEMORY_ALLOWANCE (and 256 MiB
of headroom); it runs the format's target (targets.py) with NumPy's RuntimeWarnings raised as errors.
Outcomes:

- ok: the file loaded; error: a CamelidError with a one-line message. Both pass.
- multiline: a CamelidError whose message has a newline; exception: any other exception (traceback kept);
  memory: a MemoryError, or resident memory that grew by more than twice the file plus MEMORY_ALLOWANCE;
  timeout: more than CPU_BUDGET seconds of CPU time, or no report after WALL_LIMIT seconds of wall time
  (the worker is killed); crash: the worker died by a signal; harness: the fuzz harness itself raised (a bug
  in tests/fuzz, reported like a case so a long run goes on). All of these fail.

Case i of seed S is fully determined by (S, i): its format, seed file and mutations (see `make_case`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.mutate_files import mutate_chat, mutate_legacy, mutate_pytorch, mutate_safetensors  # noqa: E402
from fuzz.mutate_gguf import mutate_gguf  # noqa: E402
from fuzz.seeds import EXTENSIONS, Seed, build_seeds  # noqa: E402

CPU_BUDGET = 2.0  # seconds of CPU time a case may use (the 2 s, measured on CPU time, not wall time)
WALL_LIMIT = 10.0  # seconds of wall time before a case is killed, for a machine that is slow or loaded
MEMORY_ALLOWANCE = 64 << 20  # the interpreter's own working set for one case, on top of twice the file size
PASSING = ("ok", "error")
FAILING = ("multiline", "exception", "memory", "timeout", "crash", "harness")
FORMAT_WEIGHTS = {"gguf": 40, "legacy": 20, "safetensors": 14, "pytorch": 14, "chat": 12}


@dataclass
class Result:
    index: int
    format: str
    seed: str
    description: str
    size: int
    outcome: str
    message: str = ""
    cpu_s: float = 0.0
    rss_growth: int = 0


@dataclass
class Summary:
    cases: int = 0
    seconds: float = 0.0
    by_format: dict = field(default_factory=lambda: defaultdict(Counter))
    failures: list = field(default_factory=list)
    max_cpu_s: float = 0.0
    max_rss_growth: int = 0

    def add(self, r: Result) -> None:
        self.cases += 1
        self.by_format[r.format][r.outcome] += 1
        self.max_cpu_s = max(self.max_cpu_s, r.cpu_s)
        self.max_rss_growth = max(self.max_rss_growth, r.rss_growth)
        if r.outcome in FAILING:
            self.failures.append(r)

    def outcomes(self) -> Counter:
        total = Counter()
        for counts in self.by_format.values():
            total.update(counts)
        return total

    def lines(self) -> list[str]:
        """The figures as printed lines: totals, then cases and outcomes per format."""
        total = self.outcomes()
        out = [f"fuzz: {self.cases} cases in {self.seconds:.0f} s, " + ", ".join(f"{k} {total[k]}" for k in PASSING + FAILING)
               + f"; max CPU {self.max_cpu_s:.2f} s, max RSS growth {self.max_rss_growth / 2**20:.1f} MiB"]
        for fmt in sorted(self.by_format):
            counts = self.by_format[fmt]
            out.append(f"  {fmt:<12} {sum(counts.values()):6d} cases: "
                       + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        return out

    def to_json(self) -> dict:
        return {"cases": self.cases, "seconds": round(self.seconds, 1), "outcomes": dict(self.outcomes()),
                "by_format": {k: dict(v) for k, v in self.by_format.items()}, "max_cpu_s": round(self.max_cpu_s, 3),
                "max_rss_growth": self.max_rss_growth, "failures": [asdict(r) for r in self.failures]}


MUTATORS = {"gguf": lambda s, rng: mutate_gguf(s.image, rng), "legacy": lambda s, rng: mutate_legacy(s.image, rng),
            "safetensors": lambda s, rng: mutate_safetensors(s.data, rng),
            "pytorch": lambda s, rng: mutate_pytorch(s.data, rng), "chat": lambda s, rng: mutate_chat(s.data, rng)}


def make_case(seeds: list[Seed], master_seed: int, index: int) -> tuple[Seed, bytes, str]:
    """Case `index` of campaign `master_seed`: (seed file, mutated bytes, description)."""
    rng = random.Random(f"camelid-fuzz:{master_seed}:{index}")
    formats = sorted({s.format for s in seeds})
    fmt = rng.choices(formats, [FORMAT_WEIGHTS[f] for f in formats])[0]
    seed = rng.choice([s for s in seeds if s.format == fmt])
    data, description = MUTATORS[fmt](seed, rng)
    return seed, data, description


def _status_kib(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def _run_one(path: str, fmt: str, size: int) -> dict:
    """Run one case in this (worker) process under the case's limits; returns its report."""
    from camelid.errors import CamelidError
    from fuzz.targets import TARGETS

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident size (VmHWM) to the current one
    except OSError:
        pass
    rss_start = _status_kib("VmRSS") << 10
    limit = (_status_kib("VmSize") << 10) + 2 * size + MEMORY_ALLOWANCE + (256 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    report = {"outcome": "ok", "message": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # NumPy's overflow and invalid-value warnings
            for step in TARGETS[fmt]:
                try:
                    step(path)
                except CamelidError as exc:
                    message = str(exc)
                    if not message or "\n" in message:
                        report = {"outcome": "multiline", "message": message}
                        break
                    report = {"outcome": "error", "message": message}
    except MemoryError:
        report = {"outcome": "memory", "message": traceback.format_exc(limit=-12)}
    except BaseException:  # noqa: BLE001 - every other exception is what the fuzz looks for
        report = {"outcome": "exception", "message": traceback.format_exc(limit=-12)}
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report["cpu_s"] = usage.ru_utime + usage.ru_stime - cpu_start
    report["rss_growth"] = max(0, (_status_kib("VmHWM") << 10) - rss_start)
    if report["outcome"] in PASSING and report["cpu_s"] > CPU_BUDGET:
        report.update(outcome="timeout", message=f"{report['cpu_s']:.2f} s of CPU time (budget {CPU_BUDGET} s)")
    elif report["outcome"] in PASSING and report["rss_growth"] > 2 * size + MEMORY_ALLOWANCE:
        report.update(outcome="memory", message=f"resident memory grew by {report['rss_growth'] >> 20} MiB for a {size}-byte file")
    return report


def _worker(seeds: list[Seed], master_seed: int, indices: range, directory: Path, report_fd: int) -> None:
    """Run cases `indices` one after another, one JSON line per case on report_fd; never returns."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        for index in indices:
            try:
                seed, data, description = make_case(seeds, master_seed, index)
                path = directory / f"case{EXTENSIONS[seed.format]}"
                path.write_bytes(data)
                report = _run_one(str(path), seed.format, len(data))
            except Exception:
                report = {"index": index, "harness_error": traceback.format_exc()}
                os.write(report_fd, json.dumps(report).encode() + b"\n")
                continue
            line = {**report, "index": index, "format": seed.format, "seed": seed.name, "description": description,
                    "size": len(data)}
            line["message"] = line["message"][:20000]
            os.write(report_fd, json.dumps(line).encode() + b"\n")
    finally:
        os._exit(0)


class _Worker:
    """A forked worker running cases start, start+1, ... < stop; reads its reports with a wall-time limit per case."""

    def __init__(self, seeds: list[Seed], master_seed: int, start: int, stop: int, directory: Path):
        self.next, self.stop = start, stop
        read_fd, write_fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(read_fd)
            _worker(seeds, master_seed, range(start, stop), directory, write_fd)
        os.close(write_fd)
        self.fd, self.buffer = read_fd, b""

    def reports(self):
        """Yield each case's report; after a kill or a death, yield the failed case's report and stop."""
        while True:
            deadline = time.monotonic() + WALL_LIMIT
            while b"\n" not in self.buffer:
                ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    os.kill(self.pid, signal.SIGKILL)
                    yield self._dead("timeout", f"killed after {WALL_LIMIT:.0f} s of wall time")
                    return
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    status = self._reap()
                    if os.WIFSIGNALED(status):
                        yield self._dead("crash", f"the worker died by signal {signal.Signals(os.WTERMSIG(status)).name}")
                    elif self.next < self.stop:
                        yield self._dead("crash", f"the worker exited with status {os.WEXITSTATUS(status)} before reporting")
                    return
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            report = json.loads(line)
            if "harness_error" in report:
                report = {"index": report["index"], "outcome": "harness", "cpu_s": 0.0, "rss_growth": 0,
                          "message": f"the fuzz harness itself failed:\n{report['harness_error']}"}
            self.next = report["index"] + 1
            yield report

    def _reap(self) -> int:
        os.close(self.fd)
        return os.waitpid(self.pid, 0)[1]

    def _dead(self, outcome: str, message: str) -> dict:
        if outcome == "timeout":
            self._reap()
        report = {"index": self.next, "outcome": outcome, "message": message, "cpu_s": 0.0, "rss_growth": 0}
        self.next += 1
        return report


def format_of(path: str | Path) -> str:
    """The fuzz format of a saved case, from its name and first bytes."""
    path = Path(path)
    if path.suffix in (".gguf", ".safetensors", ".json"):
        return {".gguf": "gguf", ".safetensors": "safetensors", ".json": "chat"}[path.suffix]
    with open(path, "rb") as f:
        return "pytorch" if f.read(2) == b"PK" else "legacy"


def run_file(path: str | Path, fmt: str | None = None) -> dict:
    """Run one saved case in a forked child, as a worker runs a case; returns its report."""
    path = str(path)
    fmt = fmt or format_of(path)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.write(write_fd, json.dumps(_run_one(path, fmt, os.path.getsize(path))).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    ready, _, _ = select.select([read_fd], [], [], WALL_LIMIT)
    while ready:
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        ready, _, _ = select.select([read_fd], [], [], WALL_LIMIT)
    os.close(read_fd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    if not ready:
        return {"outcome": "timeout", "message": f"killed after {WALL_LIMIT:.0f} s of wall time"}
    if not chunks:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        return {"outcome": "crash", "message": f"the child died ({signal.Signals(sig).name if sig else 'no report'})"}
    return json.loads(b"".join(chunks))


def warm_up(seeds: list[Seed], directory: Path) -> None:
    """Run every seed once in this process; each must load (a seed that fails is a broken harness)."""
    from fuzz.targets import TARGETS, warm_up as import_all

    import_all()
    for seed in seeds:
        path = directory / f"warm-{seed.name}{EXTENSIONS[seed.format]}"
        path.write_bytes(seed.data)
        for step in TARGETS[seed.format]:
            step(str(path))


def _fill_case(report: dict, seeds: list[Seed], master_seed: int) -> bytes:
    """Complete a report that a dead worker or the harness could not fill (format, seed, description,
    size); return the case's file, or b"" when the mutators themselves fail on it."""
    try:
        seed, data, description = make_case(seeds, master_seed, report["index"])
    except Exception:  # noqa: BLE001 - reported as the case's "harness" outcome already
        report.setdefault("format", "harness")
        report.update({k: report.get(k, v) for k, v in (("seed", "?"), ("description", ""), ("size", 0))})
        return b""
    report.update({k: report.get(k, v) for k, v in (("format", seed.format), ("seed", seed.name),
                                                      ("description", description), ("size", len(data)))})
    return data


def run_campaign(n_cases: int, master_seed: int = 0, formats: tuple[str, ...] = tuple(EXTENSIONS), *,
                 time_limit: float | None = None, save_failures: Path | None = None, progress: bool = False,
                 recycle: int = 250, save_examples: Path | None = None, examples_per_kind: int = 3) -> Summary:
    """Run cases 0..n_cases-1 of campaign master_seed (stopping early after time_limit seconds).

    A worker runs `recycle` cases and is replaced; one that dies or overruns is replaced at the next case.
    Failing cases are written to save_failures, and the first examples_per_kind passing cases of each
    format and outcome to save_examples (named INDEX-SEED-OUTCOME.EXT), when those are given.
    """
    kept: Counter = Counter()
    seeds = build_seeds(formats)
    summary = Summary()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="camelid-fuzz-") as tmp:
        directory = Path(tmp)
        warm_up(seeds, directory)
        index = 0
        while index < n_cases and (time_limit is None or time.monotonic() - start < time_limit):
            worker = _Worker(seeds, master_seed, index, min(n_cases, index + recycle), directory)
            for report in worker.reports():
                data = _fill_case(report, seeds, master_seed) if "format" not in report else None
                result = Result(**{k: report[k] for k in Result.__dataclass_fields__})
                summary.add(result)
                failing = result.outcome in FAILING
                target = save_failures if failing else save_examples
                if target is not None and (failing or kept[result.format, result.outcome] < examples_per_kind):
                    data = _fill_case({"index": result.index}, seeds, master_seed) if data is None else data
                    if data:
                        kept[result.format, result.outcome] += 1
                        target.mkdir(parents=True, exist_ok=True)
                        name = f"{master_seed}-{result.index}-{result.seed}-{result.outcome}{EXTENSIONS[result.format]}"
                        (target / name).write_bytes(data)
                if progress and summary.cases % 1000 == 0:
                    summary.seconds = time.monotonic() - start
                    print(summary.lines()[0], file=sys.stderr, flush=True)
                if time_limit is not None and time.monotonic() - start > time_limit:
                    os.kill(worker.pid, signal.SIGKILL)
                    worker._reap()
                    break
            index = worker.next
    summary.seconds = time.monotonic() - start
    return summary


def machine() -> str:
    """The CPU (as lscpu and /proc/cpuinfo name it), its count, and Python's version."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in info:
        model += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"


def results_section(summary: Summary, args: argparse.Namespace) -> str:
    """A Markdown section with the run's figures, for RESULTS.md."""
    total = summary.outcomes()
    lines = [f"## {time.strftime('%Y-%m-%d')}: {summary.cases} cases, seed {args.seed}", "",
             f"- command: `PYTHONPATH=tests python -m fuzz.runner --cases {args.cases} --seed {args.seed}"
             + (f" --time-limit {args.time_limit:g}" if args.time_limit else "") + "`",
             f"- machine: {machine()}",
             f"- {summary.seconds / 60:.1f} minutes with seed building and warm-up, one worker at a time; "
             f"largest CPU time of a case {summary.max_cpu_s:.2f} s, largest RSS growth {summary.max_rss_growth / 2**20:.1f} MiB",
             "", "| format | cases | " + " | ".join(PASSING + FAILING) + " |", "|---" * (2 + len(PASSING + FAILING)) + "|"]
    for fmt in sorted(summary.by_format):
        counts = summary.by_format[fmt]
        lines.append(f"| {fmt} | {sum(counts.values())} | " + " | ".join(str(counts[k]) for k in PASSING + FAILING) + " |")
    lines.append(f"| all | {summary.cases} | " + " | ".join(str(total[k]) for k in PASSING + FAILING) + " |")
    lines += [""] if summary.failures else []
    for r in summary.failures[:20]:
        lines.append(f"- FAIL case {r.index} ({r.format}/{r.seed}: {r.description}): {r.outcome}: "
                     f"{r.message.strip().splitlines()[-1] if r.message.strip() else ''}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Seeded mutation fuzzing of camelid's file readers.")
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="campaign seed: case i of seed S is always the same file")
    p.add_argument("--formats", default=",".join(EXTENSIONS), help="comma-separated subset of " + ", ".join(EXTENSIONS))
    p.add_argument("--time-limit", type=float, help="stop after this many seconds")
    p.add_argument("--json", type=Path, help="write the summary and every failure here")
    p.add_argument("--save-failures", type=Path, help="write each failing case's file into this directory")
    p.add_argument("--save-examples", type=Path, help="write the first few passing cases of each format and outcome here")
    p.add_argument("--examples-per-kind", type=int, default=3, help="how many cases --save-examples keeps per format and outcome")
    p.add_argument("--show", type=int, default=5, help="print the first N failures")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--results", type=Path, help="append the figures as a Markdown section to this file (RESULTS.md)")
    p.add_argument("--replay", type=Path, nargs="+", metavar="FILE",
                   help="run these saved cases instead (after the same warm-up) and print each outcome")
    args = p.parse_args(argv)
    if args.replay:
        with tempfile.TemporaryDirectory(prefix="camelid-fuzz-") as tmp:
            warm_up(build_seeds(tuple(args.formats.split(","))), Path(tmp))
        reports = {str(path): run_file(path) for path in args.replay}
        for path, report in reports.items():
            print(f"{path}: {report['outcome']}: {report['message'].strip().splitlines()[-1] if report['message'] else ''}")
        if args.json:
            args.json.write_text(json.dumps(reports, indent=1))
        return 1 if any(r["outcome"] in FAILING for r in reports.values()) else 0
    summary = run_campaign(args.cases, args.seed, tuple(args.formats.split(",")), time_limit=args.time_limit,
                           save_failures=args.save_failures, progress=args.progress, save_examples=args.save_examples,
                           examples_per_kind=args.examples_per_kind)
    for line in summary.lines():
        print(line)
    print(f"machine: {machine()}")
    for r in summary.failures[:args.show]:
        print(f"\nFAIL case {r.index} ({r.format}/{r.seed}, {r.size} bytes: {r.description}): {r.outcome}\n{r.message}")
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + results_section(summary, args))
    if args.json:
        args.json.write_text(json.dumps({**summary.to_json(), "seed": args.seed, "machine": machine()}, indent=1))
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
