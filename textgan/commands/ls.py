"""``textgan ls``: the recipes shipped with textgan, each with its one-line description."""

from __future__ import annotations

from pathlib import Path


def recipes_root() -> Path:
    """``recipes/`` next to the package (source checkout / editable install) or in the cwd."""
    for root in (Path(__file__).resolve().parents[2] / "recipes", Path.cwd() / "recipes"):
        if root.is_dir():
            return root
    raise FileNotFoundError("no recipes/ directory found next to textgan or in the current dir")


def list_recipes(root: Path | None = None) -> list[tuple[str, str, str]]:
    """``(path, algorithm, description)`` for every recipe YAML except accelerate configs."""
    import yaml

    root = root or recipes_root()
    rows = []
    for path in sorted(root.rglob("*.yaml")):
        if path.parent.name == "accelerate":
            continue
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        rel = path.relative_to(root.parent)
        rows.append((str(rel), str(raw.get("algorithm", "?")), str(raw.get("description", ""))))
    return rows


def add_arguments(parser) -> None:
    parser.add_argument("--root", default=None, help="recipes directory (default: bundled)")


def run(args) -> int:
    rows = list_recipes(Path(args.root) if args.root else None)
    width = max((len(r[0]) for r in rows), default=10)
    for path, algorithm, desc in rows:
        print(f"{path:<{width}}  {algorithm:<7} {desc}")
    return 0
