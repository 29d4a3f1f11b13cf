from hypothesis import given, settings
from hypothesis import strategies as st

from latentguard.monitors.rules import Window
from latentguard.monitors.rules.windows import make_window

values = st.lists(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
    min_size=1, max_size=200,
)


def brute(agg, window_values, above):
    if agg == "max":
        return max(window_values)
    if agg == "sum":
        return sum(window_values)
    if agg == "mean":
        return sum(window_values) / len(window_values)
    return float(sum(v > above for v in window_values))


@settings(max_examples=300, deadline=None)
@given(values, st.integers(1, 40), st.sampled_from(["max", "sum", "mean", "count"]),
       st.floats(-10, 10))
def test_window_matches_brute_force(xs, size, agg, above):
    w = make_window(Window(size=size, agg=agg, above=above if agg == "count" else None))
    for i, x in enumerate(xs):
        got, where = w.push(x, 1000 + i)
        last = xs[max(0, i + 1 - size): i + 1]
        want = brute(agg, last, above)
        assert abs(got - want) <= 1e-6 * max(1.0, sum(abs(v) for v in last))
        if agg == "max":
            assert xs[where - 1000] == got and 0 <= i - (where - 1000) < size
        else:
            assert where == 1000 + i


@settings(max_examples=200, deadline=None)
@given(values, st.sampled_from(["max", "sum", "mean", "count"]), st.floats(-10, 10))
def test_whole_request_window_matches_brute_force(xs, agg, above):
    w = make_window(Window(agg=agg, above=above if agg == "count" else None))
    for i, x in enumerate(xs):
        got, where = w.push(x, 1000 + i)
        seen = xs[: i + 1]
        assert abs(got - brute(agg, seen, above)) <= 1e-6 * max(1.0, sum(abs(v) for v in seen))
        if agg == "max":
            assert xs[where - 1000] == got


def test_whole_request_sum_does_not_drift():
    w = make_window(Window(agg="sum"))
    for _ in range(100_000):
        got, _ = w.push(0.1, 0)
    assert got == 10_000.0  # a plain float sum gives 10000.000000018848
