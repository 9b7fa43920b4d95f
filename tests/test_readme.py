"""The README's Python example runs as written, and its commands match .ci/run."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_block_runs():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["out"].tokens.shape == (8, 10)
    grads = [p.grad for p in namespace["G"].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_readme_and_ci_commands_agree():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in readme and 'pip install --quiet -e ".[dev]"' in ci
    assert "\npytest\n" in readme and "\npytest\n" in ci
    assert "torch==2.13.0" in readme and "torch==2.13.0" in ci
    main = re.search(r"^textgan train (\S+)$", readme, flags=re.M).group(1)
    assert (REPO / main).is_file()
