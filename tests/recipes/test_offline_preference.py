import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmalign.cli import main
from mmalign.config import load_config
from mmalign.recipes.offline_preference import OfflinePreference, batch_indices
from mmalign.utils.metrics import read_metrics

from ..conftest import ROOT, arithmetic_pairs, write_jsonl


def train_losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]


def test_cli_lora_run_trains_the_adapter_and_not_the_base(make_config, tiny_lm_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_config(train={"save_every": 2, "eval_every": 2, "plot": True}, accelerate={"log_with": ["tensorboard"]})
    assert main(["train", str(cfg)]) == 0
    out = tmp_path / "out"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [0, 2, 4]
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-4)  # step 0: policy == reference
    first_train = next(r for r in rows if r["split"] == "train")
    for key in ("loss", "rewards/margin", "rewards/accuracy", "lr", "grad_norm", "step_time"):
        assert key in first_train
    assert (out / "curves.png").stat().st_size > 1000 and (out / "config.yaml").is_file()
    assert list(out.rglob("events.out.tfevents*")), "no TensorBoard events"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    # The final artifact is a stock PEFT adapter over the untouched base.
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, out / "final")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # initialised at zero, so trained
    merged = model.merge_and_unload()
    assert not torch.equal(merged.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           original["model.layers.0.self_attn.q_proj.weight"])
    on_disk = load_file(str(tiny_lm_dir / "model.safetensors"))
    assert all(torch.equal(on_disk[k], original[k]) for k in on_disk)


def test_full_finetuning_changes_policy_not_reference(make_config, tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = load_config(make_config(adapter={"lora": None}, optim={"lr": 1e-3}))
    recipe = OfflinePreference(cfg)
    recipe.run()
    initial = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final").state_dict()
    ref = recipe.adapter.ref_model.state_dict()
    assert all(torch.equal(ref[k], initial[k]) for k in initial)
    assert sum(not torch.equal(trained[k], initial[k]) for k in initial) >= len(initial) // 2


def test_loss_falls_on_a_fixed_batch(tmp_path, make_config):
    data = write_jsonl(tmp_path / "eight.jsonl", arithmetic_pairs(8, seed=5))
    cfg = make_config(data={"path": str(data), "eval_fraction": 0.0}, objective={"beta": 0.5},
                      train={"max_steps": 20, "batch_size": 8, "lr_scheduler": "constant"})
    assert main(["train", str(cfg)]) == 0
    losses = train_losses(tmp_path / "out")
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # LoRA starts at the reference
    assert losses[-1] < 0.35, losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 15  # mostly monotone


def test_gradient_accumulation_matches_one_big_batch(make_config):
    states = []
    for bs, accum in ((8, 1), (4, 2)):
        cfg = load_config(make_config(f"r{bs}.yaml", output_dir=f"{bs}", train={"max_steps": 1, "batch_size": bs,
                          "gradient_accumulation_steps": accum}), [f"output_dir={make_config().parent}/o{bs}"])
        recipe = OfflinePreference(cfg)
        recipe.setup()
        recipe.train()
        states.append({k: v.clone() for k, v in recipe.adapter.trainable_state_dict().items()})
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-4, atol=1e-6)


def test_batch_order_is_seeded_sharded_and_covers_each_epoch():
    n, bs, world = 20, 2, 2
    epoch0 = [i for step in range(5) for rank in range(world) for i in batch_indices(n, bs, world, rank, 0, step)]
    assert sorted(epoch0) == list(range(20))
    assert batch_indices(n, bs, world, 1, 7, 3) == batch_indices(n, bs, world, 1, 7, 3)
    assert batch_indices(n, bs, world, 0, 0, 0) != batch_indices(n, bs, world, 0, 1, 0)


def test_precomputed_reference_gives_the_same_losses_without_a_copy(make_config, tmp_path):
    base = {"adapter": {"lora": None}, "optim": {"lr": 1e-3}}
    plain = load_config(make_config("a.yaml", **base), [f"output_dir={tmp_path}/plain"])
    OfflinePreference(plain).run()
    cached_cfg = load_config(make_config("b.yaml", **base), [f"output_dir={tmp_path}/cached", "train.precompute_ref=true"])
    recipe = OfflinePreference(cached_cfg)
    recipe.run()
    assert recipe.adapter.ref_model is None
    cache = tmp_path / "cached" / "ref_scores.safetensors"
    assert cache.is_file()
    assert train_losses(tmp_path / "cached") == pytest.approx(train_losses(tmp_path / "plain"), abs=1e-5)
    # A second run with the same model and data reuses the cache instead of recomputing it.
    mtime = cache.stat().st_mtime_ns
    again = load_config(make_config("b.yaml", **base), [f"output_dir={tmp_path}/cached", "train.precompute_ref=true",
                                                       "train.resume=true", "train.max_steps=5"])
    OfflinePreference(again).run()
    assert cache.stat().st_mtime_ns == mtime


