"""Report readability: one number format per column (issue 13 part 6) and the Pareto frontier (part 5)."""
from __future__ import annotations

import pytest

from bench.report.tables import column_format, mean_pm_std, pareto_front


@pytest.mark.parametrize("column, shown", [
    ([0.877, 0.0523], ["0.8770", "0.0523"]),  # fixed decimals: 3 significant digits for the smallest
    ([12.3, 145.2, 3.4], ["12.30", "145.20", "3.40"]),
    ([10.0, 9.0, 1500.0], ["10", "9", "1,500"]),  # integers stay integers
    ([0.877, 6.67e-05], ["8.77e-01", "6.67e-05"]),  # magnitudes 10^4 apart: the whole column scientific
    ([2.5e-4, 3.1e-4], ["2.50e-04", "3.10e-04"]),
])
def test_a_column_shares_one_format(column, shown):
    f = column_format(column)
    assert [f(v) for v in column] == shown


def test_the_spread_takes_its_columns_format_not_its_own():
    f = column_format([0.877, 0.91])
    assert mean_pm_std(0.877, 0.00161, 3, f) == "0.877 ± 0.002"
    assert mean_pm_std(0.877, float("nan"), 1, f) == "0.877"


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1, 5.0), (2, 3.0), (3, 4.0), (10, 1.0), (1, 6.0), (2, 3.0)]
    # (3, 4) is beaten by (2, 3); (1, 6) by (1, 5); the second (2, 3) ties the first and adds nothing
    assert pareto_front(pts) == [0, 1, 3]
