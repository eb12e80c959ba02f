"""`klrl tabular` (klrl.tabular.leverage): config validation and the quick experiment's outputs."""

import json
import os

import numpy as np
import pytest

from klrl.cli import main as cli_main
from klrl.errors import ConfigError
from klrl.tabular import leverage
from klrl.tabular.experiment import run_experiment

from fabricate import fabricate

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "experiments", "leverage_average.toml")


def _write(tmp_path, text, name="bad.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_shipped_config_is_valid_and_matches_the_defaults():
    # The TOML lists every key with its default value (the bench times `LeverageConfig()`),
    # except the output policy: re-running it never overwrites the committed results.
    cfg = leverage.load_config(CONFIG)
    assert cfg.replace(output={"if_exists": "refuse"}) == leverage.LeverageConfig()
    assert cfg.output.if_exists == "new_subdir" and leverage.LeverageConfig().output.if_exists == "refuse"
    quick = leverage.load_config(CONFIG, quick=True)
    assert quick.garnet.num_states < leverage.LeverageConfig().garnet.num_states
    assert quick == leverage.quick_config(cfg)
    # --set overrides, over --quick too; the sections are the same machinery as `klrl train`'s
    q = leverage.load_config(CONFIG, quick=True, overrides=["noise.std=0.5", "garnet.num_states=9"])
    assert (q.noise.std, q.garnet.num_states, q.garnet.num_actions) == (0.5, 9, 3)
    with pytest.raises(ConfigError, match=r"^garnet.num_sates: got an unknown key; allowed garnet.branching, "):
        leverage.load_config(CONFIG, overrides=["garnet.num_sates=3"])


@pytest.mark.parametrize("text, field", [
    ("[garnet]\nnum_sates = 10\n", "garnet.num_sates"),
    ("[nosuch]\nx = 1\n", "nosuch"),
    ("[garnet]\nnum_states = 0\n", "garnet.num_states"),
    ("[garnet]\nnum_states = 2.5\n", "garnet.num_states"),
    ("[garnet]\nnum_states = 4\nbranching = 5\n", "garnet.branching"),
    ("[noise]\nstd = -1.0\n", "noise.std"),
    ("[noise]\nstd = true\n", "noise.std"),
    ("[curves]\ngamma = 1.0\n", "curves.gamma"),
    ("[curves]\nnum_iterations = 100\neval_every = 7\n", "curves.eval_every"),
    ("[horizon]\ngammas = []\n", "horizon.gammas"),
    ("[horizon]\ngammas = [0.9, 1.5]\n", "horizon.gammas"),
    ("[heatmap]\nlam_min = 10.0\nlam_max = 1.0\n", "heatmap.lam_min"),
    ("[bound]\nlams = [\"a\"]\n", "bound.lams"),
    ("[experiment]\nseed = -3\n", "experiment.seed"),
    ("garnet = 3\n", "garnet"),
    ("[garnet\n", "config"),
    ("[output]\nif_exists = \"overwrite\"\n", "output.if_exists"),
    ("[sweep]\n\"noise.std\" = [1.0]\n", "sweep"),
])
def test_bad_config_raises_one_line_config_error_and_writes_nothing(tmp_path, text, field):
    path = _write(tmp_path, text)
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        run_experiment(path, out_dir=str(out))
    msg = str(err.value)
    assert msg.startswith(field + ":") and "got" in msg and "allowed" in msg and "\n" not in msg
    assert not out.exists()


def test_cli_exits_2_on_bad_config(tmp_path, capsys):
    path = _write(tmp_path, "[noise]\nnum_seeds = 0\n")
    out = tmp_path / "out"
    assert cli_main(["tabular", path, "--out", str(out), "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("klrl: error: noise.num_seeds:") and len(err.splitlines()) == 1
    assert not out.exists()
    assert cli_main(["tabular", str(tmp_path / "missing.toml")]) == 2
    assert "config:" in capsys.readouterr().err
    assert cli_main(["tabular", CONFIG, "--out", str(out), "--quick", "--set", "noise.std=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "klrl: error: noise.std: got -1.0; allowed (0, inf)"
    assert not out.exists()


def test_out_dir_that_is_a_file_is_rejected_before_computing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="^--out: got .*an existing file"):
        run_experiment(CONFIG, out_dir=str(blocker), quick=True)
    cfg = _write(tmp_path, f"[experiment]\nout_dir = \"{blocker}\"\n", "to_file.toml")
    with pytest.raises(ConfigError, match="^experiment.out_dir: got .*an existing file"):
        run_experiment(cfg, quick=True)


def test_existing_results_are_refused_or_kept_in_a_new_subdir(tmp_path):
    """The output policy of `klrl train` (klrl.output), before anything is computed."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("committed\n")
    with pytest.raises(ConfigError, match=r"^--out: got .*already holds files.*output.if_exists = \"new_subdir\""):
        run_experiment(CONFIG, out_dir=str(out), quick=True, overrides=["output.if_exists=refuse"])
    assert os.listdir(out) == ["metrics.csv"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("leverage_quick")
    summary = run_experiment(CONFIG, out_dir=str(out), quick=True)
    return out, summary


def test_quick_run_writes_tidy_metrics_config_and_figures(quick_run):
    out, summary = quick_run
    for name in ("metrics.csv", "summary.json", "config.json", "curves.png", "heatmap.png",
                 "horizon.png", "bound.png"):
        assert (out / name).stat().st_size > 0, name
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["quick"] is True
    assert resolved["config"]["garnet"] == {**leverage.LeverageConfig().garnet.to_dict(), **leverage.QUICK["garnet"]}
    assert resolved["config"]["horizon"]["gammas"] == leverage.QUICK["horizon"]["gammas"]
    for key in ("commit", "versions", "device"):
        assert key in resolved["provenance"]
    m = leverage.read_metrics(str(out / "metrics.csv"))
    assert set(np.unique(m["part"])) == {"curves", "heatmap", "horizon", "bound"}
    assert resolved["metrics_rows"] == len(m["value"])
    cfg = resolved["config"]
    runs = cfg["garnet"]["num_garnets"] * cfg["noise"]["num_seeds"]
    # (a): 4 schemes × 2 noise levels × runs × evaluation points.
    n_eval = cfg["curves"]["num_iterations"] // cfg["curves"]["eval_every"]
    assert np.sum(m["part"] == "curves") == 4 * 2 * runs * n_eval
    # (b): one final error per (λ, τ) cell and run.
    assert np.sum(m["part"] == "heatmap") == cfg["heatmap"]["num_lam"] * cfg["heatmap"]["num_tau"] * runs
    assert np.all(np.isfinite(m["value"]) & (m["value"] >= 0))
    json.dumps(summary)  # the summary is plain JSON


def _notebook(env, cwd, notebook=None):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(CONFIG))
    env = {k: v for k, v in {**os.environ, "MPLBACKEND": "Agg", **env}.items() if v is not None}
    return subprocess.run([sys.executable, notebook or os.path.join(root, "notebooks", "leverage_average.py")],
                          env=env, cwd=str(cwd), capture_output=True, text=True, timeout=300)


def test_notebook_draws_figures_from_the_quick_results(quick_run, tmp_path):
    """notebooks/leverage_average.py redraws the figures from a results directory (KLRL_RUNS, no
    retraining), only reads it, and by default writes into <checkout>/figures/leverage_average/
    (the notebook copied into a scratch checkout, so that the default is checked), not results/."""
    import shutil

    from klrl.tabular.plots import FIGURES

    results, _ = quick_run
    before = sorted(os.listdir(results))
    assert before == sorted(["metrics.csv", "summary.json", "config.json", *FIGURES])
    checkout = tmp_path / "checkout"
    (checkout / "notebooks").mkdir(parents=True)
    shutil.copy(os.path.join(os.path.dirname(os.path.dirname(CONFIG)), "notebooks", "leverage_average.py"),
                checkout / "notebooks")
    proc = _notebook({"KLRL_RUNS": str(results), "KLRL_FIGURES_DIR": None, "KLRL_RESULTS_DIR": None}, tmp_path,
                     str(checkout / "notebooks" / "leverage_average.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FIGURES:
        assert (checkout / "figures" / "leverage_average" / name).stat().st_size > 10_000, name
    assert "log-log slope" in proc.stdout
    assert sorted(os.listdir(results)) == before       # the notebook only reads


def test_notebook_refuses_a_folder_that_is_not_its_output(tmp_path):
    """A `klrl train` run given to the notebook: one line naming KLRL_RUNS, exit status 2, no figure."""
    train_run = tmp_path / "train_run"
    fabricate(os.path.join(os.path.dirname(CONFIG), "quickstart.toml"), train_run,
              ["train.seeds=1", "train.total_steps=25000"])
    figures = tmp_path / "figures"
    proc = _notebook({"KLRL_RUNS": str(train_run), "KLRL_FIGURES_DIR": str(figures)}, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: KLRL_RUNS: got {str(train_run)!r}, whose metrics.csv is not a Leverage-the-Average table "
        "(a `klrl train` run?); allowed the output folder of `klrl tabular experiments/leverage_average.toml`"]
    assert not figures.exists()                        # nothing written


def test_quick_run_shows_the_paper_effects(quick_run):
    out, summary = quick_run
    m = leverage.read_metrics(str(out / "metrics.csv"))
    last = m["iteration"] == m["iteration"][m["part"] == "curves"].max()

    def final(scheme, noisy):
        sel = (m["part"] == "curves") & (m["scheme"] == scheme) & last & ((m["noise_std"] > 0) == noisy)
        return m["value"][sel].mean()

    # Noiseless VI reaches the optimum; with noise, KL-regularized MD-VI beats VI clearly.
    assert final("vi", False) < 1e-8
    assert final("kl", True) < 0.5 * final("vi", True)
    assert final("kl_entropy", True) < 0.5 * final("entropy", True)
    # The τ = 0 bound holds on every checked point (both indexings) and is not vacuous there.
    bc = summary["bound_check"]
    assert bc["holds_everywhere"] and bc["holds_everywhere_literal_indexing"]
    assert 0 < bc["max_ratio_measured_over_bound"] <= 1.0
    assert set(summary["horizon_slopes"]) == set(leverage.SCHEMES)
    assert all(np.isfinite(v) for v in summary["horizon_slopes"].values())


def test_same_seed_same_numbers_other_seed_other_numbers(quick_run, tmp_path):
    out, _ = quick_run
    # The shipped file says output.if_exists = "new_subdir": a second run into the same
    # directory goes to <out>/runs/<UTC timestamp>/ and leaves the first one as it was.
    first = (out / "metrics.csv").read_bytes()
    run_experiment(CONFIG, out_dir=str(out), quick=True)
    (again,) = (out / "runs").iterdir()
    assert (out / "metrics.csv").read_bytes() == first
    assert (again / "metrics.csv").read_bytes() == first
    other_cfg = _write(tmp_path, "[experiment]\nseed = 1\n", "seed1.toml")
    other = tmp_path / "other"
    run_experiment(other_cfg, out_dir=str(other), quick=True)
    assert (other / "metrics.csv").read_bytes() != (out / "metrics.csv").read_bytes()


@pytest.mark.slow
def test_full_run_reproduces_the_committed_results(tmp_path):
    """The committed results/leverage_average come from this code and config (about a minute
    of compute on 2 cores; excluded from `make test`)."""
    committed = os.path.join(os.path.dirname(CONFIG), "..", "results", "leverage_average", "summary.json")
    with open(committed) as f:
        expected = json.load(f)
    summary = run_experiment(CONFIG, out_dir=str(tmp_path / "full"))
    np.testing.assert_allclose(list(summary["horizon_slopes"].values()),
                               list(expected["horizon_slopes"].values()), rtol=1e-6)
    for key in ("max_ratio_measured_over_bound", "max_ratio_literal_indexing"):
        assert summary["bound_check"][key] == pytest.approx(expected["bound_check"][key], rel=1e-6)
    assert summary["bound_check"]["holds_everywhere"]
    for key, value in expected["curves_mean_final_error"].items():
        assert summary["curves_mean_final_error"][key] == pytest.approx(value, rel=1e-6, abs=1e-12)
