"""KTO and the paired DPO surrogate as DRAGON uses them: hand-worked values."""

import math

import pytest
import torch

from mmalign.objectives import DPO, KTO, FlowKTO, kto_loss
from mmalign.recipes.online import select_pairs


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_docstring_example():
    # r = policy - ref = (1, -1); z0 = 0.5, beta = 1
    out = kto_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]), torch.tensor([True, False]), 0.5, beta=1.0)
    assert out[0].item() == pytest.approx(1 - sigmoid(0.5), abs=1e-6)  # 0.37754
    assert out[1].item() == pytest.approx(1 - sigmoid(1.5), abs=1e-6)  # 0.18243
    assert out[0].item() == pytest.approx(0.377541, abs=1e-6)


def test_kto_weights_and_clamped_detached_reference_point():
    policy = torch.tensor([0.0, 0.0], requires_grad=True)
    ref = torch.zeros(2)
    # a negative KL estimate is clamped to 0: r = 0 -> 1 - sigmoid(0) = 0.5, times lambda
    out = kto_loss(policy, ref, torch.tensor([True, False]), torch.tensor(-3.0), beta=2.0,
                   desirable_weight=2.0, undesirable_weight=0.5)
    assert out.tolist() == pytest.approx([1.0, 0.25])
    # z0 carries no gradient: d/dr of lambda_D(1 - sigma(beta r)) at r = 0 is -lambda_D beta / 4 = -1
    kl = torch.tensor(0.0, requires_grad=True)
    kto_loss(policy, ref, torch.tensor([True, False]), kl, beta=2.0, desirable_weight=2.0)[0].backward()
    assert policy.grad.tolist() == pytest.approx([-1.0, 0.0]) and kl.grad is None


def test_kto_objective_layout_and_kl_estimates():
    obj = KTO(beta=1.0)
    policy, ref = torch.tensor([-1.0, -1.0, -3.0, -3.0]), torch.tensor([-2.0, -2.0, -2.0, -2.0])
    # no mismatched scores: z0 = batch mean of r = mean(1, 1, -1, -1) = 0; [desirable; undesirable] halves
    losses, metrics = obj(policy, ref, {}, {})
    assert losses.tolist() == pytest.approx([1 - sigmoid(1)] * 2 + [1 - sigmoid(1)] * 2, abs=1e-6)
    assert metrics["kl"][0].item() == 0.0 and metrics["rewards/margin"][0].item() == pytest.approx(2.0)
    # mismatched pairs give z0 = mean(kl_policy - kl_ref) = 0.5
    losses, metrics = obj(policy, ref, {}, {"kl_policy": torch.tensor([1.0, 2.0]), "kl_ref": torch.tensor([1.0, 1.0])})
    assert losses[0].item() == pytest.approx(1 - sigmoid(0.5), abs=1e-6)
    assert losses[2].item() == pytest.approx(1 - sigmoid(1.5), abs=1e-6)
    # explicit labels override the layout
    losses, _ = obj(policy, ref, {"desirable": torch.tensor([False, True, True, False])}, {})
    assert losses[0].item() == pytest.approx(sigmoid(1), abs=1e-6)  # undesirable with r = 1: 1 - sigma(-1)
    assert FlowKTO().beta == 100.0
    with pytest.raises(ValueError):
        KTO(beta=0.0)


def test_dragon_pairing_then_paired_dpo_surrogate_by_hand():
    # two prompts, four samples each; best vs worst per prompt
    rewards = torch.tensor([[0.1, 0.9, 0.5, 0.3], [1.0, 1.0, 1.0, 0.2]])
    couples = select_pairs(rewards)
    assert couples == [(0, 1, 0), (1, 0, 3)]
    # all: top half zipped with bottom half, worst first: prompt 0 -> (1 vs 0), (2 vs 3)
    assert select_pairs(rewards[:1], positive_quantile=0.5, negative_quantile=0.5, pairing="all") == [(0, 1, 0), (0, 2, 3)]
    # min_gap drops the near-tie (0.5 vs 0.3 has gap 0.2)
    assert select_pairs(rewards[:1], positive_quantile=0.5, negative_quantile=0.5, pairing="all", min_gap=0.25) == [(0, 1, 0)]
    # thresholds and round-level quantiles
    assert select_pairs(rewards, selection="threshold", positive_threshold=0.85, negative_threshold=0.25) == [(0, 1, 0), (1, 0, 3)]
    # round scope: the 0.7 quantile of all eight rewards is 0.96 (only the 1.0s are positives), the 0.3
    # quantile 0.29 (0.1 and 0.2 are negatives): prompt 0 has no positive, so only prompt 1 couples
    assert select_pairs(rewards, scope="round", positive_quantile=0.3, negative_quantile=0.3) == [(1, 0, 3)]
    # a prompt whose samples all tie gives no couple once min_gap is 0
    assert select_pairs(torch.ones(1, 4)) == []
    # the couples go through DPO laid out [chosen; rejected]: policy (-1, -3), ref (-2, -2) -> margin 2,
    # beta 0.5 -> -log sigma(1) = 0.31326
    losses, metrics = DPO(beta=0.5)(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]))
    assert losses.item() == pytest.approx(0.3132617, abs=1e-6) and metrics["rewards/margin"].item() == pytest.approx(1.0)
