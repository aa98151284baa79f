import math

import pytest
import torch
import torch.nn.functional as F

from mmalign.objectives import DPO, dpo_loss, preference_metrics

# The docstring example: policy (-1, -3), reference (-2, -2) -> margin 2; beta 0.5 -> beta*margin 1.
PC, PR, RC, RR = (torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.0))


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize(
    "loss_type, eps, expected",
    [
        ("sigmoid", 0.0, -log_sigmoid(1.0)),  # 0.313262
        ("sigmoid", 0.1, -0.9 * log_sigmoid(1.0) - 0.1 * log_sigmoid(-1.0)),  # cDPO
        ("robust", 0.1, (-0.9 * log_sigmoid(1.0) + 0.1 * log_sigmoid(-1.0)) / 0.8),
        ("ipo", 0.0, (2.0 - 1.0) ** 2),  # (margin - 1/(2 beta))^2 = (2 - 1)^2
        ("hinge", 0.0, 0.0),  # max(0, 1 - 1)
    ],
)
def test_hand_worked_values(loss_type, eps, expected):
    out = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type=loss_type, label_smoothing=eps)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_sigmoid_value_is_the_textbook_number():
    assert dpo_loss(PC, PR, RC, RR, beta=0.5).item() == pytest.approx(0.3132617, abs=1e-6)
    assert dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="hinge").item() == 0.0
    # hinge is active below the margin: beta*margin = 0.5 -> 0.5
    assert dpo_loss(PC, PR, RC, RR, beta=0.25, loss_type="hinge").item() == pytest.approx(0.5)


def trl_formulas(pc, pr, rc, rr, beta, loss_type, eps):
    """TRL's DPOTrainer loss branches, transcribed (trl 0.x `dpo_loss`; trl 1.x `_compute_loss`)."""
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    if loss_type == "robust":
        return (-F.logsigmoid(beta * logits) * (1 - eps) + F.logsigmoid(-beta * logits) * eps) / (1 - 2 * eps)
    if loss_type == "hinge":
        return torch.relu(1 - beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "hinge", "ipo"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_parity_with_trl_formulas_on_random_tensors(loss_type, eps):
    if eps and loss_type not in ("sigmoid", "robust"):
        pytest.skip("label smoothing only for sigmoid/robust")
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(64, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    ours = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=loss_type, label_smoothing=eps)
    ref = trl_formulas(pc.float(), pr.float(), rc.float(), rr.float(), 0.1, loss_type, eps)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_metrics_helpers():
    m = preference_metrics(torch.tensor([-1.0, -5.0]), torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -2.0]),
                           torch.tensor([-2.0, -2.0]), beta=0.5)
    torch.testing.assert_close(m["rewards/chosen"], torch.tensor([0.5, -1.5]))
    torch.testing.assert_close(m["rewards/rejected"], torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(m["rewards/margin"], torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(m["rewards/accuracy"], torch.tensor([1.0, 0.0]))


def test_objective_ipo_averages_per_token_and_rpo_adds_nll():
    policy = torch.tensor([-4.0, -6.0])  # [chosen; rejected] of one pair
    ref = torch.tensor([-6.0, -6.0])
    tokens = torch.tensor([2, 3])
    ipo = DPO(beta=0.5, loss_type="ipo")
    loss, _ = ipo(policy, ref, {"num_tokens": tokens})
    # averaged: chosen (-4 - -6)/2 = 1, rejected 0 -> margin 1; (1 - 1)^2 = 0
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    rpo = DPO(beta=0.5, rpo_alpha=2.0)
    loss, metrics = rpo(policy, ref, {"num_tokens": tokens})
    nll = 4.0 / 2  # mean token NLL of the chosen completion
    assert metrics["nll"].item() == pytest.approx(nll)
    assert loss.item() == pytest.approx(-log_sigmoid(0.5 * 2.0) + 2.0 * nll, rel=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = torch.tensor([-2.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    dpo_loss(pc, pr, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1).sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises chosen, lowers rejected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 0.0}, "beta must be positive"),
        ({"beta": 0.1, "label_smoothing": 0.5}, "label_smoothing"),
        ({"beta": 0.1, "loss_type": "ipo", "label_smoothing": 0.1}, "applies to"),
        ({"beta": 0.1, "loss_type": "nope"}, "unknown loss_type"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpo_loss(PC, PR, RC, RR, **kwargs)
