"""End-to-end parity with TRL's DPOTrainer: same tiny model, same pairs, same loss."""

import json

import pytest
import torch

trl = pytest.importorskip("trl")

from mmalign.adapters import CausalLMAdapter  # noqa: E402
from mmalign.data import validate_record  # noqa: E402
from mmalign.objectives import DPO  # noqa: E402

from ..conftest import arithmetic_pairs  # noqa: E402


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_full_pipeline_loss_matches_trl(tiny_lm_dir, tmp_path, loss_type):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = arithmetic_pairs(8, seed=3)
    adapter = CausalLMAdapter(pretrained=str(tiny_lm_dir))
    eps = 0.1 if loss_type == "robust" else 0.0
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, beta=0.5, loss_type=[loss_type],
        label_smoothing=eps, report_to=[], use_cpu=True, save_strategy="no",
    )
    trainer = DPOTrainer(model=adapter.model, ref_model=adapter.ref_model, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=adapter.tokenizer)
    with torch.no_grad():  # move the policy away from the reference so the loss is not log 2
        g = torch.Generator().manual_seed(0)
        for p in adapter.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    batch = next(iter(trainer.get_train_dataloader()))
    # Same tokens: each TRL row is one of our prompt+completion sequences.
    encoded = [adapter.encode(validate_record(r, "mem", i)) for i, r in enumerate(rows)]
    ours_rows = {tuple(e["prompt"] + e[k]) for e in encoded for k in ("chosen", "rejected")}
    trl_rows = {tuple(ids[m.bool()].tolist()) for ids, m in zip(batch["input_ids"], batch["attention_mask"])}
    assert ours_rows == trl_rows
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
        mb = adapter.collate(encoded)
        policy = adapter.score(mb)
        with adapter.reference():
            ref = adapter.score(mb)
        losses, _ = DPO(beta=0.5, loss_type=loss_type, label_smoothing=eps)(policy, ref, mb)
    assert (policy - ref).abs().min() > 1e-3  # the comparison is not at the trivial zero margin
    torch.testing.assert_close(losses.mean(), trl_loss.float(), rtol=2e-5, atol=2e-5)
