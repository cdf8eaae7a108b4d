"""Mutation run: plant small bugs in a copy of the tree, one at a time, and check that the tests catch each.

Each mutation (listed as data in ``scripts/mutations.py``) names a file, an exact snippet of its source, the
snippet's replacement and the test files to run. For each one this script copies the tree (the files git
tracks or would track; never the working tree itself) into a temporary folder, replaces the snippet there,
runs ``pytest -x -q`` on the named tests with that copy's ``src`` first on the import path, and reports:

- ``caught``: the tests failed (``caught (timeout)``: they ran past ``--timeout``; ``caught (error)``: the
  mutated code did not even import, a sign the mutation should be subtler);
- ``MISSED``: the tests passed with the bug in place;
- ``NOT APPLIED``: the snippet is not in the file, or is there more than once (the code moved: update the
  list); reported loudly and never counted as caught;
- ``NO TESTS``: none of its test files exists in the tree (``--root`` at an older commit); not counted.

Usage (from the repository root)::

    .venv/bin/python scripts/mutate.py            # all mutations, one at a time
    .venv/bin/python scripts/mutate.py --list     # names, areas, files; no run
    .venv/bin/python scripts/mutate.py --only loss_temperature_ignored --only lars_no_weight_decay
    .venv/bin/python scripts/mutate.py --jobs 2 --json mutation-report.json

The unmutated copy is run first on every test file the selection names (``--no-baseline`` skips it): a
failing baseline would make every mutation look caught. Exit status 0 when every selected mutation was
applied and the caught ratio is at least ``--min-caught`` (default 0.95), else 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mutation:
    name: str
    area: str  # loss | optimizer | augmentation | model | engine | memory | resume | evaluation | config | presets
    file: str  # relative to the repository root
    find: str  # exact snippet, present once in the file
    replace: str
    tests: list[str]  # test files (or node ids) that must catch it
    note: str = ""


@dataclass
class Outcome:
    mutation: Mutation
    status: str  # caught | caught (timeout) | caught (error) | MISSED | NOT APPLIED | NO TESTS | BROKEN
    seconds: float = 0.0
    detail: str = ""
    output: str = field(default="", repr=False)

    @property
    def caught(self) -> bool:
        return self.status.startswith("caught")


def load_mutations(path: Path) -> list[Mutation]:
    spec = importlib.util.spec_from_file_location("mutations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    items = [Mutation(**m) for m in module.MUTATIONS]
    names = [m.name for m in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"{path}: duplicate mutation names {duplicates}")
    return items


def tree_files(root: Path) -> list[str]:
    """The files git tracks plus the untracked ones it does not ignore (what a clone with local edits has)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({f for f in out.split("\0") if f and (root / f).is_file()})


def copy_tree(root: Path, files: list[str], dest: Path) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def apply(mutation: Mutation, tree: Path) -> str | None:
    """Replace the snippet in the copy; returns why it could not be applied, or None."""
    path = tree / mutation.file
    if not path.is_file():
        return f"file {mutation.file} not found"
    text = path.read_text()
    count = text.count(mutation.find)
    if count != 1:
        return f"snippet found {count} times in {mutation.file} (must be exactly once)"
    path.write_text(text.replace(mutation.find, mutation.replace))
    return None


def run_tests(tree: Path, tests: list[str], timeout: float, python: str) -> tuple[int | None, str, float]:
    """pytest -x -q on ``tests`` in ``tree`` with the copy's src first on the path; (rc or None, output, s)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", f"--basetemp={tree / '.pytest-tmp'}"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [*cmd, *tests], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out, time.perf_counter() - t0
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:160]
    match = re.search(r"^E\s+(.+)$", output, re.MULTILINE)
    return match.group(1)[:160] if match else ""


def check_imports_from_copy(tree: Path, python: str) -> None:
    """The copy's package must shadow the installed (editable) one, else every mutation would be missed."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    out = subprocess.run(
        [python, "-c", "import simclr; print(simclr.__file__)"], cwd=tree, env=env, capture_output=True, text=True
    )
    if out.returncode != 0 or not Path(out.stdout.strip()).is_relative_to(tree):
        raise SystemExit(f"the copy's simclr is not the one imported ({out.stdout.strip() or out.stderr.strip()})")


def run_one(mutation: Mutation, source: Path, files: list[str], timeout: float, python: str, keep: bool) -> Outcome:
    tree = Path(tempfile.mkdtemp(prefix=f"mutate-{mutation.name}-"))
    try:
        copy_tree(source, files, tree)
        why = apply(mutation, tree)
        if why is not None:
            return Outcome(mutation, "NOT APPLIED", detail=why)
        tests = [t for t in mutation.tests if (tree / t.split("::")[0]).exists()]
        if not tests:  # e.g. --root at an older commit, before these tests existed
            return Outcome(mutation, "NO TESTS", detail=f"none of {mutation.tests} in the tree")
        rc, output, seconds = run_tests(tree, tests, timeout, python)
        if rc is None:
            return Outcome(mutation, "caught (timeout)", seconds, f"ran past {timeout:.0f} s", output)
        if rc == 0:
            return Outcome(mutation, "MISSED", seconds, "the tests passed", output)
        if rc == 1:
            return Outcome(mutation, "caught", seconds, first_failure(output), output)
        if rc in (2, 3) and ("ERROR collecting" in output or "ImportError" in output or "SyntaxError" in output):
            return Outcome(mutation, "caught (error)", seconds, first_failure(output) or "collection error", output)
        return Outcome(mutation, "BROKEN", seconds, f"pytest exit status {rc}: {first_failure(output)}", output)
    finally:
        if keep:
            print(f"  kept {tree}", file=sys.stderr)
        else:
            shutil.rmtree(tree, ignore_errors=True)


