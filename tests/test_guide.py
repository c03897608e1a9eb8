"""The README's "Add a step" guide, followed as a newcomer would: its entry pasted into a copy of model.py,
then its commands."""

import os
import re
import shutil
import subprocess
import sys

from conftest import ROOT


def guide() -> tuple[str, list[str]]:
    """The entry (the guide's python block) and its commands (the bash block's `tinymnist` lines)."""
    text = ROOT.joinpath("README.md").read_text()
    section = text.split("## Add a step", 1)[1].split("\n## ", 1)[0]
    entry = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    commands = [line.split("#")[0].split() for line in re.search(r"```bash\n(.*?)```", section, re.S).group(1)
                .splitlines() if line.startswith("tinymnist")]
    return entry, commands


def test_the_add_a_step_guide_works_as_written(tmp_path, mnist_dir):
    entry, commands = guide()
    name = re.search(r'Entry\("(Model_\d+)"', entry).group(1)
    src = tmp_path / "src" / "tinymnist"
    shutil.copytree(ROOT / "src" / "tinymnist", src, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    model_py = src / "model.py"
    text = model_py.read_text()
    assert "\n]\nREGISTRY" in text  # the end of ENTRIES, where the guide says to add the entry
    model_py.write_text(text.replace("\n]\nREGISTRY", "\n" + entry.rstrip() + "\n]\nREGISTRY", 1))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src"), "TINYMNIST_DATA": str(mnist_dir)}
    ran = set()
    for command in commands:
        args = command[1:]
        if args[0] == "train" and "--limit" not in args:
            continue  # the guide's full runs: minutes each, an experiment rather than a test
        args = [*args, "--out", str(tmp_path / "out")] if args[0] == "train" else args
        proc = subprocess.run([sys.executable, "-m", "tinymnist", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr)
        assert name in proc.stdout, command
        ran.add(args[0])
    assert ran == {"models", "summary", "train"}
    assert (tmp_path / "out" / name / "seed1.json").is_file()
