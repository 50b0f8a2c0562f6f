"""Bad inputs through the command line (issue 12, items 1 and 7): how many are refused with one clear line.

Runs every case of the bad-input table (``tests/unit/reliability/bad_input_cases.py``, the table the test
suite runs) through ``byzlab`` in-process (typer's runner), each in a fresh sandbox directory, with Ray
replaced by a refusal, and counts

- clear lines: exit 2 and exactly one ``error: ...`` line that names what the case expects (the field or
  file), nothing on stdout;
- tracebacks: an exception escaped the command; accepted (of them): the command went on to start Ray;
- wrote files: any file or folder under the sandbox appeared, changed or went.

The counts, per group and in total, and every case that is not a clear line are written to
``benchmarks/results/bad_inputs.md``.

    python benchmarks/bad_inputs.py
"""

from __future__ import annotations

import collections
import platform
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/aggregators.py would shadow the aggregators package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "unit" / "reliability"))

from bad_input_cases import cases, run_case  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bad_inputs.md"
COLUMNS = ("bad inputs tried", "clear lines", "tracebacks", "accepted (of them)", "wrote files")


def _count(rows: list[tuple[str, bool, bool, bool, bool]]) -> tuple[int, ...]:
    return (len(rows), *(sum(row[k] for row in rows) for k in range(1, 5)))


def main() -> None:
    table = cases()
    rows, problems, started = [], [], time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for i, case in enumerate(table):
            outcome = run_case(case, Path(scratch) / str(i))
            clear = outcome.clear(case.expect)
            rows.append((case.group, clear, outcome.traceback is not None, outcome.accepted, bool(outcome.wrote)))
            if not clear or outcome.wrote:
                said = outcome.traceback or " / ".join(outcome.lines) or "(nothing)"
                problems.append(f"| {case.group} | {case.name} | {outcome.exit_code} | "
                                f"{said.replace(scratch, '<sandbox>').replace('|', '/')[:200]} | "
                                f"{', '.join(outcome.wrote[:3])} |")
    seconds = time.perf_counter() - started
    groups = collections.defaultdict(list)
    for row in rows:
        groups[row[0]].append(row)
    lines = [
        "# Bad inputs",
        "",
        f"`python benchmarks/bad_inputs.py` on {platform.machine()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}: every case of `tests/unit/reliability/bad_input_cases.py` through "
        f"`byzlab` ({seconds:.0f} s). A clear line: exit 2, one `error:` line naming the field or file, "
        "nothing on stdout; Ray is never started.",
        "",
        f"| group | {' | '.join(COLUMNS)} |",
        "| --- |" + " ---: |" * len(COLUMNS),
        *(f"| {group} | {' | '.join(map(str, _count(found)))} |" for group, found in groups.items()),
        f"| **all** | {' | '.join(f'**{n}**' for n in _count(rows))} |",
        "",
    ]
    if problems:
        lines += ["## Not a clear line", "", "| group | case | exit | said | wrote |", "| --- | --- | ---: | --- | --- |",
                  *problems, ""]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
