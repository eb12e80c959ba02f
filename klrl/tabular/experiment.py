"""`klrl tabular`: the Leverage-the-Average experiment's entry point (validate, compute, write, draw).

Kept apart from klrl.tabular.leverage (the computation and its tidy files) so that the figures
module can read those files without an import cycle.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

from klrl.output import choose_out_dir
from klrl.results import TidyWriter
from klrl.tabular import plots
from klrl.tabular.leverage import COLUMNS, compute, load_config, metric_rows, summarize

# ----------------------------------------------------------------------------------------
# Entry point.


def run_experiment(config_path: str, out_dir: str | None = None, quick: bool = False,
                   overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Validates the TOML (and `--set` overrides), runs parts (a)-(d), writes metrics/summary/
    config/figures.

    Everything is validated (config and output location) before any compilation and before
    anything is written; a failed computation writes nothing. The output directory is `out_dir`
    (`--out`) or `experiment.out_dir`, under the same policy as `klrl train` (klrl.output:
    an existing non-empty directory is refused, or with `output.if_exists = "new_subdir"` the
    run goes to `<dir>/runs/<UTC timestamp>/`). Returns the summary dict.
    """
    cfg = load_config(config_path, quick=quick, overrides=overrides)
    out_dir = choose_out_dir(out_dir or cfg.experiment.out_dir, cfg.output.if_exists,
                             flag="--out" if out_dir else "experiment.out_dir",
                             refuse_hint=', or output.if_exists = "new_subdir"')

    t0 = time.perf_counter()
    out = compute(cfg)
    summary = summarize(cfg, out)
    wall = time.perf_counter() - t0

    from klrl.provenance import provenance

    prov = provenance()  # before writing: our own outputs must not mark the tree dirty
    os.makedirs(out_dir, exist_ok=True)
    n_rows = TidyWriter(os.path.join(out_dir, "metrics.csv"), COLUMNS).append_rows(metric_rows(cfg, out))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    resolved = {"config": cfg.to_dict(), "config_path": os.path.abspath(config_path), "quick": quick,
                "overrides": list(overrides), "metrics_rows": n_rows, "compute_wall_seconds": wall,
                "provenance": prov}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(resolved, f, indent=2)
    plots.draw_all(out_dir, out_dir)
    print(f"klrl tabular: wrote {out_dir} ({n_rows} metric rows, {wall:.1f} s compute); "
          f"horizon slopes " + ", ".join(f"{k}={v:.2f}" for k, v in summary["horizon_slopes"].items())
          + f"; bound max ratio {summary['bound_check']['max_ratio_measured_over_bound']:.3f}")
    return summary
