"""Paired comparisons of calibration sources across seeds (core/experiment/summary.py), checked
against scipy's paired t-test and Student's t quantiles, computed independently of the module."""

from __future__ import annotations

import csv
import math

import pytest

from prunestudio.core.experiment.grid import GridSpec
from prunestudio.core.experiment.summary import paired, paired_csv, paired_markdown, source_pairs, t_critical

stats = pytest.importorskip("scipy.stats")


def spec_of(tmp_path, sources, seeds=(0, 1, 2, 3, 4), tasks=()):
    (tmp_path / "c.txt").write_text("some text\n", encoding="utf-8")
    g = {"name": "p", "model": "m", "sources": sources, "methods": ["wanda", "sparsegpt"],
         "sparsities": [0.6], "structures": ["unstructured", "2:4"], "seeds": list(seeds),
         "calibration": {"nsamples": 4, "seqlen": 32},
         "eval": {"ppl": ["wikitext2", "c4"], "seqlen": 32, "tasks": list(tasks), "limit": 3 if tasks else None}}
    return GridSpec.from_dict(g, tmp_path)


SOURCES = [{"label": "C4", "source": "c.txt"}, {"label": "wiki", "source": "c.txt#x"},
           {"label": "gen", "source": "selfgen"}, {"label": "gen-paper", "source": "selfgen:c.txt", "protocol": "paper"}]


def fake_ppl(cell) -> dict:
    # deterministic, uneven: the source shifts the level, the seed adds noise of its own
    base = {"C4": 100.0, "wiki": 95.0, "gen": 99.0, "gen-paper": 90.0}[cell.source_label]
    noise = math.sin(7.3 * (cell.seed + 1) + len(cell.setting) + len(cell.method)) * 3.0
    return {"ppl": {"wikitext2": base + noise, "c4": base * 1.1 - noise}}


def test_pairs_put_each_selfgenerated_source_against_every_other(tmp_path):
    spec = spec_of(tmp_path, SOURCES)
    assert source_pairs(spec) == [("gen", "C4"), ("gen", "wiki"), ("gen", "gen-paper"),
                                  ("gen-paper", "C4"), ("gen-paper", "wiki")]
    plain = spec_of(tmp_path, SOURCES[:2] + [{"label": "third", "source": "c.txt#y"}])
    assert source_pairs(plain) == [("C4", "wiki"), ("C4", "third"), ("wiki", "third")]


def test_paired_statistics_equal_scipys_paired_t_test(tmp_path):
    spec = spec_of(tmp_path, SOURCES)
    finished = [(c, fake_ppl(c)) for c in spec.cells() if c.kind != "dense"]
    rows = paired(spec, finished)
    # 2 methods x 2 settings x 5 pairs x 2 metrics
    assert len(rows) == 40
    for r in rows:
        a = {c.seed: rep for c, rep in finished
             if (c.method, c.setting, c.source_label) == (r.method, r.setting, r.a)}
        b = {c.seed: rep for c, rep in finished
             if (c.method, c.setting, c.source_label) == (r.method, r.setting, r.b)}
        suite = r.metric.split(":")[1]
        xa = [a[s]["ppl"][suite] for s in sorted(a)]
        xb = [b[s]["ppl"][suite] for s in sorted(b)]
        res = stats.ttest_rel([math.log(x) for x in xa], [math.log(x) for x in xb])
        assert r.t == pytest.approx(res.statistic, rel=1e-9)
        assert r.beyond_noise == (res.pvalue < 0.05)
        assert r.wins == sum(x < y for x, y in zip(xa, xb))
        pct = [100 * (x / y - 1) for x, y in zip(xa, xb)]
        assert r.mean_pct == pytest.approx(sum(pct) / 5)
    # the planted 10% advantage of gen-paper over C4 stands out of the seed noise; gen vs C4 (1%) does not
    by = {(r.method, r.setting, r.metric, r.a, r.b): r for r in rows}
    assert by[("wanda", "60%", "ppl:wikitext2", "gen-paper", "C4")].beyond_noise
    assert by[("wanda", "60%", "ppl:wikitext2", "gen-paper", "C4")].wins == 5


def test_missing_seeds_are_left_out_of_the_pairs_and_one_pair_has_no_t(tmp_path):
    spec = spec_of(tmp_path, SOURCES[:3], seeds=(0, 1, 2))
    finished = [(c, fake_ppl(c)) for c in spec.cells()
                if c.kind != "dense" and not (c.source_label == "C4" and c.seed != 0)]
    rows = [r for r in paired(spec, finished) if r.b == "C4"]
    assert rows and all(r.seeds == [0] and r.t is None and r.beyond_noise is None for r in rows)
    md = paired_markdown(spec, rows)
    assert "| – | – |" in md  # no t and no verdict from one pair
    table = list(csv.DictReader(paired_csv(spec, rows).splitlines()))
    assert table[0]["n_seeds"] == "1" and table[0]["beyond_seed_noise"] == ""


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 8, 12, 20, 24, 29])
def test_critical_values_match_students_t(df):
    exact = stats.t.ppf(0.975, df)
    # the table holds exact rows up to 20, 25 and 30; between them the next lower row (conservative)
    assert t_critical(df) == pytest.approx(exact, abs=0.0015) or (df > 20 and exact <= t_critical(df) < exact + 0.05)
