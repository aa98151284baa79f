import pytest
import yaml

from mmalign.cli import main
from mmalign.config import ConfigError, apply_overrides, load_config, parse_value


def test_overrides_and_yaml_floats(make_config):
    cfg = load_config(make_config(), ["optim.lr=3e-4", "train.max_steps=7", "adapter.lora.r=2", "objective.loss_type=ipo"])
    assert cfg.optim["lr"] == pytest.approx(3e-4) and isinstance(cfg.optim["lr"], float)
    assert cfg.train.max_steps == 7 and cfg.adapter["lora"].r == 2 and cfg.objective["loss_type"] == "ipo"
    # defaults are filled in, so the saved config is complete
    assert cfg.objective["label_smoothing"] == 0.0 and cfg.adapter["max_length"] == 1024
    assert parse_value("1e-4") == pytest.approx(1e-4) and parse_value("[1, 2]") == [1, 2]


def test_override_creates_nested_sections():
    data = apply_overrides({"adapter": {"lora": None}}, ["adapter.lora.r=4"])
    assert data == {"adapter": {"lora": {"r": 4}}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["adapter.lora"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("trian.max_steps=3", "trian: unknown key; did you mean 'train'?"),
        ("train.max_step=3", "train.max_step: unknown key; did you mean 'max_steps'?"),
        ("adapter.lora.rank=3", "adapter.lora.rank: unknown key"),
        ("adapter.pretraned=x", "adapter.pretraned: unknown key; did you mean 'pretrained'?"),
        ("objective.loss_type=sigmod", "objective.loss_type: 'sigmod' is not a valid choice; did you mean 'sigmoid'?"),
        ("objective.name=dpp", "objective.name: unknown objective 'dpp'; did you mean 'dpo'?"),
        ("recipe=offline_preferenc", "recipe: unknown recipe 'offline_preferenc'; did you mean 'offline_preference'?"),
        ("train.max_steps=ten", "train.max_steps: expected an int, got str 'ten'"),
        ("train.max_steps=2.5", "train.max_steps: expected an int"),
        ("objective.beta=high", "objective.beta: expected a float"),
        ("train.resume=maybe", "train.resume: expected true or false"),
        ("accelerate.mixed_precision=fp8", "accelerate.mixed_precision"),
        ("reward.name=clip_scor", "reward.name: unknown reward 'clip_scor'; did you mean 'clip_score'?"),
        ("eval.num_prompt=3", "eval.num_prompt: unknown key; did you mean 'num_prompts'?"),
        ("accelerate.threads=0", "accelerate.threads: must be >= 1"),
    ],
)
def test_bad_configs_name_the_key_and_the_nearest_valid_one(make_config, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(make_config(), [override])
    assert message in str(err.value)


def test_accelerate_threads_sets_torchs_cpu_threads(make_config):
    import torch

    from mmalign.cli import _load

    class Args:
        config, overrides = str(make_config()), ["accelerate.threads=1"]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _load(Args).accelerate.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_missing_required_section_and_argument(make_config, tmp_path):
    path = make_config()
    data = yaml.safe_load(path.read_text())
    del data["objective"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="objective: the 'offline_preference' recipe needs this section"):
        load_config(path)
    data = yaml.safe_load(make_config().read_text())
    del data["data"]["path"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"data.path: required by data 'preference_pairs' but missing"):
        load_config(path)


def test_cli_validate_list_and_errors(make_config, capsys):
    assert main(["validate", str(make_config())]) == 0
    assert "36 train / 12 eval records, all valid" in capsys.readouterr().out
    assert main(["validate", str(make_config()), "optim.name=adam"]) == 2
    assert "did you mean 'adamw'?" in capsys.readouterr().err
    assert main(["validate", str(make_config()), "objective.beta=0"]) == 2
    assert "beta must be positive" in capsys.readouterr().err
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("causal_lm", "dpo", "preference_pairs", "adamw", "offline_preference"):
        assert name in out
    assert main(["list", "recipe"]) == 0
    assert "offline_preference" in capsys.readouterr().out


def test_cli_validate_reports_bad_data(make_config, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "", "rejected": "b"}\n')
    assert main(["validate", str(make_config()), f"data.path={bad}"]) == 2
    assert "bad.jsonl:2: field 'chosen': empty text" in capsys.readouterr().err
