"""Panel contract: every malformed file is refused with a DataError naming the problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bad_panels import BAD_CASES, write_parquet
from panel_helpers import N_SMALL, small_cfg
from data.build_panel import FEATURE_NAMES
from data.panel import Panel, read_panel, write_panel
from core.errors import DataError


@pytest.mark.parametrize("case, mutate, pattern", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_panel_is_refused(tmp_path, long_panel, case, mutate, pattern):
    path = tmp_path / f"{case}.parquet"
    write_parquet(mutate(long_panel.copy()), path)
    with pytest.raises(DataError, match=pattern):
        read_panel(path, small_cfg().data)


def test_duplicate_column_is_refused(tmp_path, long_panel):
    table = pa.Table.from_pandas(long_panel, preserve_index=False)
    table = table.append_column("ret_1d", table.column("ret_1d"))
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(DataError, match=r"column 'ret_1d' appears twice"):
        read_panel(tmp_path / "dup.parquet")


def test_missing_and_unreadable_files_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*build_panel"):
        read_panel(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"not a readable Parquet file"):
        read_panel(tmp_path / "junk.parquet")


def test_good_panel_round_trips(panel_file, long_panel):
    panel = read_panel(panel_file, small_cfg().data)
    t_len = len(long_panel) // N_SMALL
    assert panel.shape == (t_len, N_SMALL, len(FEATURE_NAMES))
    assert panel.features.dtype == np.float32 and panel.returns.dtype == np.float64
    assert panel.dates.dtype == np.dtype("datetime64[D]")
    assert panel.factors == tuple(f"F{i}" for i in range(N_SMALL))
    assert panel.feature_names == FEATURE_NAMES
    wide_ret = long_panel.pivot(index="date", columns="factor", values="ret")[list(panel.factors)]
    np.testing.assert_array_equal(panel.returns, wide_ret.to_numpy())
    wide_mom = long_panel.pivot(index="date", columns="factor", values="mom_252_21")[list(panel.factors)]
    np.testing.assert_array_equal(panel.features[:, :, FEATURE_NAMES.index("mom_252_21")], wide_mom.to_numpy())
    assert not panel.features.flags.writeable


def test_row_order_within_a_date_does_not_matter(tmp_path, long_panel, panel_file):
    shuffled = long_panel.groupby("date", sort=True, group_keys=False).sample(frac=1.0, random_state=3)
    write_parquet(shuffled, tmp_path / "shuffled.parquet")
    a, b = read_panel(panel_file), read_panel(tmp_path / "shuffled.parquet")
    # factor order is the order of first appearance, so compare through the names
    perm = [b.factors.index(f) for f in a.factors]
    np.testing.assert_array_equal(a.features, b.features[:, perm])
    np.testing.assert_array_equal(a.returns, b.returns[:, perm])


def test_fingerprint_identifies_the_content(panel_file):
    panel = read_panel(panel_file)
    same = Panel.from_arrays(panel.dates, panel.factors, panel.feature_names, panel.features, panel.returns)
    assert same.fingerprint == panel.fingerprint
    returns = panel.returns.copy()
    returns[-1, 0] += 1e-12
    changed = Panel.from_arrays(panel.dates, panel.factors, panel.feature_names, panel.features, returns)
    assert changed.fingerprint != panel.fingerprint


def test_write_panel_refuses_to_overwrite(tmp_path, long_panel):
    path = tmp_path / "out.parquet"
    digest = write_panel(long_panel, path)
    with pytest.raises(DataError, match=r"exists; pass --force"):
        write_panel(long_panel.iloc[:N_SMALL], path)
    assert write_panel(long_panel, path, overwrite=True) == digest  # same data, same bytes
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]  # no temp file left behind
