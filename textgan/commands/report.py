"""``textgan report RUN [RUN ...]``: a run's ``metrics.jsonl`` as a table, one row per evaluation.

Rows are the steps at which ``--rows KEY`` was recorded (default ``unique``, which every
evaluation writes), per phase. A column whose key the evaluation record has shows that value;
any other key (a training statistic such as ``g_entropy``, ``fake_max`` or ``d_loss``) shows the
mean of its records in the same phase since the previous row (steps ``(previous, step]``), so a
row reads "the evaluation at this step and what training logged on the way to it". A record
written again for the same phase and step (a run resumed without truncating its file) replaces
the earlier one with the same keys.

    textgan report runs/relgan-coco --keys bleu2,bleu5,self_bleu4,unique,g_entropy,fake_max
    textgan report runs/a runs/b --phase adversarial --keys nll_oracle --best nll_oracle
    textgan report runs/relgan-oracle --keys nll_oracle,nll_test --plot curve.png

``--best KEY`` adds a line with the best row of each run, with that row's other columns: the
lowest value, except for keys that grow with quality (``bleu*``, ``sacrebleu*``,
``recon_bleu``, ``recon_acc``, ``unique``, ``novelty``), where it is the highest; ``KEY:min`` /
``KEY:max`` choose explicitly. ``--plot``: a panel per column against the step within its
phase, a line per run and phase. ``--csv`` writes CSV on stdout and the other lines on stderr.
A last line of the file that is not yet a whole record (a run writing it at this moment) is left
out.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

from textgan.errors import did_you_mean
from textgan.metrics import best_direction

_NOT_METRICS = ("step", "phase", "time")


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directory (with metrics.jsonl) or a metrics.jsonl file")
    parser.add_argument("--keys", default=None,
                        help="comma-separated columns (default: every key of the evaluations)")
    parser.add_argument("--rows", default="unique",
                        help="one row per step that recorded this key (default: unique, i.e. "
                             "every evaluation)")
    parser.add_argument("--phase", default=None,
                        help="only this phase (pretrain, adversarial, mle, d_pretrain, vae)")
    parser.add_argument("--best", default=None, metavar="KEY[:min|:max]",
                        help="add the best row of each run by KEY")
    parser.add_argument("--minutes", action="store_true",
                        help="add the wall minutes since the run's first record (pauses of a "
                             "resumed run included)")
    parser.add_argument("--csv", action="store_true", help="CSV instead of a markdown table")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw the columns against the step into this PNG file")


def read_records(run: str | Path) -> list[dict]:
    """The records of ``RUN/metrics.jsonl`` (or of the file ``run``), in file order."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"`RUN` '{run}' has no metrics.jsonl; give a run directory written by textgan "
            f"train (its output_dir) or the path of a metrics.jsonl file")
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):  # no final newline: a record being written now
                break
            raise ValueError(f"{path}:{n} is not a JSON record ({e.msg}); metrics.jsonl holds "
                             f"one JSON object per line") from None
        if not isinstance(record, dict) or "step" not in record or "phase" not in record:
            raise ValueError(f"{path}:{n} is not a textgan metrics record (an object with "
                             f"'step' and 'phase')")
        records.append(record)
    return records


def _latest(records: list[dict]) -> dict[tuple[str, int], dict]:
    """Per ``(phase, step)``: the union of its records, a later record with the same keys
    replacing an earlier one (not merged into it)."""
    last: dict[tuple, dict] = {}
    for r in records:
        last[(r["phase"], r["step"], frozenset(k for k in r if k != "time"))] = r
    out: dict[tuple[str, int], dict] = {}
    for (phase, step, _), r in last.items():
        out.setdefault((phase, step), {}).update(r)
    return out


