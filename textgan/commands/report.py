"""``textgan report RUN [RUN ...]``: a run's ``metrics.jsonl`` as a table, one row per evaluation.

Rows are the steps at which ``--rows KEY`` was recorded (default ``unique``, which every
evaluation writes), per phase. A column whose key the evaluation record has shows that value;
any other key (a training statistic such as ``g_entropy``, ``fake_max`` or ``d_loss``) shows the
mean of its records in the same phase since the previous row (steps ``(previous, step]``), so a
row reads "the evaluation at this step and what training logged on the way to it".

    textgan report runs/relgan-coco --keys bleu2,bleu5,self_bleu4,unique,g_entropy,fake_max
    textgan report runs/a runs/b --phase adversarial --keys nll_oracle --best nll_oracle
    textgan report runs/relgan-oracle --keys nll_oracle,nll_test --plot curve.png

``--best KEY`` adds a line with the best row of each run: the lowest value, except for keys that
grow with quality (``bleu*``, ``sacrebleu*``, ``recon_bleu``, ``recon_acc``, ``unique``), where
it is the highest; ``KEY:min`` / ``KEY:max`` choose explicitly. A last line of the file without
its newline (a run writing it at this moment) is left out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from textgan.errors import did_you_mean

HIGHER_IS_BETTER = ("bleu", "sacrebleu", "recon_bleu", "recon_acc", "unique")
_NOT_METRICS = ("step", "phase", "time")


def add_arguments(parser) -> None:
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
                        help="also draw the columns against the step, a panel per column and a "
                             "line per run and phase, into this PNG file")


def read_records(run: str | Path) -> list[dict]:
    """The records of ``RUN/metrics.jsonl`` (or of the file ``run``), in file order."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"`RUN` '{run}' has no metrics.jsonl; give a run directory written by textgan "
            f"train (its output_dir) or the path of a metrics.jsonl file")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1]:  # no final newline: a record being written now
        lines = lines[:-1]
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n} is not a JSON record ({e.msg}); metrics.jsonl holds "
                             f"one JSON object per line") from None
        if not isinstance(record, dict) or "step" not in record or "phase" not in record:
            raise ValueError(f"{path}:{n} is not a textgan metrics record (an object with "
                             f"'step' and 'phase')")
        records.append(record)
    return records


def table_rows(records: list[dict], keys: list[str] | None, rows_key: str,
               phase: str | None = None) -> tuple[list[str], list[dict]]:
    """``(columns, rows)``: one row per ``(phase, step)`` that recorded ``rows_key``, with the
    values of ``keys`` (``None``: every key of those records) as the module docstring says."""
    if phase is not None:
        records = [r for r in records if r["phase"] == phase]
    evals: dict[tuple[str, int], dict] = {}
    for r in records:
        if rows_key in r:
            evals.setdefault((r["phase"], r["step"]), {}).update(r)  # a rewrite wins
    if keys is None:
        keys = list(dict.fromkeys(k for e in evals.values() for k in e if k not in _NOT_METRICS))
    # training records, the last of each (phase, step) (a resumed run rewrites some)
    logged: dict[tuple[str, int], dict] = {}
    for r in records:
        if rows_key not in r:
            logged.setdefault((r["phase"], r["step"]), {}).update(r)
    out, previous = [], {}
    for (ph, step), e in sorted(evals.items(), key=lambda kv: (_order(records, kv[0][0]),
                                                                 kv[0][1])):
        start = previous.get(ph, -math.inf)
        window = [v for (p, s), v in logged.items() if p == ph and start < s <= step]
        row = {"phase": ph, "step": step, "time": e.get("time")}
        for k in keys:
            if k in e:
                row[k] = e[k]
            else:
                vals = [w[k] for w in window if isinstance(w.get(k), (int, float))]
                row[k] = sum(vals) / len(vals) if vals else None
        out.append(row)
        previous[ph] = step
    return keys, out


def _order(records: list[dict], phase: str) -> int:
    return next(i for i, r in enumerate(records) if r["phase"] == phase)


def best_row(rows: list[dict], spec: str) -> tuple[str, dict | None]:
    """``(key, row)``: the row with the best value of ``spec`` (``KEY``, ``KEY:min`` or
    ``KEY:max``; see the module docstring), ``None`` if no row has it."""
    key, _, how = spec.partition(":")
    if how not in ("", "min", "max"):
        raise ValueError(f"`--best` must be KEY, KEY:min or KEY:max, got '{spec}'")
    if not how:
        how = "max" if key.startswith(HIGHER_IS_BETTER) else "min"
    have = [r for r in rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
    if not have:
        return key, None
    pick = max if how == "max" else min
    return key, pick(have, key=lambda r: r[key])


def plot(table: list[dict], keys: list[str], path: str | Path) -> Path:
    """A panel per key (value against step), a line per run and phase; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(len(keys), 3)
    nrows = -(-len(keys) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    lines = list(dict.fromkeys((r["run"], r["phase"]) for r in table))
    for ax, key in zip(axes, keys, strict=False):
        for run, phase in lines:
            pts = [(r["step"], r[key]) for r in table if (r["run"], r["phase"]) == (run, phase)
                   and isinstance(r.get(key), (int, float))]
            if pts:
                label = f"{run} {phase}" if len({r for r, _ in lines}) > 1 else phase
                ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, label=label)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
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
        return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def render(columns: list[str], rows: list[list], csv: bool) -> str:
    if csv:
        return "\n".join(",".join(_fmt(v) for v in r) for r in [columns, *rows]) + "\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
    if args.keys is not None and not keys:
        raise ValueError("`--keys` is empty; give comma-separated metric names, e.g. "
                         "--keys nll_test,bleu2")
    columns = (["run"] if len(args.runs) > 1 else []) + ["phase", "step"]
    columns += ["min"] if args.minutes else []
    runs = {name: read_records(name) for name in args.runs}
    known = {k for records in runs.values() for r in records for k in r
             if k not in _NOT_METRICS}
    phases = list(dict.fromkeys(r["phase"] for records in runs.values() for r in records))
    if args.phase is not None and args.phase not in phases:
        raise ValueError(f"`--phase` '{args.phase}' is in no run (their phases: {phases})"
                         f"{did_you_mean(args.phase, phases)}")
    best_key = args.best.partition(":")[0] if args.best else None
    for k in [args.rows, *(keys or []), *([best_key] if best_key else [])]:
        if k not in known:
            hint = "; choose the rows with --rows KEY" if k == args.rows else ""
            raise ValueError(f"metric '{k}' is in no run{did_you_mean(k, known)}; their "
                             f"metrics: {sorted(known)}{hint}")
    table, bests, all_keys = [], [], None
    for name, records in runs.items():
        run_keys, rows = table_rows(records, keys, args.rows, args.phase)
        all_keys = list(dict.fromkeys([*(all_keys or []), *run_keys]))
        t0 = min((r["time"] for r in records if "time" in r), default=None)
        for row in rows:
            row["run"] = name
            if t0 is not None and row["time"] is not None:
                row["min"] = f"{(row['time'] - t0) / 60:.1f}"
        table += rows
        if args.best:
            bests.append((name, *best_row(rows, args.best)))
    columns += all_keys or []
    print(render(columns, [[row.get(c) for c in columns] for row in table], args.csv), end="")
    if args.plot:
        print(f"wrote {plot(table, all_keys or [], args.plot)}")
    for name, key, row in bests:
        where = f"{row['phase']} step {row['step']}" if row else "no row has it"
        value = f"{_fmt(row[key])} at " if row else ""
        print(f"best {key} of {name}: {value}{where}")
    return 0
