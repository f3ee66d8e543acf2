import pytest

from labeller.explain.baseline import NotScorableOffline, explain_baseline, simulate_baseline


def test_baseline_names_the_peak_tokens_and_consistent_context():
    windows = [
        ([" I", " love", " the", " cat"], [0.0, 0.1, 3.0, 0.2]),
        ([" we", " love", " the", " dog"], [0.0, 0.0, 2.5, 0.0]),
        (["x", " love", " the", " end"], [0.0, 0.0, 2.0, 0.0]),
        (["def", " f"], [1.0, 0.0]),
    ]
    assert explain_baseline(windows) == 'fires on " the" and "def" after " love"'


def test_baseline_simulator_matches_quoted_tokens_and_context():
    label = 'fires on " the" after " love"'
    predictions = simulate_baseline(label, [[" love", " the", " the", "the"], [" I", " the"]])
    assert predictions == [[0, 10, 0, 0], [0, 0]]
    assert simulate_baseline('"def" and "class" at the start', [["def", " f", "class"]]) == [
        [10, 0, 10]
    ]


def test_labels_without_quoted_tokens_are_not_scorable():
    with pytest.raises(NotScorableOffline):
        simulate_baseline("Python function definitions", [["def", " f"]])


def test_baseline_label_round_trips_newline_tokens():
    label = explain_baseline([(["a", "\n", "b"], [0.0, 1.0, 0.0])])
    assert simulate_baseline(label, [["a", "\n", "b"]]) == [[0, 10, 0]]