def table_rows(records: list[dict], keys: list[str] | None, rows_key: str,
               phase: str | None = None, extra: tuple[str, ...] = ()) -> tuple[list[str],
                                                                              list[dict]]:
    """``(columns, rows)``: one row per ``(phase, step)`` that recorded ``rows_key``, with the
    values of ``keys`` (``None``: every key of those records) and of ``extra`` (computed, not
    columns) as the module docstring says. Rows are in phase order, then step order."""
    if phase is not None:
        records = [r for r in records if r["phase"] == phase]
    order = {p: i for i, p in reversed(list(enumerate(r["phase"] for r in records)))}
    evals = _latest([r for r in records if rows_key in r])
    logged = _latest([r for r in records if rows_key not in r])
    if keys is None:
        keys = list(dict.fromkeys(k for e in evals.values() for k in e if k not in _NOT_METRICS))
    out, previous = [], {}
    for (ph, step), e in sorted(evals.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        start = previous.get(ph, -math.inf)
        window = [v for (p, s), v in logged.items() if p == ph and start < s <= step]
        row = {"phase": ph, "step": step, "time": e.get("time")}
        for k in dict.fromkeys([*keys, *extra]):
            if k in e:
                row[k] = e[k]
            else:
                vals = [w[k] for w in window if isinstance(w.get(k), (int, float))]
                row[k] = sum(vals) / len(vals) if vals else None
        out.append(row)
        previous[ph] = step
    return keys, out


def best_row(rows: list[dict], spec: str) -> tuple[str, dict | None]:
    """``(key, row)``: the row with the best value of ``spec`` (``KEY``, ``KEY:min`` or
    ``KEY:max``; see the module docstring), ``None`` if no row has it."""
    key, how = best_direction(spec)
    have = [r for r in rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
    if not have:
        return key, None
    pick = max if how == "max" else min
    return key, pick(have, key=lambda r: r[key])



def plot(table: list[dict], keys: list[str], path: str | Path) -> Path:
    """A panel per key (value against the step within its phase), a line per run and phase,
    each line one colour in every panel; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(len(keys), 3)
    nrows = -(-len(keys) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    lines = list(dict.fromkeys((r["run"], r["phase"]) for r in table))
    several = len({run for run, _ in lines}) > 1
    for ax, key in zip(axes, keys, strict=False):
        for i, (run, phase) in enumerate(lines):
            pts = [(r["step"], r[key]) for r in table if (r["run"], r["phase"]) == (run, phase)
                   and isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, color=f"C{i % 10}",
                        label=f"{run} {phase}" if several else phase)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step (within its phase)")
        if ax.get_lines():
            ax.legend(fontsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if v and not 1e-3 <= abs(v) < 1e5 else f"{v:.4f}"
    return str(v)


def render(columns: list[str], rows: list[list], as_csv: bool) -> str:
    if as_csv:  # full precision, quoted where needed
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([columns, *[["" if v is None else v for v in r] for r in rows]])
        return buf.getvalue()

    def cell(v) -> str:
        return _fmt(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _check(args, runs: dict[str, list[dict]], keys: list[str] | None) -> None:
    """The arguments against the records: every name exists (with a suggestion if not)."""
    for name, records in runs.items():
        if not records:
            raise ValueError(f"`RUN` '{name}' has no records yet (an empty metrics.jsonl)")
    phases = list(dict.fromkeys(r["phase"] for records in runs.values() for r in records))
    if args.phase is not None and args.phase not in phases:
        raise ValueError(f"`--phase` '{args.phase}' is in no run (their phases: {phases})"
                         f"{did_you_mean(args.phase, phases)}")
    known = {k for records in runs.values() for r in records for k in r
             if k not in _NOT_METRICS and args.phase in (None, r["phase"])}
    where = f"phase '{args.phase}' of any run" if args.phase else "any run"
    named = [("--rows", args.rows), *(("--keys", k) for k in keys or [])]
    named += [("--best", best_direction(args.best)[0])] if args.best else []
    for option, k in named:
        if k not in known:
            hint = "; choose the rows with --rows KEY" if option == "--rows" else ""
            raise ValueError(f"`{option}` '{k}' is not a metric of {where}"
                             f"{did_you_mean(k, known)}; the metrics there: {sorted(known)}"
                             f"{hint}")
    if args.plot is not None:
        plot_path = Path(args.plot)
        if plot_path.suffix.lower() != ".png" or not plot_path.parent.is_dir():
            raise ValueError(f"`--plot` '{args.plot}' must be a .png file in an existing "
                             f"folder")


def run(args) -> int:
    keys = None
    if args.keys is not None:
        keys = list(dict.fromkeys(k.strip() for k in args.keys.split(",") if k.strip()))
        if not keys:
            raise ValueError("`--keys` is empty; give comma-separated metric names, e.g. "
                             "--keys nll_test,bleu2")
    runs = {name: read_records(name) for name in args.runs}
    _check(args, runs, keys)
    best_key = best_direction(args.best)[0] if args.best else None
    table, bests, all_keys = [], [], []
    for name, records in runs.items():
        run_keys, rows = table_rows(records, keys, args.rows, args.phase,
                                    extra=(best_key,) if best_key else ())
        if not rows:
            print(f"note: {name} has no record with '{args.rows}'"
                  + (f" in phase '{args.phase}'" if args.phase else ""), file=sys.stderr)
        all_keys = list(dict.fromkeys([*all_keys, *run_keys]))
        t0 = min((r["time"] for r in records if "time" in r), default=None)
        for row in rows:
            row["run"] = name
            if t0 is not None and row["time"] is not None:
                row["minutes"] = f"{(row['time'] - t0) / 60:.1f}"
        table += rows
        if args.best:
            bests.append((name, *best_row(rows, args.best)))
    if not table:
        raise ValueError(f"no rows: no run has a record with '{args.rows}'"
                         + (f" in phase '{args.phase}'" if args.phase else "")
                         + "; choose the rows with --rows KEY (a key of the training records, "
                           "e.g. d_loss, gives a row per training record)")
    columns = (["run"] if len(runs) > 1 else []) + ["phase", "step"]
    columns += ["minutes"] if args.minutes else []
    columns += all_keys
    print(render(columns, [[row.get(c) for c in columns] for row in table], args.csv), end="")
    side = sys.stderr if args.csv else sys.stdout
    if args.plot:
        print(f"wrote {plot(table, all_keys, args.plot)}", file=side)
    for name, key, row in bests:
        if row is None:
            print(f"best {key} of {name}: no row has it", file=side)
            continue
        others = ", ".join(f"{k}={_fmt(row.get(k))}" for k in all_keys
                           if k != key and row.get(k) is not None)
        print(f"best {key} of {name}: {_fmt(row[key])} at {row['phase']} step {row['step']}"
              + (f" ({others})" if others else ""), file=side)
    return 0
