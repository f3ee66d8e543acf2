import pytest

from labeller.explain.baseline import (
    MAX_TOKENS_NAMED,
    NotScorableOffline,
    explain_baseline,
    simulate_baseline,
    token_strengths,
)
from labeller.explain.scoring import correlation_score


def test_a_neuron_firing_equally_on_a_class_of_tokens_names_the_whole_class():
    # Each window's peak is a different keyword; v1 named only the peaks' top three by sum.
    windows = [
        ([" def", " f", "(", " class", " A"], [4.0, 0.0, 0.1, 4.0, 0.0]),
        ([" return", " x", " def", " g"], [4.0, 0.2, 4.0, 0.0]),
        ([" class", " B", ":", " return"], [4.0, 0.0, 0.0, 4.0]),
    ]
    assert explain_baseline(windows) == 'fires on " class" (10), " def" (10) and " return" (10)'


def test_a_single_token_neuron_names_one_token():
    windows = [
        ([" the", " cat", " sat"], [0.0, 0.1, 0.0]),
        ([" a", " the", " dog"], [0.3, 5.0, 0.2]),
        ([" the", " end"], [4.0, 0.0]),
    ]
    assert explain_baseline(windows) == 'fires on " the" (10)'


def test_a_token_that_peaks_once_but_is_quiet_elsewhere_is_not_named():
    # " x" carries window 0's maximum but is silent on its three other occurrences: mean 1.0,
    # under half of " if" (mean 3.0), so the aggregate does not name it.
    windows = [
        ([" x", " if"], [4.0, 3.0]),
        ([" x", " if", " x"], [0.0, 3.0, 0.0]),
        ([" if", " x"], [3.0, 0.0]),
    ]
    assert token_strengths(windows) == [(" if", 10)]


def test_strengths_are_relative_means_and_the_threshold_is_half():
    windows = [([" a", " b", " c", " d"], [10.0, 6.0, 5.0, 4.9])]
    assert token_strengths(windows) == [(" a", 10), (" b", 6), (" c", 5)]


def test_at_most_max_tokens_are_named():
    tokens = [f" t{i}" for i in range(MAX_TOKENS_NAMED + 4)]
    windows = [(tokens, [3.0] * len(tokens))]
    named = token_strengths(windows)
    assert len(named) == MAX_TOKENS_NAMED
    assert explain_baseline(windows).count('"') == 2 * MAX_TOKENS_NAMED


def test_nothing_firing_names_one_token_without_crashing():
    assert token_strengths([([" a", " b"], [-1.0, -0.5])]) == [(" b", 10)]


def test_the_simulator_round_trips_its_own_graded_label():
    windows = [
        ([" def", " f", " class", " A", " if"], [5.0, 0.0, 3.0, 0.0, 0.2]),
        ([" return", " x", " def"], [4.0, 0.0, 5.0]),
    ]
    label = explain_baseline(windows)
    assert label == 'fires on " def" (10), " return" (8) and " class" (6)'
    predicted = simulate_baseline(label, [tokens for tokens, _ in windows])
    assert predicted == [[10, 0, 6, 0, 0], [8, 0, 10]]
    score = correlation_score([list(a) for _, a in windows], predicted)
    assert score is not None and score > 0.95


def test_baseline_simulator_matches_quoted_tokens_and_context():
    label = 'fires on " the" after " love"'
    predictions = simulate_baseline(label, [[" love", " the", " the", "the"], [" I", " the"]])
    assert predictions == [[0, 10, 0, 0], [0, 0]]
    assert simulate_baseline('"def" and "class" at the start', [["def", " f", "class"]]) == [
        [10, 0, 10]
    ]


def test_strengths_above_ten_are_capped():
    assert simulate_baseline('fires on "a" (12)', [["a", "b"]]) == [[10, 0]]


def test_labels_without_quoted_tokens_are_not_scorable():
    with pytest.raises(NotScorableOffline):
        simulate_baseline("Python function definitions", [["def", " f"]])


def test_baseline_label_round_trips_newline_tokens():
    label = explain_baseline([(["a", "\n", "b"], [0.0, 1.0, 0.0])])
    assert simulate_baseline(label, [["a", "\n", "b"]]) == [[0, 10, 0]]


def test_one_rare_peak_does_not_push_the_recurring_class_out():
    """A token seen once at a high peak is named, but the bar is set by what recurs."""
    windows = [
        ([" f", "ires", " def", " x"], [0.0, 9.0, 3.0, 0.0]),
        ([" def", " y", " class"], [3.0, 0.0, 2.0]),
        ([" class", " def"], [2.0, 3.0]),
    ]
    assert token_strengths(windows) == [("ires", 10), (" def", 10), (" class", 7)]
