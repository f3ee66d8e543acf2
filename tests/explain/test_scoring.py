import numpy as np
import pytest

from labeller.explain.scoring import correlation_score, normalise_for_prompt


@pytest.mark.parametrize("seed", range(20))
def test_correlation_matches_numpy_over_the_concatenation(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=rng.integers(1, 8))
    true = [rng.normal(size=n).tolist() for n in lengths]
    simulated = [(np.asarray(t) * rng.normal() + rng.normal(size=len(t))).tolist() for t in true]
    expected = np.corrcoef(np.concatenate(true), np.concatenate(simulated))[0, 1]
    assert correlation_score(true, simulated) == pytest.approx(expected, rel=1e-10)


def test_concatenated_not_mean_of_windows():
    true = [[0.0, 1.0], [10.0, 11.0]]
    simulated = [[1.0, 0.0], [11.0, 10.0]]
    # each window alone correlates -1; over the concatenation the windows' offset dominates
    assert correlation_score(true, simulated) > 0.9


def test_constant_vectors_give_no_score():
    assert correlation_score([[1.0, 1.0, 1.0]], [[0.0, 3.0, 1.0]]) is None
    assert correlation_score([[0.0, 3.0, 1.0]], [[0.0, 0.0, 0.0]]) is None
    assert correlation_score([], []) is None


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        correlation_score([[1.0, 2.0]], [[1.0]])


def test_prompt_normalisation():
    assert normalise_for_prompt([-1.0, 0.0, 0.5, 0.99, 1.0, 2.0], 1.0) == [0, 0, 5, 9, 10, 10]
    assert normalise_for_prompt([0.3, -0.2], 0.0) == [0, 0]
