"""The DPO step on the public API, without the recipe: adapter -> score -> dpo_loss.

    python examples/dpo_api.py            # uses the shipped tiny LM in assets/text

The same four lines (prepare, score, reference score, loss) are what the offline_preference
recipe runs for every modality; a flow-model adapter only changes what ``score`` means.
"""

from pathlib import Path

import torch

from mmalign import dpo_loss, load_pairs
from mmalign.adapters import CausalLMAdapter, LoraSettings

ROOT = Path(__file__).resolve().parents[1]

adapter = CausalLMAdapter(pretrained=str(ROOT / "assets/text/arith-lm"), lora=LoraSettings(r=8))
pairs = load_pairs(ROOT / "assets/text/arith_pairs_train.jsonl")
optimizer = torch.optim.AdamW([p for p in adapter.model.parameters() if p.requires_grad], lr=2e-3)
encoded = [adapter.encode(p) for p in pairs]

for step in range(30):
    batch = adapter.collate(encoded[(step * 16) % len(encoded):][:16])
    aux = adapter.prepare(batch, generator=None)
    policy = adapter.score(batch, aux)                      # [2B]: chosen rows, then rejected
    with torch.no_grad(), adapter.reference():             # LoRA disabled = the reference
        ref = adapter.score(batch, aux)
    loss = dpo_loss(*policy.chunk(2), *ref.chunk(2), beta=0.1).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if step % 10 == 0 or step == 29:
        print(f"step {step:2d}  loss {loss.item():.4f}")
