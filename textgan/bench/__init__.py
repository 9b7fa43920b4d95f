"""Benchmarks: ``textgan bench NAME``. Each module exposes ``run(quick: bool) -> list[dict]``.

Rows are dicts with the same keys; the command prints them as a markdown table headed by the
exact command line and writes it to ``bench_results/<name>.md`` (or ``--out``).
"""

BENCHES = {
    "bleu": "textgan.bench.bleu",
    "mle": "textgan.bench.mle",
    "relgan": "textgan.bench.relgan",
    "seqgan": "textgan.bench.seqgan",
}


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(rows[0])
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"
