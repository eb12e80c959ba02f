"""`klrl bench scale --quick`: every layout runs and the JSON says what it measured."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_bench_scale_quick_writes_every_layout(tmp_path):
    from klrl.bench.scale import MEMBERS, bench_scale

    out = tmp_path / "scale.json"
    result = bench_scale(out_path=str(out), quick=True)
    assert json.load(open(out)) == json.loads(json.dumps(result))
    layouts = [(r["devices"], r["processes"]) for r in result["rows"]]
    assert layouts == [(1, 1), (2, 1), (4, 1), (4, 2)]
    for r in result["rows"]:
        assert r["members"] == MEMBERS and r["seconds_per_chunk"] > 0
        assert r["padded_members"] == (8 if r["devices"] == 4 else MEMBERS)
    assert result["rows"][0]["ratio_to_one_device"] == 1.0 and result["quick"] is True
