"""`klrl tabular`: the Leverage-the-Average experiment's entry point (validate, compute, write, draw).

Kept apart from klrl.tabular.leverage (the computation and its tidy files) so that the figures
module can read those files without an import cycle.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from klrl.errors import ConfigError
from klrl.tabular import plots
from klrl.tabular.leverage import compute, load_config, metric_rows, summarize, write_metrics

# ----------------------------------------------------------------------------------------
# Entry point.


def _check_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"out_dir: got {out_dir!r}; allowed a directory path (it is a file)")
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"out_dir: got {out_dir!r}; allowed a writable location")


def run_experiment(config_path: str, out_dir: str | None = None, quick: bool = False) -> dict[str, Any]:
    """Validates the TOML, runs parts (a)-(d), writes metrics/summary/config/figures.

    Everything is validated (config and output location) before any compilation and before
    anything is written; a failed computation writes nothing. Returns the summary dict.
    """
    cfg = load_config(config_path, quick=quick)
    out_dir = out_dir or cfg["experiment"]["out_dir"]
    _check_out_dir(out_dir)

    t0 = time.perf_counter()
    out = compute(cfg)
    summary = summarize(cfg, out)
    wall = time.perf_counter() - t0

    from klrl.provenance import provenance

    prov = provenance()  # before writing: our own outputs must not mark the tree dirty
    os.makedirs(out_dir, exist_ok=True)
    n_rows = write_metrics(os.path.join(out_dir, "metrics.csv"), metric_rows(cfg, out))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    resolved = {"config": cfg, "config_path": os.path.abspath(config_path), "quick": quick,
                "metrics_rows": n_rows, "compute_wall_seconds": wall, "provenance": prov}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(resolved, f, indent=2)
    plots.draw_all(out_dir, out_dir)
    print(f"klrl tabular: wrote {out_dir} ({n_rows} metric rows, {wall:.1f} s compute); "
          f"horizon slopes " + ", ".join(f"{k}={v:.2f}" for k, v in summary["horizon_slopes"].items())
          + f"; bound max ratio {summary['bound_check']['max_ratio_measured_over_bound']:.3f}")
    return summary
