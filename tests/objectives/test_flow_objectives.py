import math

import pytest
import torch

from mmalign.data import validate_record
from mmalign.data.pairs import DataError, stack_rewards
from mmalign.objectives import SFT, DiffusionDPO, FlowDPO, RWR, beta_schedule_factor, rwr_loss, rwr_weights


def test_flow_dpo_on_a_fixed_tiny_case():
    # Mean-squared errors (scores are their negatives) of one pair under policy and reference.
    policy = -torch.tensor([0.010, 0.014])  # [chosen; rejected]
    ref = -torch.tensor([0.012, 0.013])
    # margin = (-0.010 + 0.014) - (-0.012 + 0.013) = 0.003; beta 100 -> -log sigmoid(0.3)
    loss, metrics = FlowDPO(beta=100.0)(policy, ref)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.3)), rel=1e-5)
    assert metrics["rewards/margin"].item() == pytest.approx(0.3, rel=1e-4)


def test_flow_dpo_time_dependent_beta():
    policy, ref = -torch.tensor([0.010, 0.014]), -torch.tensor([0.012, 0.013])
    t = torch.tensor([0.5, 0.5])  # shared by chosen and rejected
    loss, _ = FlowDPO(beta=100.0, beta_schedule="flow_quadratic")(policy, ref, aux={"t": t})
    # beta_t = 100 * (1 - 0.5)^2 = 25 -> -log sigmoid(25 * 0.003)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.075)), rel=1e-5)
    torch.testing.assert_close(beta_schedule_factor(torch.tensor([0.0, 1.0, 0.25]), "flow_quadratic"),
                               torch.tensor([1.0, 0.0, 0.5625]))
    with pytest.raises(ValueError, match="beta_schedule"):
        FlowDPO(beta_schedule="cubic")


def test_diffusion_dpo_beta_convention_matches_the_original_half_beta():
    policy, ref = -torch.tensor([0.10, 0.30]), -torch.tensor([0.20, 0.20])
    ours, _ = DiffusionDPO(beta=2500.0)(policy, ref)
    # Original Diffusion-DPO: inside = -0.5 * 5000 * ((e_w - e_ref_w) - (e_l - e_ref_l))
    e_w, e_l, r_w, r_l = 0.10, 0.30, 0.20, 0.20
    inside = -0.5 * 5000 * ((e_w - r_w) - (e_l - r_l))
    original = -torch.nn.functional.logsigmoid(torch.tensor(inside))
    assert ours.item() == pytest.approx(original.item(), rel=1e-5)


def test_rwr_weights_hand_worked():
    w = rwr_weights(torch.tensor([0.0, math.log(3.0)]), beta=1.0)
    torch.testing.assert_close(w, torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(rwr_weights(torch.tensor([2.0, 2.0, 2.0]), beta=0.1), torch.ones(3))
    clipped = rwr_weights(torch.tensor([0.0, 0.0, 0.0, 10.0]), beta=1.0, clip=2.0)
    assert clipped.max().item() == 2.0 and clipped[:3].max() < 0.01
    # losses weight the denoising error (= -score)
    torch.testing.assert_close(rwr_loss(-torch.tensor([0.2, 0.4]), torch.tensor([0.0, math.log(3.0)]), beta=1.0),
                               torch.tensor([0.1, 0.6]))


def test_rwr_objective_with_per_dimension_rewards():
    records = [validate_record({"prompt": "p", "chosen": "a", "rejected": "b",
                                "reward_chosen": {"TA": 1.0, "VQ": 0.0}, "reward_rejected": {"TA": 0.0, "VQ": 0.5}},
                               "mem", 1)]
    batch = stack_rewards([{"reward_chosen": r.reward_chosen, "reward_rejected": r.reward_rejected} for r in records])
    assert batch["reward_dims"] == ("TA", "VQ") and batch["rewards"].tolist() == [[1.0, 0.0], [0.0, 0.5]]
    scores = -torch.tensor([0.2, 0.2])
    loss, _ = RWR(beta=1.0, clip=None, dim_weights={"TA": 1.0})(scores, None, batch)
    w = torch.softmax(torch.tensor([1.0, 0.0]), 0) * 2
    torch.testing.assert_close(loss, w * 0.2)
    with pytest.raises(ValueError, match="unknown dimensions"):
        RWR(dim_weights={"MQ": 1.0})(scores, None, batch)
    with pytest.raises(ValueError, match="needs rewards"):
        RWR()(scores, None, {})


def test_reward_fields_are_validated():
    with pytest.raises(DataError, match="field 'reward_rejected': missing"):
        validate_record({"prompt": "p", "chosen": "a", "rejected": "b", "reward_chosen": 1.0}, "f.jsonl", 3)
    with pytest.raises(DataError, match="same dimensions"):
        validate_record({"prompt": "p", "chosen": "a", "rejected": "b", "reward_chosen": {"TA": 1},
                         "reward_rejected": {"VQ": 1}}, "f.jsonl", 3)
    with pytest.raises(DataError, match="field 'reward_chosen': expected a number"):
        validate_record({"prompt": "p", "chosen": "a", "rejected": "b", "reward_chosen": "high",
                         "reward_rejected": 1}, "f.jsonl", 3)


def test_sft_uses_only_the_chosen_items():
    loss, _ = SFT()(-torch.tensor([0.2, 0.4, 9.0, 9.0]))
    torch.testing.assert_close(loss, torch.tensor([0.2, 0.4]))
    loss, _ = SFT()(-torch.tensor([6.0, 9.0]), batch={"num_tokens": torch.tensor([3, 1])})
    torch.testing.assert_close(loss, torch.tensor([2.0]))
    assert not SFT.needs_reference and not RWR.needs_reference and FlowDPO.needs_reference