def test_bf16_mixed_precision_run_completes(make_config, tmp_path):
    assert main(["train", str(make_config(accelerate={"mixed_precision": "bf16"}))]) == 0
    losses = train_losses(tmp_path / "out")
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


def test_existing_checkpoints_need_resume(make_config):
    cfg = make_config()
    assert main(["train", str(cfg)]) == 0
    with pytest.raises(FileExistsError, match="train.resume=true"):
        main(["train", str(cfg)])


def test_malformed_data_stops_before_training(make_config, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", arithmetic_pairs(5) + ['{"prompt": "p", "chosen": "a"}'])
    assert main(["train", str(make_config()), f"data.path={bad}"]) == 2
    assert "bad.jsonl:6: field 'rejected': missing" in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists()


KILL_AFTER_CHECKPOINT = textwrap.dedent("""
    import os, signal, sys
    from mmalign.utils import checkpoint
    real_commit = checkpoint.commit
    def commit_then_die(tmp, final, keep_last=None):
        real_commit(tmp, final, keep_last)
        if final.name == "step-00000004":
            os.kill(os.getpid(), signal.SIGKILL)  # as hard as a pre-empted node
    checkpoint.commit = commit_then_die
    from mmalign.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_and_resume_reproduces_the_uninterrupted_losses(make_config, tmp_path):
    train = {"max_steps": 8, "save_every": 2, "eval_every": 4}
    # Every run in a fresh process with one thread, so that float reduction order is the same in all.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "mmalign.cli", "train"]
    full = make_config("full.yaml", train=train, output_dir=str(tmp_path / "full"))
    proc = subprocess.run(cli + [str(full)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    killed = make_config("killed.yaml", train=train, output_dir=str(tmp_path / "killed"))
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, "train", str(killed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    # a torn write of a later checkpoint must be ignored
    (tmp_path / "killed" / "checkpoints" / ".tmp-step-00000006").mkdir()
    assert train_losses(tmp_path / "killed") == pytest.approx(train_losses(tmp_path / "full")[:4], abs=1e-6)
    proc = subprocess.run(cli + [str(killed), "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert train_losses(tmp_path / "killed") == pytest.approx(train_losses(tmp_path / "full"), abs=1e-6)
    final_a = load_file(str(tmp_path / "full" / "final" / "adapter_model.safetensors"))
    final_b = load_file(str(tmp_path / "killed" / "final" / "adapter_model.safetensors"))
    for k in final_a:
        torch.testing.assert_close(final_a[k], final_b[k], rtol=0, atol=1e-6)


TWO_RANKS = textwrap.dedent("""
    import sys
    import torch.distributed as dist
    from safetensors.torch import save_file
    from mmalign.config import load_config
    from mmalign.recipes.offline_preference import OfflinePreference
    recipe = OfflinePreference(load_config(sys.argv[1]))
    recipe.setup()
    recipe.train()
    rank = recipe.accelerator.process_index
    assert recipe.accelerator.num_processes == 2
    state = {k: v.contiguous() for k, v in recipe.adapter.trainable_state_dict().items()}
    save_file(state, f"{sys.argv[2]}/rank{rank}.safetensors")
    recipe.cleanup()
""")


def test_two_process_gloo_run_keeps_ranks_identical(make_config, tmp_path, tiny_lm_dir):
    cfg = make_config(train={"max_steps": 3, "save_every": 2})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "--no-python", sys.executable, "-c", TWO_RANKS, str(cfg), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys() and a
    initial_b = [k for k in a if "lora_B" in k]
    assert all(a[k].abs().sum() > 0 for k in initial_b)  # trained
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")  # written once, by rank 0
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]


def test_sample_command_for_text_uses_the_trained_adapter(make_config, tmp_path):
    cfg = make_config(sample={"prompts": ["Question: what is 1 plus 2? Answer:", "Hello"], "num_per_prompt": 2,
                              "max_new_tokens": 3})
    assert main(["train", str(cfg)]) == 0
    assert main(["sample", str(cfg)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples" / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Question: what is 1 plus 2? Answer:"] * 2 + ["Hello"] * 2
    assert all(isinstance(r["completion"], str) for r in rows)
    with pytest.raises(FileNotFoundError, match="sample.weights"):
        main(["sample", str(cfg), "sample.weights=/nonexistent"])
