"""`python -m bench.profile_summary <collapsed-stacks-file>`: the top frames of a py-spy profile.

The file is py-spy's `--format raw` output (one line per distinct stack, `frame;frame;…;leaf count`, each
frame `function (file:line)`), as `CAREPLAN_BENCH_PROFILE=dir python -m bench …` writes one per
`careplan serve` (`dir/<name>-<replica>.txt`). Lines are folded into functions (`function (file)`, the line
numbers dropped); a function's inclusive time counts the samples whose stack holds it (once per stack, even
when it recurses), its self time those where it is the leaf. py-spy records without `--idle` here, so the
samples are of threads on a CPU; at `--rate` samples a second they are CPU seconds. SQLAlchemy's asyncio
layer runs statements in greenlets, which py-spy shows as stacks of their own (rooted at e.g.
`Connection.execute`): their time is in the self and package tables but not under the handler that awaited
them. `--exclude REGEX` drops whole stacks (e.g. `_find_and_load`: the imports at start-up); `--callers REGEX`
adds where the matching leaf functions are called from (e.g. `_SelectorSocketTransport.write`)."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>.*?)(?::\d+)?\)$")
# Frames nearly every stack passes through (the interpreter's and the event loop's), left out of the
# inclusive table unless `--plumbing` is given; they stay in the self and package tables.
PLUMBING = r"\((<frozen runpy>|asyncio/(runners|base_events|events)\.py|service/cli\.py)\)$"


@dataclass
class Summary:
    samples: int = 0
    excluded: int = 0
    inclusive: Counter[str] = field(default_factory=Counter)
    self: Counter[str] = field(default_factory=Counter)
    packages: Counter[str] = field(default_factory=Counter)  # self time by top-level package
    callers: Counter[str] = field(default_factory=Counter)  # of the `callers_of` functions: by caller


def parse_line(line: str) -> tuple[list[str], int] | None:
    """A collapsed-stack line as (frames root first, samples); None for a blank or malformed line."""
    stack, _, count = line.strip().rpartition(" ")
    if not stack or not count.isdigit():
        return None
    return stack.split(";"), int(count)


def function_of(frame: str) -> str:
    """`function (file:line)` → `function (file)`; a frame of another shape is kept as it is."""
    match = _FRAME.match(frame)
    return f"{match['function']} ({match['file']})" if match else frame


def package_of(frame: str) -> str:
    """The top-level package (or module) of a frame's file: `faststream/_internal/x.py` → `faststream`,
    `<frozen runpy>` → `<frozen>`, an absolute path → its last directory."""
    match = _FRAME.match(frame)
    if not match:
        return "?"
    path = match["file"]
    if path.startswith("<"):
        return path.split(" ")[0].rstrip(">") + ">"
    parts = [p for p in path.split("/") if p]
    if path.startswith("/"):
        return parts[-2] if len(parts) > 1 else parts[-1]
    return parts[0].removesuffix(".py") if parts else "?"


def summarise(lines: Iterable[str], exclude: Iterable[str] = (), callers_of: str | None = None) -> Summary:
    """Fold the stacks, dropping those with a frame matching one of `exclude`; with `callers_of` (a
    regular expression on `function (file)`) also the samples of matching leaf frames by their caller."""
    patterns = [re.compile(p) for p in exclude]
    callee = re.compile(callers_of) if callers_of else None
    summary = Summary()
    for line in lines:
        parsed = parse_line(line)
        if parsed is None:
            continue
        frames, count = parsed
        if any(p.search(f) for p in patterns for f in frames):
            summary.excluded += count
            continue
        summary.samples += count
        for function in {function_of(f) for f in frames}:
            summary.inclusive[function] += count
        summary.self[function_of(frames[-1])] += count
        summary.packages[package_of(frames[-1])] += count
        if callee and callee.search(function_of(frames[-1])):
            summary.callers[function_of(frames[-2]) if len(frames) > 1 else "(root)"] += count
    return summary


def render(summary: Summary, *, top: int, rate: float, header: list[str], plumbing: bool = False) -> str:
    total = summary.samples or 1
    hidden = re.compile(PLUMBING)

    def table(title: str, counts: Counter[str]) -> list[str]:
        if not plumbing and title == "inclusive time":
            counts = Counter({k: v for k, v in counts.items() if not hidden.search(k)})
        lines = [
            f"top {top} by {title}",
            f"{'incl %':>7} {'self %':>7}  {'incl s':>7} {'self s':>7}  function (file)",
        ]
        for name, _ in counts.most_common(top):
            incl, own = summary.inclusive[name], summary.self[name]
            shares = f"{100 * incl / total:7.1f} {100 * own / total:7.1f}"
            lines.append(f"{shares}  {incl / rate:7.2f} {own / rate:7.2f}  {name}")
        return lines

    out = [f"# {h}" for h in header]
    out.append(
        f"# {summary.samples} samples ({summary.samples / rate:.1f} CPU s at {rate:g} Hz),"
        f" {summary.excluded} more excluded"
    )
    out += ["", *table("inclusive time", summary.inclusive)]
    out += ["", *table("self time", summary.self)]
    out += ["", "self time by package", f"{'self %':>7}  {'self s':>7}  package"]
    out += [
        f"{100 * c / total:7.1f}  {c / rate:7.2f}  {name}" for name, c in summary.packages.most_common(top)
    ]
    if summary.callers:
        out += ["", "callers of the --callers leaf frames", f"{'self %':>7}  {'self s':>7}  caller"]
        out += [
            f"{100 * c / total:7.1f}  {c / rate:7.2f}  {name}" for name, c in summary.callers.most_common(top)
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__)
    parser.add_argument("stacks", type=Path, help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=25, help="functions per table")
    parser.add_argument("--rate", type=float, default=200, help="py-spy's sampling rate (bench/infra.py's)")
    parser.add_argument("--exclude", action="append", default=[], help="drop stacks with a frame matching")
    parser.add_argument(
        "--plumbing", action="store_true", help="keep event-loop frames in the inclusive table"
    )
    parser.add_argument("--callers", help="also: the leaf samples of functions matching this, by caller")
    parser.add_argument("--note", action="append", default=[], help="a header line (e.g. the command)")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args()
    with args.stacks.open(encoding="utf-8", errors="replace") as lines:
        summary = summarise(lines, args.exclude, args.callers)
    header = [
        *args.note,
        f"python -m bench.profile_summary {args.stacks}"
        + "".join(f" --exclude '{e}'" for e in args.exclude)
        + (f" --callers '{args.callers}'" if args.callers else "")
        + (" --plumbing" if args.plumbing else "")
        + f" --top {args.top}",
    ]
    text = render(summary, top=args.top, rate=args.rate, header=header, plumbing=args.plumbing)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
