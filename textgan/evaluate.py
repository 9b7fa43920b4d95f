"""``textgan eval``: BLEU / Self-BLEU / diversity metrics on text files, or NLLs and BLEU on a run.

File mode (plain text, one sentence per line, whitespace tokens; ``--word-split punctuation``
also splits punctuation marks off as ``nltk.word_tokenize`` does, which is how Texygen's and
RelGAN's code tokenise untokenised text before BLEU)::

    textgan eval --hyp samples.txt --ref test.txt [--metrics bleu2,bleu4,self_bleu4,distinct2]
                 [--num-hyps N] [--num-refs M] [--train train.txt] [--word-split punctuation]
                 [--json] [--out FILE]

Run mode (a run directory or one of its checkpoints)::

    textgan eval RUN [--n N] [--tau T] [--seed S] [--json] [--out DIR]
    textgan eval RUN --temperature-sweep 0.6,0.8,1.0,1.2,1.5 [--out DIR]

The temperature sweep is the quality-diversity protocol of Caccia et al. (2020), "Language GANs
falling short": the model is sampled at several softmax temperatures and, at each, quality
(BLEU-4, or NLL_oracle for the synthetic oracle benchmark) and diversity (Self-BLEU-4, or
NLL_test) are measured; the curve is written to ``sweep.csv``, ``sweep.json`` and
``quality_diversity.png``.

BLEU follows the Texygen protocol (Zhu et al. 2018), see :mod:`textgan.metrics`.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import re
import sys
from pathlib import Path

from textgan import metrics as M
from textgan.words import WORD_SPLITS, split_words

DEFAULT_FILE_METRICS = "bleu2,bleu3,bleu4,bleu5,self_bleu4,distinct1,distinct2,mean_length"
DEFAULT_RUN_TEXT_METRICS = "bleu2,bleu3,bleu4,bleu5,self_bleu4"
MAX_BLEU_ORDER = 5
MAX_DISTINCT_ORDER = 9
_KNOWN = (
    [f"bleu{n}" for n in range(1, MAX_BLEU_ORDER + 1)]
    + [f"self_bleu{n}" for n in range(1, MAX_BLEU_ORDER + 1)]
    + [f"distinct{n}" for n in range(1, 5)]
    + ["mean_length", "sacrebleu", "novelty"]
)
_PATTERN = re.compile(r"^(bleu|self_bleu|distinct)(\d+)$")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    head = (parser.description or "").rstrip(". ")
    parser.description = (head + ". " if head else "") + (
        "File mode: --hyp FILE --ref FILE. Run mode: a run directory or checkpoint.")
    parser.add_argument("run", nargs="?", default=None, metavar="RUN",
                        help="run directory (newest checkpoint) or checkpoint directory")
    files = parser.add_argument_group("file mode")
    files.add_argument("--hyp", default=None, help="generated sentences, one per line")
    files.add_argument("--ref", default=None, help="reference sentences, one per line")
    files.add_argument("--train", default=None,
                       help="training sentences, one per line (for `novelty`)")
    files.add_argument("--num-hyps", type=int, default=None, metavar="N",
                       help="use only the first N hypotheses")
    files.add_argument("--num-refs", type=int, default=None, metavar="M",
                       help="use only the first M references")
    files.add_argument("--word-split", choices=WORD_SPLITS, default="whitespace",
                       help="how lines become words: whitespace (default), or punctuation "
                            "marks split off as nltk.word_tokenize does (Texygen / RelGAN)")
    parser.add_argument(
        "--metrics", default=None,
        help="comma-separated: bleuN, self_bleuN (N 1..5), distinctN, mean_length, sacrebleu, "
             f"novelty (needs --train). Default (files): {DEFAULT_FILE_METRICS}; "
             f"(text runs): {DEFAULT_RUN_TEXT_METRICS} plus nll_test")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--out", default=None,
                        help="file mode: also write the output to this FILE; run mode: a "
                             "directory for eval.json / sweep.{csv,json} / quality_diversity.png")
    runs = parser.add_argument_group("run mode")
    runs.add_argument("--n", type=int, default=1000, help="number of samples (default 1000)")
    runs.add_argument("--tau", type=float, default=1.0, help="sampling temperature (> 0)")
    runs.add_argument("--seed", type=int, default=0, help="sampling seed")
    runs.add_argument("--temperature-sweep", default=None, metavar="T1,T2,...",
                      help="evaluate at each temperature (e.g. 0.6,0.8,1.0,1.2,1.5) and plot "
                           "the quality-diversity curve")


def run(args: argparse.Namespace) -> int:
    if args.run is not None:
        if args.hyp or args.ref or args.train:
            raise ValueError("give either a RUN directory or --hyp/--ref files, not both")
        return _run_mode(args)
    if args.temperature_sweep:
        raise ValueError("--temperature-sweep needs a RUN directory or checkpoint")
    if not args.hyp or not args.ref:
        raise ValueError("give --hyp FILE and --ref FILE (file mode) or a RUN directory")
    return _file_mode(args)


# --------------------------------------------------------------------------------------------
# Metric names and computation
# --------------------------------------------------------------------------------------------


def parse_metrics(spec: str) -> list[str]:
    """Normalised metric names from a comma-separated list; unknown names are a ValueError."""
    names = []
    for raw in spec.split(","):
        name = raw.strip().lower().replace("-", "_")
        if not name:
            continue
        m = _PATTERN.match(name)
        ok = name in ("mean_length", "sacrebleu", "novelty")
        if m:
            n = int(m.group(2))
            limit = MAX_DISTINCT_ORDER if m.group(1) == "distinct" else MAX_BLEU_ORDER
            ok = 1 <= n <= limit
            if not ok:
                raise ValueError(f"metric '{raw.strip()}': the order must be in 1..{limit}")
        if not ok:
            close = difflib.get_close_matches(name, _KNOWN, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown metric '{raw.strip()}'{hint} Supported: bleuN, "
                             "self_bleuN (N 1..5), distinctN, mean_length, sacrebleu, novelty")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("--metrics names no metric")
    return names


def compute_metrics(names: list[str], hyps: list[list[str]], refs: list[list[str]] | None,
                    train: list[list[str]] | None = None, progress: bool = True) -> dict:
    """The metrics ``names`` (see :func:`parse_metrics`) of token-list hypotheses.

    BLEU and Self-BLEU orders are computed together (one pass each). ``sacrebleu`` adds a
    ``sacrebleu_signature`` entry; it needs one reference per hypothesis.
    """
    from tqdm.auto import tqdm

    bleu_ns = [int(n[4:]) for n in names if n.startswith("bleu")]
    self_ns = [int(n[9:]) for n in names if n.startswith("self_bleu")]
    jobs = []
    if bleu_ns:
        jobs.append("bleu")
    if self_ns:
        jobs.append("self_bleu")
    jobs += [n for n in names if not n.startswith(("bleu", "self_bleu"))]
    values: dict = {}
    for job in tqdm(jobs, desc="metrics", disable=not progress or None, leave=False):
        if job == "bleu":
            if not refs:
                raise ValueError("BLEU needs references")
            values.update({f"bleu{n}": v for n, v in M.bleu_scores(hyps, refs, bleu_ns).items()})
        elif job == "self_bleu":
            values.update({f"self_bleu{n}": v
                           for n, v in M.self_bleu_scores(hyps, self_ns).items()})
        elif job.startswith("distinct"):
            values[job] = M.distinct_n(hyps, int(job[8:]))
        elif job == "mean_length":
            values[job] = M.mean_length(hyps)
        elif job == "novelty":
            if train is None:
                raise ValueError("metric 'novelty' needs --train FILE (the training sentences)")
            values[job] = M.novelty(hyps, train)
        elif job == "sacrebleu":
            if not refs or len(refs) != len(hyps):
                raise ValueError(
                    f"metric 'sacrebleu' needs a parallel reference file with one line per "
                    f"hypothesis; got {len(hyps)} hypotheses and {len(refs or [])} references "
                    "(use --num-hyps/--num-refs to align them)")
            res = M.corpus_bleu_sacrebleu([" ".join(h) for h in hyps],
                                          [" ".join(r) for r in refs])
            values["sacrebleu"] = res.score
            values["sacrebleu_signature"] = res.signature
    ordered = {}
    for name in names:
        ordered[name] = values[name]
        if name == "sacrebleu":
            ordered["sacrebleu_signature"] = values["sacrebleu_signature"]
    return ordered


def format_table(values: dict) -> str:
    """A two-column ``metric | value`` table."""
    width = max([len("metric")] + [len(k) for k in values])
    lines = [f"{'metric':<{width}} | value", f"{'-' * width}-|-{'-' * 10}"]
    for k, v in values.items():
        shown = "n/a" if v is None else f"{v:.6f}" if isinstance(v, float) else str(v)
        lines.append(f"{k:<{width}} | {shown}")
    return "\n".join(lines) + "\n"


def _render(values: dict, as_json: bool) -> str:
    return json.dumps(values, indent=2) + "\n" if as_json else format_table(values)


# --------------------------------------------------------------------------------------------
# File mode
# --------------------------------------------------------------------------------------------


def read_sentences(path: str, flag: str, limit: int | None = None,
                   word_split: str = "whitespace") -> list[list[str]]:
    """The words of each line of a UTF-8 file (blank lines are empty sentences), split by
    :func:`textgan.words.split_words` (``word_split``: whitespace or punctuation).

    Raises:
        ValueError: if the file is missing, not UTF-8, or contains no sentence.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{flag} file '{path}' does not exist")
    if not p.is_file():
        raise ValueError(f"{flag} '{path}' is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag} file '{path}' is not valid UTF-8 ({e.reason} at byte "
                         f"{e.start})") from None
    if not text.strip():
        raise ValueError(f"{flag} file '{path}' is empty (expected one sentence per line)")
    sentences = [split_words(line, word_split) for line in text.splitlines()]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"the limit for {flag} must be >= 1, got {limit}")
        sentences = sentences[:limit]
    return sentences


