"""The benchmarks' statistics and report helpers: pure functions, exact values.

No timing here: the benchmarks themselves (``python -m benchmarks.bench_routing``) are
never part of the test suite.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from benchmarks._common import (
    BlockFn,
    Comparison,
    Interleaved,
    SideResult,
    Summary,
    format_ns,
    markdown_table,
    median,
    median_ci,
    quantile,
    ratio,
    replace_section,
    switch_order,
)

# --- quantiles, medians, ratios ----------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.0, 10.0), (0.25, 17.5), (0.5, 25.0), (0.99, 39.7), (1.0, 40.0)],
)
def test_quantile_interpolates_linearly_like_numpy(q: float, expected: float) -> None:
    assert quantile([40, 10, 30, 20], q) == pytest.approx(expected)


def test_quantile_of_one_value_is_that_value() -> None:
    assert quantile([7], 0.99) == 7


def test_p99_of_1_to_1000() -> None:
    # position 0.99 * 999 = 989.01, between 990 and 991
    assert quantile(range(1, 1001), 0.99) == pytest.approx(990.01)


@pytest.mark.parametrize("q", [-0.1, 1.5])
def test_quantile_rejects_q_outside_0_1(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        quantile([1, 2], q)


def test_empty_samples_are_refused() -> None:
    for fn in (lambda: quantile([], 0.5), lambda: median([]), lambda: Summary.of([])):
        with pytest.raises(ValueError, match="at least one value"):
            fn()


def test_median_odd_and_even() -> None:
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 3, 2]) == 2.5


def test_ratio() -> None:
    assert ratio(110, 100) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="baseline of 0"):
        ratio(1, 0)


def test_summary() -> None:
    s = Summary.of([5, 1, 3, 2, 4])
    assert (s.n, s.median, s.mean, s.minimum, s.maximum) == (5, 3, 3, 1, 5)
    assert s.p99 == pytest.approx(4.96)


def test_median_ci_uses_the_order_statistics_of_the_sign_test() -> None:
    # n = 100 at 95 %: the 40th and the 61st values (Conover's table).
    assert median_ci(list(range(1, 101))) == (40, 61)


def test_median_ci_of_few_values_is_the_whole_range() -> None:
    assert median_ci([5.0]) == (5.0, 5.0)
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)


def test_median_ci_narrows_with_more_values_and_holds_the_median() -> None:
    small = median_ci([float(i % 10) for i in range(50)])
    large = median_ci([float(i % 10) for i in range(5000)])
    assert small[0] <= large[0] <= 4.5 <= large[1] <= small[1]


# --- interleaving ---------------------------------------------------------------------------


def test_two_sides_alternate_abba() -> None:
    orders = [switch_order(["a", "b"], s) for s in range(4)]
    assert orders == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]


def test_three_sides_are_shuffled_fairly_and_never_run_twice_in_a_row() -> None:
    names = ["raw", "sqlrouter", "raw2"]
    previous: list[str] = []
    firsts: Counter[str] = Counter()
    for s in range(3000):
        order = switch_order(names, s, previous)
        assert sorted(order) == sorted(names)
        if previous:
            assert order[0] != previous[-1]
        firsts[order[0]] += 1
        previous = order
    assert switch_order(names, 7) == switch_order(names, 7)  # reproducible
    assert all(900 < n < 1100 for n in firsts.values()), firsts


def test_interleaved_runs_every_side_in_each_switch() -> None:
    calls: list[str] = []

    def side(name: str, latency: int) -> BlockFn:
        def run(n: int) -> list[int]:
            calls.append(name)
            return [latency] * n

        return run

    bench = Interleaved(
        {"a": side("a", 100), "b": side("b", 110), "c": side("c", 100)},
        block=4,
        alternations=5,
    )
    bench.run_round()
    bench.run_round()
    assert len(calls) == 3 * 5 * 2
    assert all(x != y for x, y in itertools.pairwise(calls))
    a, b = bench.results["a"], bench.results["b"]
    assert a.ops == b.ops == bench.ops_per_round * 2 == 40
    assert len(a.blocks) == 10
    assert Comparison("k", "t", a, b, target=1.2).paired_ratio() == (1.1, 1.1, 1.1)


def test_interleaved_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="at least two sides"):
        Interleaved({"a": lambda n: [1] * n}, block=1)
    with pytest.raises(ValueError, match="must be >= 1"):
        Interleaved({"a": lambda n: [1] * n, "b": lambda n: [1] * n}, block=0)


# --- comparisons ---------------------------------------------------------------------------


def _side(label: str, blocks: list[list[int]], cpu_ns: int = 0) -> SideResult:
    res = SideResult(label, cpu_process_ns=cpu_ns, cpu_thread_ns=cpu_ns)
    for block in blocks:
        res.samples.extend(block)
        res.blocks.append(block)
    return res


def test_paired_ratio_cancels_what_both_sides_of_a_switch_share() -> None:
    # The machine is fast in the first switch, slow in the second: each pair still
    # shows sqlrouter 5 % above raw, while the pooled medians mix the two modes.
    raw = _side("raw", [[100, 100, 100], [200, 200, 200]], cpu_ns=600)
    routed = _side("sqlrouter", [[105, 105, 105], [210, 210, 210]], cpu_ns=660)
    c = Comparison("point_select", "point select", raw, routed, target=1.02)
    assert c.paired_ratios() == pytest.approx([1.05, 1.05])
    assert c.paired_ratio() == pytest.approx((1.05, 1.05, 1.05))
    assert c.paired_difference() == pytest.approx(7.5)
    assert c.median_ratio == pytest.approx(157.5 / 150)
    assert c.cpu_ratio == pytest.approx(1.1)
    assert c.met is False
    assert Comparison("k", "t", raw, routed, target=1.10).met is True
    assert Comparison("k", "t", raw, routed).met is None


def test_comparison_json_has_both_sides_and_the_ratios() -> None:
    raw = _side("raw", [[100, 100], [100, 100]], cpu_ns=400)
    routed = _side("sqlrouter", [[120, 120], [120, 120]], cpu_ns=480)
    data = Comparison("k", "title", raw, routed, target=1.1, extra={"replica": "db2"}).to_json()
    assert data["met"] is False
    assert data["baseline"]["median_ns"] == 100
    assert data["candidate"]["cpu_process_ns_per_op"] == 120
    assert data["ratios"]["median"] == pytest.approx(1.2)
    assert data["ratios"]["paired_median_ci95"] == pytest.approx([1.2, 1.2])
    assert data["extra"] == {"replica": "db2"}


# --- report --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (850, "850 ns"),
        (123_440, "123.4 µs"),
        (22_213_000, "22.21 ms"),
        (1_500_000_000, "1.500 s"),
        (-2_500, "-2.5 µs"),
    ],
)
def test_format_ns(ns: float, text: str) -> None:
    assert format_ns(ns) == text


def test_markdown_table_pads_columns() -> None:
    assert markdown_table(["a", "bb"], [[1, "x"], ["long", 2]]).splitlines() == [
        "| a    | bb |",
        "| ---- | -- |",
        "| 1    | x  |",
        "| long | 2  |",
    ]
    with pytest.raises(ValueError, match="has 1 cells, expected 2"):
        markdown_table(["a", "b"], [[1]])


def test_replace_section_keeps_the_markers_and_the_rest() -> None:
    text = "intro\n<!-- routing:begin -->\nold\n<!-- routing:end -->\noutro\n"
    assert replace_section(text, "routing", "new\n") == (
        "intro\n<!-- routing:begin -->\nnew\n<!-- routing:end -->\noutro\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no markers", "is missing"),
        ("<!-- r:begin --><!-- r:begin --><!-- r:end -->", "appears 2 times"),
        ("<!-- r:end --> <!-- r:begin -->", "comes before"),
    ],
)
def test_replace_section_refuses_bad_markers(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace_section(text, "r", "body")
