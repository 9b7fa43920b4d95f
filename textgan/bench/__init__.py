"""Benchmarks: ``textgan bench NAME``. Each module exposes ``run(quick: bool) -> list[dict]``.

Rows are dicts with the same keys; the command prints them as a markdown table headed by the
exact command line and writes it to ``bench_results/<name>.md`` (or ``--out``).
"""

import platform

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


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (avx512_bf16 or AMX); elsewhere bf16
    matmuls are emulated and far slower than float32, and the benches skip their bf16 rows.

    Only x86 CPUs are probed; any other architecture counts as native (no warning, no skip)."""
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def machine() -> str:
    """One line naming the CPU, the thread count and native bf16 support (bench headers)."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                        name)
    except OSError:
        pass
    return (f"{name}, {torch.get_num_threads()} threads, native bf16: "
            f"{'yes' if native_bf16() else 'no'}")