def _file_mode(args) -> int:
    names = parse_metrics(args.metrics or DEFAULT_FILE_METRICS)
    how = args.word_split
    hyps = read_sentences(args.hyp, "--hyp", args.num_hyps, how)
    refs = read_sentences(args.ref, "--ref", args.num_refs, how)
    if "novelty" in names and not args.train:
        raise ValueError("metric 'novelty' needs --train FILE (the training sentences)")
    train = read_sentences(args.train, "--train", word_split=how) if args.train else None
    values = compute_metrics(names, hyps, refs, train)
    text = _render(values, args.json)
    sys.stdout.write(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------
# Run mode
# --------------------------------------------------------------------------------------------


def _load_handle(path: str):
    """``load_for_eval`` of the trainer package (imported lazily: torch models and configs)."""
    from textgan.train.common import load_for_eval

    return load_for_eval(path)


def parse_temperatures(spec: str) -> list[float]:
    """``"0.6,0.8,1.0"`` -> ``[0.6, 0.8, 1.0]``; every temperature must be a finite number > 0."""
    temps = []
    for raw in spec.split(","):
        if not raw.strip():
            continue
        try:
            t = float(raw)
        except ValueError:
            raise ValueError(f"--temperature-sweep: '{raw.strip()}' is not a number") from None
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"--temperature-sweep: temperatures must be > 0, got {raw.strip()}")
        temps.append(t)
    if not temps:
        raise ValueError("--temperature-sweep names no temperature")
    return temps