def baseline(tests: list[str], source: Path, files: list[str], timeout: float, python: str) -> None:
    tree = Path(tempfile.mkdtemp(prefix="mutate-baseline-"))
    try:
        copy_tree(source, files, tree)
        check_imports_from_copy(tree, python)
        rc, output, seconds = run_tests(tree, tests, timeout * 2, python)
        if rc != 0:
            print(output[-3000:], file=sys.stderr)
            raise SystemExit(f"baseline: the unmutated tests fail (status {rc}); fix them before a mutation run")
        print(f"baseline: {len(tests)} test files pass unmutated ({seconds:.0f} s)", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def table(outcomes: list[Outcome]) -> str:
    width = max(len(o.mutation.name) for o in outcomes)
    lines = [f"{'mutation':<{width}}  {'area':<12} {'result':<17} {'time':>6}  detail"]
    for o in outcomes:
        lines.append(f"{o.mutation.name:<{width}}  {o.mutation.area:<12} {o.status:<17} {o.seconds:>5.0f}s  {o.detail}")
    applied = [o for o in outcomes if o.status not in ("NOT APPLIED", "NO TESTS")]
    caught = [o for o in applied if o.caught]
    lines.append("")
    ratio = len(caught) / len(applied) if applied else 0.0
    lines.append(f"caught {len(caught)} of {len(applied)} applied mutations ({100 * ratio:.1f} %)")
    for label in ("MISSED", "NOT APPLIED", "NO TESTS", "BROKEN"):
        names = [o.mutation.name for o in outcomes if o.status == label]
        if names:
            lines.append(f"{label} ({len(names)}): {', '.join(names)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", action="append", default=[], help="run this mutation (repeatable)")
    parser.add_argument("--area", action="append", default=[], help="run the mutations of this area (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="mutations run at once (default 1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutation's tests (default 300)")
    parser.add_argument("--mutations", default=str(Path(__file__).with_name("mutations.py")), help="the list")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--min-caught", type=float, default=0.95, help="caught ratio for exit status 0")
    parser.add_argument("--json", help="also write the outcomes to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the mutated copies (for debugging)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the project's dependencies")
    parser.add_argument("--root", default=str(ROOT), help="tree to mutate (default: this repository)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()

    mutations = load_mutations(Path(args.mutations))
    unknown = [n for n in args.only if n not in {m.name for m in mutations}]
    if unknown:
        raise SystemExit(f"unknown mutation(s) {unknown}; see --list")
    if args.only:
        mutations = [m for m in mutations if m.name in args.only]
    if args.area:
        mutations = [m for m in mutations if m.area in args.area]
    if args.list:
        for m in mutations:
            print(f"{m.name:<40} {m.area:<12} {m.file:<34} {' '.join(m.tests)}")
        print(f"{len(mutations)} mutations")
        return 0

    files = tree_files(root)
    t0 = time.perf_counter()
    # One snapshot of the tree at the start: edits made while the run goes on do not leak into it.
    source = Path(tempfile.mkdtemp(prefix="mutate-source-"))
    try:
        copy_tree(root, files, source)
        if not args.no_baseline:
            tests = sorted({t.split("::")[0] for m in mutations for t in m.tests})
            tests = [t for t in tests if (source / t).exists()]
            baseline(tests, source, files, args.timeout, args.python)
        else:
            check_imports_from_copy(source, args.python)

        def job(m: Mutation) -> Outcome:
            outcome = run_one(m, source, files, args.timeout, args.python, args.keep)
            print(f"{outcome.status:<17} {m.name} ({outcome.seconds:.0f} s) {outcome.detail}", flush=True)
            return outcome

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            outcomes = list(pool.map(job, mutations))
    finally:
        shutil.rmtree(source, ignore_errors=True)
    print()
    print(table(outcomes))
    print(f"wall time {time.perf_counter() - t0:.0f} s, {args.jobs} job(s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "name": o.mutation.name,
                        "area": o.mutation.area,
                        "file": o.mutation.file,
                        "status": o.status,
                        "seconds": round(o.seconds, 1),
                        "detail": o.detail,
                    }
                    for o in outcomes
                ],
                indent=2,
            )
        )
    applied = [o for o in outcomes if o.status not in ("NOT APPLIED", "NO TESTS")]
    ratio = sum(o.caught for o in applied) / len(applied) if applied else 0.0
    return 0 if len(applied) == len(outcomes) and ratio >= args.min_caught else 1


if __name__ == "__main__":
    sys.exit(main())
