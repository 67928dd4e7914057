"""The README's user-defined space and spec-sheet device run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_space_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "class TwoStageNet" in b)
    assert len(example.strip().splitlines()) <= 30
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    space = namespace["space"]
    arch = namespace["arch"]
    assert space.cost(arch).macs > 0  # type: ignore[attr-defined]


def test_readme_device_example_runs() -> None:
    import latency_models as lm

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "cpu_profile(" in b)
    assert len(example.strip().splitlines()) <= 30
    namespace: dict[str, object] = {}
    try:
        exec(compile(example, "README.md", "exec"), namespace)
        fp32, int8 = namespace["fp32"], namespace["int8"]
        assert isinstance(fp32, float) and isinstance(int8, float)
        assert 0 < int8 < fp32  # the board has SDOT: int8 runs faster, as on a phone
        assert "a55-board-emulated" in lm.DEVICES
    finally:
        lm.DEVICES._factories.pop("a55-board-emulated", None)  # keep the registry as before