def temperature_sweep(handle, temps: list[float], n: int, seed: int = 0,
                      progress: bool = True) -> list[dict]:
    """Quality and diversity at each sampling temperature (Caccia et al. 2020).

    Args:
        handle: an ``EvalHandle`` (``sample``, ``references``, ``nll_test``, ``nll_oracle``,
            ``is_oracle``).
        temps: the temperatures.
        n: samples per temperature.
        seed: sampling seed (the same at every temperature).

    Returns:
        One row per temperature: ``{"temperature", "nll_oracle", "nll_test"}`` for oracle runs,
        ``{"temperature", "bleu4", "self_bleu4", "nll_test"}`` for text (``nll_test`` may be
        None when the run has no test set).
    """
    from tqdm.auto import tqdm

    if n < 2:
        raise ValueError(f"the sweep needs at least 2 samples per temperature, got {n}")
    ref_set = None
    if not handle.is_oracle:
        ref_set = M.BleuReferences(handle.references, max_n=4)
    rows = []
    for tau in tqdm(temps, desc="temperatures", disable=not progress or None):
        samples = handle.sample(n, tau, seed)
        row: dict = {"temperature": float(tau)}
        if handle.is_oracle:
            row["nll_oracle"] = handle.nll_oracle(samples)
        else:
            row["bleu4"] = ref_set.scores(samples, (4,))[4]
            row["self_bleu4"] = M.self_bleu(samples, 4)
        row["nll_test"] = handle.nll_test(tau)
        rows.append(row)
    return rows


