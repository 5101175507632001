"""Build the notebooks from their sources and execute them in place, outputs included.

    nice -n 19 .venv/bin/python notebooks/build.py              # every notebook
    nice -n 19 .venv/bin/python notebooks/build.py 01 05        # those whose name starts so
    nice -n 19 .venv/bin/python notebooks/build.py --no-execute # write them without outputs

Each notebook's source is `notebooks/src/<name>.py` in the "percent" format: a line
`# %%` starts a code cell, `# %% [markdown]` a markdown cell whose lines carry a leading
"# "; in code cells an IPython magic is written commented out (`# %matplotlib inline`).
The built `notebooks/<name>.ipynb` is executed top to bottom in a fresh kernel of this
Python (cwd notebooks/), so its stored outputs are what `pytest --nbval` compares
against. Run it again whenever the shipped checkpoint or a notebook changes. It prints
each notebook's wall and kernel CPU time (each must stay under 60 s on 2 CPU cores; on
a machine busy with other work the wall time grows, the CPU time does not) and exits
non-zero when a notebook fails or writes to stderr.
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
BUDGET_S = 60.0  # per notebook, on the 2-core development CPU
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours in kernel tracebacks
MAGIC = re.compile(r"^# %[a-z]")  # a commented IPython magic in a code cell
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def parse_cells(text: str) -> list[tuple[str, str]]:
    """Percent-format source -> [(kind, source)] with kind "code" or "markdown"."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "code"
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"text before the first '# %%' marker: {line!r}")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            bad = [x for x in lines if x and not x.startswith("#")]
            if bad:
                raise ValueError(f"markdown cell lines must start with '#': {bad[0]!r}")
            lines = [x[2:] if x.startswith("# ") else x[1:] for x in lines]
        else:  # jupytext-style commented magics: "# %matplotlib inline"
            lines = [x[2:] if MAGIC.match(x) else x for x in lines]
        body = "\n".join(lines).strip("\n")
        if body:
            out.append((kind, body))
    return out


def build_notebook(source: Path) -> nbformat.NotebookNode:
    cells = [new_markdown_cell(body) if kind == "markdown" else new_code_cell(body)
             for kind, body in parse_cells(source.read_text())]
    for i, cell in enumerate(cells):
        cell["id"] = f"{source.stem[:2]}-{i:02d}"  # stable ids: clean diffs between builds
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    return nb


def children_cpu() -> float:
    """CPU seconds used so far by this process's finished children (the kernels). Unlike
    the wall time it does not grow when other work shares the machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def execute(nb: nbformat.NotebookNode) -> None:
    """Run every cell in a fresh kernel (cwd notebooks/), storing the outputs in `nb`."""
    # store_widget_state=False: an explorer widget's saved state is ~130 KB of random
    # model ids, rewritten at every build; the cell's text form is kept, and a reader runs
    # the cell to get the live widget
    client = NotebookClient(nb, timeout=600, kernel_name=KERNELSPEC["name"],
                            record_timing=False, store_widget_state=False,
                            resources={"metadata": {"path": str(HERE)}})
    client.execute()


def coalesce_streams(nb: nbformat.NotebookNode) -> None:
    """Merge each cell's consecutive stdout (or stderr) chunks into one output: how the
    kernel flushed them depends on the machine's load, and should not show in the diff."""
    for cell in nb.cells:
        merged: list = []
        for out in cell.get("outputs", []):
            prev = merged[-1] if merged else None
            if (out.get("output_type") == "stream" and prev is not None
                    and prev.get("output_type") == "stream" and prev["name"] == out["name"]):
                prev["text"] += out["text"]
            else:
                merged.append(out)
        if "outputs" in cell:
            cell["outputs"] = merged


def stderr_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """Text a notebook wrote to stderr (warnings): a notebook must write none."""
    return [out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("name") == "stderr"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="write without outputs")
    args = parser.parse_args(argv)
    sources = sorted(SOURCES.glob("*.py"))
    if args.names:
        sources = [s for s in sources if any(s.stem.startswith(n) for n in args.names)]
    if not sources:
        print(f"no notebook source matches {args.names} in {SOURCES}", file=sys.stderr)
        return 2
    failed = []
    total = total_cpu = 0.0
    for source in sources:
        nb = build_notebook(source)
        target = HERE / f"{source.stem}.ipynb"
        error = None
        wall = cpu = 0.0
        start, cpu_start = time.perf_counter(), children_cpu()
        if not args.no_execute:
            try:
                execute(nb)
            except CellExecutionError as e:  # keep the outputs so far: they show what broke
                error = e
            wall, cpu = time.perf_counter() - start, children_cpu() - cpu_start
            coalesce_streams(nb)
        total, total_cpu = total + wall, total_cpu + cpu
        nbformat.validate(nb)
        nbformat.write(nb, target)
        warnings = stderr_outputs(nb)
        status = "ok"
        if error is not None:
            last = ANSI.sub("", str(error)).strip().splitlines()[-1]
            status = f"FAILED: {last[:300]}"
        elif wall > BUDGET_S:
            status = f"OVER the {BUDGET_S:.0f} s budget (busy machine? compare the CPU time)"
        elif warnings:
            status = f"wrote to stderr: {warnings[0][:200]!r}"
        if error is not None or warnings:
            failed.append(source.stem)
        print(f"{target.name:<32} {wall:6.1f} s wall {cpu:6.1f} s CPU  {status}", flush=True)
    print(f"{'total':<32} {total:6.1f} s wall {total_cpu:6.1f} s CPU")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
