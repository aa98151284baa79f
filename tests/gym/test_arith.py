"""The arith text world: its shipped base LM, ground-truth reward, prompt split and features."""

from __future__ import annotations

import pytest
import torch

from mmalign import registry
from mmalign.gym import arith
from mmalign.gym.arith import Arith, ArithReward, char_ngram_features
from mmalign.gym.base import get_world


@pytest.fixture(scope="module")
def world() -> Arith:
    return Arith()


@pytest.fixture
def one_thread():
    """Tiny-model generation is ~5x slower with 2 contending threads than with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_registered(world):
    assert isinstance(get_world("arith"), Arith)
    assert (world.name, world.modality, world.dims) == ("arith", "text", ("correct", "concise"))
    reward = registry.build("reward", {"name": "gym_arith"})
    assert isinstance(reward, ArithReward) and reward.dims == world.dims and reward.modality == "text"


def test_reward_hand_worked():
    p = "Question: what is 3 plus 4? Answer:"
    samples = [
        " 7",                            # right, one word
        " the answer is 7",              # right, 4 words -> 1/4
        " 7, because 3 plus 4 makes 7",  # right (first integer is 7), 7 words -> 1/7
        " well, I think it is 8",        # wrong, 6 words -> 1/6
        " 3",                            # wrong: the first integer is what counts, not any integer
        " 17",                           # wrong: a whole integer is compared, not a digit
        " seven",                        # no integer: wrong; one word
        "",                              # nothing: wrong and not concise
        " it is 7",                      # right, 3 words -> 1/3
    ]
    expected = torch.tensor([[1, 1], [1, 1 / 4], [1, 1 / 7], [0, 1 / 6], [0, 1], [0, 1], [0, 1], [0, 0], [1, 1 / 3]])
    r = ArithReward()(samples, [p] * len(samples))
    assert r.shape == (len(samples), 2) and r.dtype == torch.float32
    torch.testing.assert_close(r, expected.float())
    # the sum comes from each sample's own prompt
    r2 = ArithReward()([" 24", " 24"], ["Question: what is 12 plus 12? Answer:", "Question: what is 0 plus 1? Answer:"])
    torch.testing.assert_close(r2[:, 0], torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="cannot parse"):
        ArithReward()([" 7"], ["what is three plus four?"])
    with pytest.raises(ValueError, match="one prompt per sample"):
        ArithReward()([" 7"], None)


def test_prompts_split(world):
    train, ev = world.prompts("train"), world.prompts("eval")
    assert len(train) == 129 and len(ev) == 40
    assert len(set(train)) == 129 and len(set(ev)) == 40
    assert not set(train) & set(ev)
    assert set(train) | set(ev) == {arith.arith_prompt(a, b) for a, b in arith.all_pairs()}
    # seeded subsets, within the split; repeats only once the split is exhausted
    assert world.prompts("eval", 10, seed=3) == world.prompts("eval", 10, seed=3)
    assert world.prompts("eval", 10, seed=3) != world.prompts("eval", 10, seed=4)
    assert set(world.prompts("train", 64, seed=1)) <= set(train) and len(set(world.prompts("train", 64, seed=1))) == 64
    many = world.prompts("eval", 100, seed=0)
    assert len(many) == 100 and set(many) == set(ev)
    # the split does not depend on the seed
    assert set(world.prompts("eval", seed=7)) == set(ev)
    for p in train[:5]:
        a, b = arith.parse_prompt(p)
        assert p == arith.arith_prompt(a, b)
    with pytest.raises(ValueError, match="split"):
        world.prompts("test")


def test_features(world):
    f = world.features([" 7", " 7", " the answer is 7", ""])
    assert f.shape == (4, arith.FEATURE_DIM)
    assert torch.equal(f[0], f[1]) and not torch.equal(f[0], f[2])
    assert (f.sum(1) > 0).all()  # boundary marks: even an empty completion has features
    torch.testing.assert_close(char_ngram_features([" 7"]), f[:1])  # stable hashing
    from mmalign.rewards.vendi import vendi_score

    assert float(vendi_score(f[:2].double())) == pytest.approx(1.0)
    assert float(vendi_score(f[[0, 2, 3]].double())) > 1.5


def test_base_loads_samples_and_is_imperfect(world, one_thread):
    from transformers import AutoModelForCausalLM

    from mmalign.recipes.sample import make_sampler

    model = AutoModelForCausalLM.from_pretrained(world.base_path)
    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert sum(f.stat().st_size for f in world.base_path.iterdir()) < 2_000_000
    sampler = make_sampler({"name": "causal_lm", "pretrained": str(world.base_path)}, None, world.sample_kwargs,
                           device="cpu")
    prompts = [p for p in world.prompts("eval") for _ in range(4)]
    seeds = list(range(len(prompts)))
    samples = sampler(prompts, seeds)
    assert isinstance(samples, list) and len(samples) == len(prompts) and all(isinstance(s, str) for s in samples)
    assert sampler(prompts[:8], seeds[:8]) == samples[:8]  # one seed, one sample
    r = world.reward()(samples, prompts)
    correct, concise = r.mean(0).tolist()
    # imperfect on both dimensions (measured: correct ~0.57, concise ~0.71), yet it can add and be brief
    assert 0.2 < correct < 0.9, samples[:16]
    assert 0.4 < concise < 0.95, samples[:16]
    assert r[:, 1].eq(1).any() and r[:, 1].lt(1).any()
