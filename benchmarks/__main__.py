"""Run every benchmark module (or those named on the command line), print its figures and write
them into docs/performance.md (benchmarks/_doc.py: full runs by default, quick runs with
``--write-docs``). Several modules run one process each: a figure never depends on what an
earlier benchmark left in the process (a fragmented heap makes heap readings dearer)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

from benchmarks import _doc


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    write_docs = _doc.should_write(argv)
    names = [a for a in argv if a not in ("--write-docs", "--no-write-docs")]
    modules = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if names:
        modules = [m for m in modules if any(a in m for a in names)]
    if write_docs:  # a missing table fails now, not after the run
        text = _doc.PAGE.read_text(encoding="utf-8")
        for name in modules:
            _doc.region(text, _doc.key(name), _doc.PAGE)
    if len(modules) > 1:
        flags = [a for a in argv if a in ("--write-docs", "--no-write-docs")]
        failed = [name for name in modules if subprocess.run([sys.executable, "-m", "benchmarks", name, *flags]).returncode]
        if failed:
            print(f"failed: {', '.join(failed)}", flush=True)
        return 1 if failed else 0
    for name in modules:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}: {(module.__doc__ or '').strip().splitlines()[0]}", flush=True)
        figures = module.run()
        for figure in figures:
            print("  " + figure.line(), flush=True)
        if write_docs:
            bench = _doc.key(name)
            _doc.write(_doc.PAGE, bench, figures, _doc.run_line(bench))
            print(f"  -> {_doc.PAGE.name}, bench:{bench}", flush=True)
    if not write_docs:
        print(f"(figures not written to {_doc.PAGE}: --write-docs or REER_BENCH_WRITE_DOCS=1 writes them)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
