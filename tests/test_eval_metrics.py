"""Metrics on hand-checked examples."""

import math

import pytest

from lexlora.eval.metrics import (
    bootstrap_ci,
    exact_match,
    normalize_answer,
    paired_difference,
    rouge_l,
    token_f1,
)


def test_normalize_answer():
    assert normalize_answer("The  Licensee, shall PAY!") == "licensee shall pay"


@pytest.mark.parametrize(
    ("pred", "ref", "em"),
    [("Permissive.", "permissive", 1.0), ("A00.0", "A00.0", 1.0), ("Copyleft", "Permissive", 0.0)],
)
def test_exact_match(pred, ref, em):
    assert exact_match(pred, ref) == em


def test_token_f1_hand_computed():
    # pred tokens: licensee shall pay fees; ref: customer shall pay all fees
    # common = shall, pay, fees = 3; precision 3/4, recall 3/5; F1 = 2*.75*.6/1.35 = 0.6667
    assert math.isclose(
        token_f1("The Licensee shall pay fees", "Customer shall pay all fees"), 2 / 3
    )
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert token_f1("no overlap", "entirely different") == 0.0


def test_rouge_l_hand_computed():
    # LCS of "the cat sat on the mat" vs "the cat lay on the mat" = the cat on the mat (5)
    # precision = recall = 5/6 → F = 5/6
    assert math.isclose(rouge_l("the cat sat on the mat", "the cat lay on the mat"), 5 / 6)
    assert rouge_l("alpha beta", "gamma delta") == 0.0


def test_bootstrap_interval_contains_mean_and_shrinks_with_n():
    small = bootstrap_ci([0, 1] * 10)
    large = bootstrap_ci([0, 1] * 500)
    assert small[1] < 0.5 < small[2] and small[0] == 0.5
    assert (large[2] - large[1]) < (small[2] - small[1])
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0, 1.0)


def test_paired_difference_detects_consistent_gain():
    base = [0.0, 1.0, 0.0, 1.0, 0.0] * 20
    adapter = [1.0, 1.0, 0.0, 1.0, 1.0] * 20
    mean, low, high = paired_difference(adapter, base)
    assert math.isclose(mean, 0.4) and 0 < low < mean < high
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 0.0])
