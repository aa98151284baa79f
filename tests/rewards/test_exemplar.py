import pytest
import torch
from PIL import Image

from mmalign.rewards.embedders import CallableEmbedder, Embedder
from mmalign.rewards.exemplar import ExemplarReward, SetFADCredit, VendiCredit, kernel_similarity
from mmalign.rewards.frechet import frechet_distance


def channel_means(images):
    return images.float().mean(dim=(2, 3))  # [B, 3]


def write_exemplars(folder, values):
    folder.mkdir()
    for i, v in enumerate(values):
        Image.new("RGB", (4, 4), tuple(v)).save(folder / f"{i}.png")
    return folder


def image(rgb):  # [3, 4, 4] in [-1, 1] from 0..255 values
    return (torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1).view(3, 1, 1).expand(3, 4, 4)


@pytest.fixture
def warm(tmp_path):
    return write_exemplars(tmp_path / "warm", [(250, 120, 0), (230, 100, 20), (255, 140, 10), (240, 110, 0)])


def test_kernel_nearest_and_centroid_prefer_samples_like_the_exemplars(warm, tmp_path):
    emb = CallableEmbedder(channel_means, "image")
    samples = torch.stack([image((245, 115, 5)), image((0, 100, 250))])
    for mode in ("kernel", "nearest", "centroid"):
        reward = ExemplarReward(embedder=emb, exemplars=str(warm), mode=mode, cache=str(tmp_path / f"{mode}.safetensors"))
        out = reward(samples)
        assert out.shape == (2, 1) and out[0, 0] > out[1, 0], mode
    # nearest with k=1 is the best cosine to one exemplar, by hand
    reward = ExemplarReward(embedder=emb, exemplars=str(warm), mode="nearest")
    x = channel_means(samples)
    by_hand = torch.nn.functional.cosine_similarity(x[:, None], reward.exemplars[None], dim=-1).max(1).values
    torch.testing.assert_close(reward(samples)[:, 0], by_hand)


def test_kernel_similarity_hand_worked():
    x, ex = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # bandwidth 1: mean(exp(-1/2), exp(-4/2))
    expected = (torch.exp(torch.tensor(-0.5)) + torch.exp(torch.tensor(-2.0))) / 2
    torch.testing.assert_close(kernel_similarity(x, ex, 1.0), expected.view(1))


def test_exemplar_cache_is_reused(warm, tmp_path):
    calls = []

    def counting(images):
        calls.append(images.shape[0])
        return channel_means(images)

    emb = CallableEmbedder(counting, "image")
    cache = tmp_path / "ex.safetensors"
    ExemplarReward(embedder=emb, exemplars=str(warm), cache=str(cache))
    n = len(calls)
    ExemplarReward(embedder=emb, exemplars=str(warm), cache=str(cache))
    assert len(calls) == n  # read from the cache, not re-embedded


def test_cross_modal_exemplars_text_captions_against_images(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("warm orange light\nsunset glow\n")
    text_emb = CallableEmbedder(lambda texts: torch.tensor([[1.0, 0.4, -1.0]] * len(texts)), "text")
    reward = ExemplarReward(embedder=CallableEmbedder(channel_means, "image"), exemplars=str(captions),
                            exemplar_embedder=text_emb, mode="centroid")
    out = reward(torch.stack([image((250, 180, 0)), image((0, 80, 250))]))
    assert out[0, 0] > 0.5 > out[1, 0]


class FrameMeans(Embedder):
    modality = "video"

    def embed(self, samples, *, sample_rate=None):
        return self.embed_frames(samples).mean(1)

    def embed_frames(self, videos):
        return videos.float().mean(dim=(3, 4)).transpose(1, 2)  # [B, F, 3]


def test_per_sample_fad_is_lower_for_a_clip_like_the_exemplars(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(6):  # GIF exemplars whose frames sit around mid-grey
        frames = [Image.new("RGB", (4, 4), tuple(int(v) for v in (128 + 40 * torch.randn(3, generator=g)).clamp(0, 255)))
                  for _ in range(6)]
        frames[0].save(folder / f"{i}.gif", save_all=True, append_images=frames[1:], duration=100)
    reward = ExemplarReward(embedder=FrameMeans(), exemplars=str(folder), mode="per_sample_fad")
    like = torch.randn(1, 3, 8, 4, 4, generator=g) * 0.3
    unlike = torch.randn(1, 3, 8, 4, 4, generator=g) * 0.3 + 0.9
    scores = reward(torch.cat([like, unlike]))
    assert scores[0, 0] > scores[1, 0]  # higher = closer (negated FAD)


def test_set_fad_credit_is_the_leave_one_out_change(warm):
    emb = CallableEmbedder(channel_means, "image")
    reward = SetFADCredit(embedder=emb, exemplars=str(warm))
    samples = torch.stack([image((245, 115, 5)), image((235, 125, 15)), image((250, 105, 0)), image((0, 100, 250))])
    credit = reward(samples)[:, 0]
    x = channel_means(samples).double()
    ex_feats = channel_means(torch.stack([image(v) for v in
                                                            [(250, 120, 0), (230, 100, 20), (255, 140, 10), (240, 110, 0)]])).double()
    full = frechet_distance(x, ex_feats)
    without_last = frechet_distance(x[:3], ex_feats)
    assert credit[3].item() == pytest.approx((without_last - full).item(), rel=1e-4, abs=1e-6)
    assert credit[3] < 0 < credit[:3].min()  # the blue outlier pushes the batch away from the exemplars


def test_vendi_credit_rewards_the_unique_sample():
    emb = CallableEmbedder(lambda x: x.float().flatten(1)[:, :3], "image")
    a, b = torch.zeros(3, 2, 2), torch.zeros(3, 2, 2)
    a.view(-1)[:3] = torch.tensor([1.0, 0.0, 0.0])
    b.view(-1)[:3] = torch.tensor([0.0, 1.0, 0.0])
    credit = VendiCredit(embedder=emb)(torch.stack([a, a.clone(), b]))[:, 0]
    assert credit[2] > credit[0] and credit[0] == pytest.approx(credit[1].item())


def test_vendi_credit_rbf_needs_a_bandwidth():
    emb = CallableEmbedder(lambda x: x.float().flatten(1)[:, :3], "image")
    with pytest.raises(ValueError, match="bandwidth"):
        VendiCredit(embedder=emb, kernel="rbf")
    out = VendiCredit(embedder=emb, kernel="rbf", bandwidth=1.0)(torch.randn(4, 3, 2, 2))
    assert out.shape == (4, 1) and torch.isfinite(out).all()
