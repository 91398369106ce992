"""Start-up time of the command line: `dsmn-host --help` and every `dsmn-host SUB --help`.

    python3 benchmarks/bench_help.py [--host HOST_DIR] [--reps 5] [--out benchmarks/results/help.json]

Each is a fresh `python3 -m dsmn_host ... --help` process, so the time is interpreter start-up
plus the imports the CLI pays for before printing; the minimum of `--reps` runs is kept (the
machine's other load only ever adds time). `--host` points at another checkout's host/ to
measure it the same way.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def subcommands(env):
    code = ("from dsmn_host.cli import build_parser\n"
            "p = build_parser()\n"
            "a = next(a for a in p._actions if a.__class__.__name__ == '_SubParsersAction')\n"
            "print(' '.join(a.choices))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default=str(ROOT / "host"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "help.json"))
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=args.host)
    seconds = {}
    for sub in [None] + subcommands(env):
        argv = [sys.executable, "-m", "dsmn_host"] + ([sub] if sub else []) + ["--help"]
        runs = []
        for _ in range(args.reps):
            t = time.perf_counter()
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
            runs.append(time.perf_counter() - t)
        seconds[sub or "--help"] = round(min(runs), 3)
        print(f"{sub or '--help':16s} {seconds[sub or '--help']:.3f} s", flush=True)
    result = {"host": args.host, "reps": args.reps, "cpus": os.cpu_count(), "python": platform.python_version(),
              "seconds_min": seconds, "slowest": max(seconds, key=seconds.get), "max_seconds": max(seconds.values())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"slowest {result['slowest']} {result['max_seconds']:.3f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
