"""The README's example runs as written."""
import re

from util import ROOT


def test_readme_example_runs(capsys):
    text = (ROOT / "bindings" / "python" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("25 tokens, ") and "% saved" in lines[-1]
