"""The README's "Python API" block runs as written."""
import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_api_example_runs(tmp_path, capsys):
    text = open(README).read()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("/tmp/loupe-export", str(tmp_path / "export"))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "tiny" in out and "torch.Size([2, 4])" in out and out.strip().endswith("True")
