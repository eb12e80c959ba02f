"""The SLURM templates (experiments/slurm/*.sbatch): each parses as bash, every `klrl` command
in them (commented examples included) uses only subcommands and options of klrl.cli's parser,
and the experiment files they default to exist."""

import argparse
import pathlib
import re
import shlex
import subprocess

import pytest

from klrl.cli import _parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "experiments" / "slurm").glob("*.sbatch"))

SEPARATORS = {";", "&&", "||", "|", "&", ")"}


def logical_lines(text: str) -> list[str]:
    """The file's lines with backslash continuations joined and a leading comment mark removed
    (so that commented example commands are checked too)."""
    out, cur = [], ""
    for line in text.splitlines():
        line = re.sub(r"^\s*#+", "", line).strip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    return out + ([cur] if cur else [])


def flag_variables(text: str) -> dict[str, str]:
    """Variables the file sets to one option, e.g. `resume=--resume` -> {"$resume": "--resume"}."""
    return {f"${name}": value for name, value in re.findall(r"^\s*(\w+)=(--[\w-]+)\s*(?:#.*)?$", text, re.M)}


def klrl_commands(text: str) -> list[list[str]]:
    """Every `klrl ...` command: a line that starts with klrl (or with srun and runs klrl), up to
    a shell separator, with the option variables of the file substituted; prose lines that do
    not split as shell words are skipped."""
    flags, found = flag_variables(text), []
    for line in logical_lines(text):
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if not words or words[0] not in ("klrl", "srun") or "klrl" not in words:
            continue
        words = words[words.index("klrl"):]
        cut = next((i for i, w in enumerate(words) if w in SEPARATORS), len(words))
        found.append([flags.get(w, w) for w in words[:cut]])
    return found


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def check_command(words: list[str], subs: dict[str, argparse.ArgumentParser]) -> list[str]:
    """What in one `klrl` command the CLI does not know (empty when all of it is known)."""
    sub = words[1] if len(words) > 1 else ""
    if sub not in subs:
        return [f"subcommand {sub!r}"]
    known = set(subs[sub]._option_string_actions)
    return [f"{sub} {w.split('=')[0]}" for w in words[2:] if w.startswith("-") and w.split("=")[0] not in known]


def test_there_are_templates():
    assert {p.name for p in TEMPLATES} >= {"array_sweep.sbatch", "merge.sbatch", "multinode.sbatch"}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_parses_as_bash(path):
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_klrl_commands_use_known_options(path):
    commands = klrl_commands(path.read_text())
    assert commands, f"no klrl command found in {path.name}"
    subs = subparsers()
    unknown = [(" ".join(c), bad) for c in commands if (bad := check_command(c, subs))]
    assert not unknown, unknown


def test_the_commands_the_templates_are_for():
    cmds = {p.name: klrl_commands(p.read_text()) for p in TEMPLATES}
    assert any(c[:2] == ["klrl", "train"] and {"--task", "--num-tasks", "--resume"} <= set(c)
               for c in cmds["array_sweep.sbatch"])
    assert any(c[:2] == ["klrl", "merge"] for c in cmds["array_sweep.sbatch"])     # the commented merge step
    assert any(c[:2] == ["klrl", "merge"] for c in cmds["merge.sbatch"])
    assert any(c[:2] == ["klrl", "train"] and {"--distributed", "--resume"} <= set(c) for c in cmds["multinode.sbatch"])


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_default_config_paths_exist(path):
    for value in re.findall(r"^\s*CFG=\$\{CFG:-([^}]+)\}", path.read_text(), re.M):
        assert (ROOT / value).is_file(), value


def test_the_checker_sees_unknown_options():
    subs = subparsers()
    text = 'again=--no-such-flag\n#   srun -N 2 klrl train "$CFG" --out "$OUT" $again && echo done\n'
    (cmd,) = klrl_commands(text)
    assert cmd == ["klrl", "train", "$CFG", "--out", "$OUT", "--no-such-flag"]
    assert check_command(cmd, subs) == ["train --no-such-flag"]
    assert check_command(["klrl", "trian"], subs) == ["subcommand 'trian'"]
    assert check_command(["klrl", "train", "c.toml", "--out=x", "--resume", "--task", "0"], subs) == []
