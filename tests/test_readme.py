"""The python snippets of the README's "Use it in your model" section run as written (each on its own,
as a reader would paste it)."""

import importlib.util
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Use it in your model"


def section_snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


SNIPPETS = section_snippets()


def test_the_section_has_the_three_ways_in():
    assert len(SNIPPETS) == 3
    assert "fastattn.attention(" in SNIPPETS[0] and "fastattn.nn.MultiheadAttention(" in SNIPPETS[0]
    assert "fastattn.patch(" in SNIPPETS[1] and "fastattn.patch_sdpa()" in SNIPPETS[1]
    assert 'attn_implementation="fastattn"' in SNIPPETS[2]


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=lambda index: f"snippet {index + 1}")
def test_snippet_runs(index):
    code = SNIPPETS[index]
    if "import transformers" in code and importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (pip install fastattn[hf])")
    where = f"{README.name}, snippet {index + 1} of '{SECTION[3:]}'"
    exec(compile(code, where, "exec"), {"__name__": "__readme__"})