def sweep_axes(rows: list[dict]) -> tuple[str, str]:
    """``(quality key, diversity key)`` for the plot of these sweep rows."""
    if rows and "nll_oracle" in rows[0]:
        return "nll_oracle", "nll_test"
    return "bleu4", "self_bleu4"


_LABELS = {
    "bleu4": "BLEU-4 (quality, higher is better)",
    "self_bleu4": "Self-BLEU-4 (lower is more diverse)",
    "nll_oracle": "NLL_oracle (quality, lower is better)",
    "nll_test": "NLL_test (diversity / coverage, lower is better)",
}


def plot_quality_diversity(rows: list[dict], path: str | Path, x_key: str, y_key: str) -> Path:
    """Save a quality-diversity curve: one point per temperature, annotated ``tau=...``.

    Rows whose ``x_key`` or ``y_key`` is None are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r[x_key], r[y_key], r.get("temperature")) for r in rows
           if r.get(x_key) is not None and r.get(y_key) is not None]
    pts.sort(key=lambda p: (p[2] is None, p[2]))
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    try:
        if pts:
            xs, ys, ts = zip(*pts, strict=True)
            ax.plot(xs, ys, "-o", color="tab:blue")
            for x, y, t in pts:
                if t is not None:
                    ax.annotate(f"τ={t:g}", (x, y), textcoords="offset points", xytext=(5, 5),
                                fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no values for {x_key} / {y_key}", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlabel(_LABELS.get(x_key, x_key))
        ax.set_ylabel(_LABELS.get(y_key, y_key))
        ax.set_title("Quality-diversity (temperature sweep)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_sweep(rows: list[dict], out_dir: str | Path) -> dict[str, Path]:
    """Write ``sweep.csv``, ``sweep.json`` and ``quality_diversity.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    paths = {"csv": out / "sweep.csv", "json": out / "sweep.json",
             "png": out / "quality_diversity.png"}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in keys})
    paths["json"].write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    plot_quality_diversity(rows, paths["png"], *sweep_axes(rows))
    return paths


def _default_out(run_path: str) -> Path:
    p = Path(run_path)
    return (p if p.is_dir() else p.parent) / "eval"


def _run_mode(args) -> int:
    if args.n < 1:
        raise ValueError(f"`--n` must be >= 1, got {args.n}")
    if not (math.isfinite(args.tau) and args.tau > 0):
        raise ValueError(f"`--tau` must be > 0, got {args.tau}")
    temps = parse_temperatures(args.temperature_sweep) if args.temperature_sweep else None
    names = parse_metrics(args.metrics) if args.metrics else None
    if names and "novelty" in names:
        raise ValueError("metric 'novelty' is only available in file mode (--train FILE)")
    handle = _load_handle(args.run)

    if temps is not None:
        rows = temperature_sweep(handle, temps, args.n, args.seed)
        paths = write_sweep(rows, args.out or _default_out(args.run))
        if args.json:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        else:
            keys = list(rows[0]) if rows else []
            print(" | ".join(keys))
            for r in rows:
                print(" | ".join("n/a" if r[k] is None else f"{r[k]:.6g}" for k in keys))
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
        return 0

    samples = handle.sample(args.n, args.tau, args.seed)
    values: dict = {}
    if handle.is_oracle:
        values["nll_oracle"] = handle.nll_oracle(samples)
    if names is None and not handle.is_oracle:
        names = parse_metrics(DEFAULT_RUN_TEXT_METRICS)
    if names:
        if "self_bleu" in ",".join(names) and len(samples) < 2:
            raise ValueError("Self-BLEU needs --n >= 2")
        refs = handle.references if any(n.startswith(("bleu", "sacrebleu")) for n in names) \
            else None
        values.update(compute_metrics(names, samples, refs))
    values["nll_test"] = handle.nll_test(args.tau)
    text = _render(values, args.json)
    sys.stdout.write(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"run": str(args.run), "n": args.n, "tau": args.tau, "seed": args.seed,
                   "metrics": values}
        (out / "eval.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out / 'eval.json'}", file=sys.stderr)
    return 0
