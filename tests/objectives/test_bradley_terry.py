import math

import pytest
import torch

from mmalign.objectives import BradleyTerry, bt_loss, bt_ties_loss, pairwise_accuracy, rao_kupper_predict


def test_bt_hand_worked():
    assert bt_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)
    # margin 1 -> -log sigmoid(0) = log 2
    assert bt_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0).item() == pytest.approx(math.log(2), rel=1e-6)
    # centering: + c (rc + rr)^2 = 0.1 * 9
    got = bt_loss(torch.tensor([2.0]), torch.tensor([1.0]), center_coef=0.1).item()
    assert got == pytest.approx(math.log1p(math.exp(-1)) + 0.9, rel=1e-6)


def test_bt_with_ties_hand_worked_values_and_probabilities_sum_to_one():
    zero = torch.zeros(1)
    assert bt_ties_loss(zero, torch.tensor([False])).item() == pytest.approx(math.log(6), rel=1e-6)
    assert bt_ties_loss(zero, torch.tensor([True])).item() == pytest.approx(math.log(1.5), rel=1e-6)
    for delta in (-2.0, -0.3, 0.0, 0.7, 3.0):
        d = torch.tensor([delta])
        p_win = torch.exp(-bt_ties_loss(d, torch.tensor([False])))
        p_lose = torch.exp(-bt_ties_loss(-d, torch.tensor([False])))
        p_tie = torch.exp(-bt_ties_loss(d, torch.tensor([True])))
        assert (p_win + p_lose + p_tie).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="theta"):
        bt_ties_loss(zero, torch.tensor([True]), theta=1.0)


def test_rao_kupper_decision():
    # theta 5: tie is most likely near zero, a clear gap decides
    assert rao_kupper_predict(torch.tensor([0.0, 5.0, -5.0])).tolist() == [0, 1, -1]


def test_objective_per_dimension_labels_and_accuracies():
    # one pair, dims (VQ, TA): VQ chosen better, TA tie
    policy = torch.tensor([[2.0, 0.1], [0.0, 0.0]])  # [chosen; rejected] x D
    batch = {"labels": torch.tensor([[1, 0]]), "reward_dims": ("VQ", "TA")}
    loss, metrics = BradleyTerry()(policy, None, batch)
    expected = (bt_ties_loss(torch.tensor([2.0]), torch.tensor([False])) + bt_ties_loss(torch.tensor([0.1]), torch.tensor([True]))) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    summary = pairwise_accuracy({k: v.mean().item() for k, v in metrics.items()})
    assert summary["accuracy/VQ"] == 1.0 and math.isnan(summary["accuracy/TA"])  # no non-tied TA pair
    assert summary["accuracy_with_ties/TA"] == 1.0  # |0.1| is well inside the tie region
    # rejected-better labels flip the sign; "skip" ignores ties
    loss, _ = BradleyTerry(ties="skip")(policy, None, {"labels": torch.tensor([[-1, 0]]), "reward_dims": ("VQ", "TA")})
    assert loss.item() == pytest.approx(bt_loss(torch.tensor([-2.0]), torch.tensor([0.0])).item(), rel=1e-6)
