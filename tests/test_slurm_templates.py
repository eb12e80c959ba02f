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


REQUEUEING = ("array_sweep.sbatch", "multinode.sbatch")
SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_NTASKS": "8",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]"}


def _run_template(path: pathlib.Path, tmp_path: pathlib.Path, klrl_status: int) -> tuple[int, list[str]]:
    """The template run by bash in `tmp_path` with fake `srun` (exits `klrl_status`), `scontrol`
    (records its arguments) and venv; (the script's status, the scontrol calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "srun").write_text(f"#!/bin/sh\nexit {klrl_status}\n")
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **SLURM_ENV}
    r = subprocess.run(["bash", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    return r.returncode, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("name", REQUEUEING)
def test_a_stopped_run_is_requeued_and_nothing_else_is(name, tmp_path):
    from klrl.errors import EXIT_STOPPED

    text = (ROOT / "experiments" / "slurm" / name).read_text()
    assert re.search(r"^#SBATCH --signal=USR1@\d+$", text, re.M) and re.search(r"^#SBATCH --requeue$", text, re.M)
    path = ROOT / "experiments" / "slurm" / name
    assert _run_template(path, tmp_path / "stopped", EXIT_STOPPED) == (0, ["requeue 4242"])
    assert _run_template(path, tmp_path / "done", 0) == (0, [])
    assert _run_template(path, tmp_path / "failed", 1) == (1, [])
