"""Heterogeneous teams: agents on different base models (profile field `model`).

Two tiny random bases of different families and vocabularies, written in-process as
Hugging Face directories: a Llama with the byte-level tokenizer (259 ids, ChatML) and a
Qwen2 (q/k/v biases, tied embeddings) with a small trained byte-level BPE (other ids,
merged tokens, its own chat template).
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from marft_jax.errors import ConfigError
from tests.conftest import jax_subprocess_env, tiny_config

ROOT = Path(__file__).resolve().parents[1]
QWEN_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
CORPUS = ["What is 12 + 34? The answer is \\boxed{46}.", "solver: 7 + 8 = 15",
          "Compute the sum of 21 and 40, step by step.", "reasoner: first add the tens"] * 20


def _bpe_tokenizer():
    """A byte-level BPE of ~320 ids trained on a few lines (ids unlike the byte tokenizer's)."""
    from tokenizers import Tokenizer as Backend, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|end|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|end|>",
                                   pad_token="<|pad|>", chat_template=QWEN_TEMPLATE,
                                   clean_up_tokenization_spaces=False)


def write_tiny_base(directory: Path, family: str) -> Path:
    """A tiny random `family` ("llama" / "qwen2") model with its tokenizer, as an HF dir."""
    from marft_jax.models.functional import init_model
    from marft_jax.models.hf_export import save_hf_checkpoint
    from marft_jax.tokenizer import build_byte_level_tokenizer

    tokenizer = build_byte_level_tokenizer() if family == "llama" else _bpe_tokenizer()
    vocab = 259 if family == "llama" else 320
    config = tiny_config(family, vocab_size=vocab, hidden_size=32 if family == "llama" else 48,
                         intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                         head_dim=8, max_position_embeddings=2048, initializer_range=0.3)
    _, base, _ = init_model(config, None, seed=3 if family == "llama" else 4)
    save_hf_checkpoint(directory, config, base)
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return write_tiny_base(root / "llama", "llama"), write_tiny_base(root / "qwen2", "qwen2")


def write_team(path: Path, qwen: Path, **extra) -> Path:
    profiles = [
        {"role": "reasoner", "prompt": "Think about the problem.", "with_answer": False},
        {"role": "actor", "prompt": "Give the answer in \\boxed{}.", "with_answer": True,
         "model": str(qwen), **extra},
    ]
    path.write_text(json.dumps(profiles))
    return path


def hetero_config(llama: Path, team: Path):
    from marft_jax.training.config import base_config

    c = base_config()
    c.model.name = str(llama)
    c.team.profiles = str(team)
    c.task.update(kind="arithmetic", train_problems=8, heldout_problems=2)
    c.rollout.update(num_envs=2, num_rounds=2, horizon=2)
    c.sampling.update(max_new_tokens=6, temperature=1.0)
    c.ppo.update(num_minibatches=1, critic_trunk="base", critic_hidden=(16,), kl_coef=0.01)
    c.lora.rank = 2
    c.train.update(iterations=2, eval_problems=2, eval_batch=2, checkpoint_every=1,
                   eval_before=False, eval_sampled=False)
    return c


def test_profile_model_field_groups_agents_by_base(bases, tmp_path):
    from marft_jax.flexmg.profiles import load_team

    llama, qwen = bases
    team = load_team(write_team(tmp_path / "team.json", qwen))
    assert team.model_per_agent("x") == ("x", str(qwen))
    assert team.base_models("x") == ("x", str(qwen)) and team.base_index("x") == (0, 1)
    assert team.base_models(str(qwen)) == (str(qwen),)  # naming the run's model: one base


def test_two_bases_of_different_families_and_vocabularies_train(bases, tmp_path):
    """A training iteration end to end: rollout (one sampler call per base, text crossing
    between bases), reward, update of each adapter on its own base, the critic on one."""
    from marft_jax.training.config import finalize
    from marft_jax.training.iteration import make_iteration
    from marft_jax.training.loop import initial_state
    from marft_jax.training.setup import build_setup

    llama, qwen = bases
    exp = finalize(hetero_config(llama, write_team(tmp_path / "team.json", qwen)))
    setup = build_setup(exp)
    h = setup.hetero
    assert h.groups.agent_base == (0, 1) and len(setup.base) == 2
    assert [c.model_type for c in h.model_configs] == ["llama", "qwen2"]
    assert h.tokenizers[0].encode("12 + 34") != h.tokenizers[1].encode("12 + 34")
    state, games = initial_state(setup)
    assert len(games) == 2
    iteration = make_iteration(setup)
    out = iteration(setup.base, state, games, jax.random.key(0), 0)
    traj = out.traj
    # Each agent's observation is in its base's tokens: the first agent's begins with the
    # Llama base's rendering of its system prompt, the second's with the Qwen2 base's.
    for agent, tok in ((0, h.tokenizers[0]), (1, h.tokenizers[1])):
        row = np.asarray(traj.obs_tokens[0, agent, 0])[np.asarray(traj.obs_mask[0, agent, 0])]
        assert tok.decode(row, skip_special_tokens=False).startswith(
            tok.chat_prompt_text([{"role": "system", "content": exp.team.profiles[agent].prompt},
                                  {"role": "user", "content": "x"}])[:20])
    # The critic reads every decision in the critic base's (Llama's) tokens.
    crit = np.asarray(traj.critic_obs_tokens[0, 1, 0])[np.asarray(traj.critic_obs_mask[0, 1, 0])]
    assert "Give the answer" in h.tokenizers[0].decode(crit)
    # What the actor saw of the reasoner: the reasoner's text, re-encoded in Qwen2 tokens.
    said = h.tokenizers[0].decode(np.asarray(traj.action_tokens[0, 0, 0])[
        np.asarray(traj.action_mask[0, 0, 0])])
    seen = h.tokenizers[1].decode(np.asarray(traj.obs_tokens[0, 1, 0])[
        np.asarray(traj.obs_mask[0, 1, 0])])
    assert said in seen
    metrics = jax.tree.map(np.asarray, out.record["update"])
    assert all(np.all(np.isfinite(v)) for v in metrics.values())
    assert np.all(metrics["policy_steps"] > 0)  # both adapters stepped
    # Each base's stack changed only in its own agent's adapter slot.
    for b, own in ((0, 0), (1, 1)):
        before = jax.tree.leaves(setup.lora[b])
        after = jax.tree.leaves(out.state.lora[b])
        other = 1 - own
        assert any(not np.array_equal(x[own], y[own]) for x, y in zip(before, after))
        assert all(np.array_equal(x[other], y[other]) for x, y in zip(before, after))


@pytest.mark.parametrize("model, expected", [
    ("no-such-model", "no such file or directory"),
    ("{tmp}/broken.gguf", "unsupported GGUF version"),
    ("{tmp}/empty_dir", "has no config.json"),
])
def test_bad_profile_model_is_one_line_naming_profile_and_field(bases, tmp_path, model,
                                                                expected):
    from marft_jax.training.config import finalize
    from marft_jax.training.setup import build_setup

    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 12)
    (tmp_path / "empty_dir").mkdir()
    llama, _ = bases
    team = tmp_path / "team.json"
    write_team(team, "unused")
    profiles = json.loads(team.read_text())
    profiles[1]["model"] = model.format(tmp=tmp_path)
    team.write_text(json.dumps(profiles))
    exp = finalize(hetero_config(llama, team))
    with pytest.raises(ConfigError) as info:
        build_setup(exp)
    message = str(info.value)
    assert "\n" not in message and expected in message
    assert f"{team}: profile 1 (role 'actor'): field 'model'" in message


def test_heterogeneous_team_refuses_what_it_cannot_do(bases, tmp_path):
    from marft_jax.training.config import finalize

    llama, qwen = bases
    team = write_team(tmp_path / "team.json", qwen)
    c = hetero_config(llama, team)
    c.ppo.critic_trunk = "shared"
    with pytest.raises(ConfigError, match="ppo.critic_trunk"):
        finalize(c)
    for field, value in (("ppo", "row_trim"), ("ppo", "shared_prefix"),
                         ("rollout", "shared_prefix")):
        c = hetero_config(llama, team)
        setattr(getattr(c, field), value, True)
        with pytest.raises(ConfigError, match=f"{field}.{value}"):
            finalize(c)
    c = hetero_config(llama, team)
    c.team.critic_base = "other"
    with pytest.raises(ConfigError, match="team.critic_base"):
        finalize(c)
    profiles = json.loads(team.read_text())
    profiles[1]["adapter"] = "reasoner"  # one adapter on two bases
    team.write_text(json.dumps(profiles))
    with pytest.raises(ConfigError, match="an adapter lives on one base model"):
        finalize(hetero_config(llama, team))


def test_unknown_model_in_a_profile_exits_2_with_one_line(bases, tmp_path):
    llama, _ = bases
    team = write_team(tmp_path / "team.json", "no-such-model")
    cmd = [sys.executable, str(ROOT / "experiments" / "train.py"),
           "--config=configs/tiny_cpu.py", f"--config.model.name={llama}",
           f"--config.team.profiles={team}", "--config.task.kind=arithmetic",
           "--config.ppo.critic_trunk=base", "--config.rollout.obs_tokens=0",
           f"--run_dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env=jax_subprocess_env())
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "profile 1 (role 'actor'): field 'model'" in lines[0], lines
    assert not (tmp_path / "run").exists()


def _overrides(llama: Path, team: Path) -> dict:
    """The checkpoint test's settings on top of configs/tiny_cpu.py (also as CLI flags)."""
    return {"model.name": str(llama), "team.profiles": str(team), "task.kind": "arithmetic",
            "task.train_problems": 8, "task.heldout_problems": 2, "rollout.num_envs": 2,
            "rollout.num_rounds": 1, "rollout.horizon": 2, "rollout.obs_tokens": 0,
            "sampling.max_new_tokens": 5, "ppo.num_minibatches": 1, "ppo.epochs": 1,
            "ppo.critic_trunk": "base", "train.iterations": 2, "train.eval_problems": 2,
            "train.eval_batch": 2, "train.eval_before": False}


def test_checkpoint_resume_evaluate_and_export_per_base(bases, tmp_path):
    """Resuming after iteration 1 of 2 gives the uninterrupted run's metrics; the
    evaluation decodes each agent with its own tokenizer; export writes each adapter as a
    PEFT folder against its own base, equal to the checkpoint's slot on that base."""
    from configs.tiny_cpu import get_config
    from marft_jax.models.peft_export import load_peft_adapter
    from marft_jax.training.checkpoint import RunCheckpointer
    from marft_jax.training.config import finalize
    from marft_jax.training.loop import restore_state, train
    from marft_jax.training.run_dir import prepare_run_dir, read_metrics
    from marft_jax.training.setup import build_setup

    llama, qwen = bases
    overrides = _overrides(llama, write_team(tmp_path / "team.json", qwen))
    config = get_config()
    config.update_from_flattened_dict(overrides)
    exp = finalize(config)
    setup = build_setup(exp)
    runs = {}
    for name, stops in (("full", [None]), ("resumed", [1, None])):
        run = runs[name] = tmp_path / name
        for k, stop in enumerate(stops):
            prepare_run_dir(exp.config, run, resume=k > 0)
            train(exp, run, resume=k > 0, stop_after=stop, setup=setup)
    strip = lambda rs: [{k: v for k, v in r.items() if "time" not in k} for r in rs]
    assert strip(read_metrics(runs["full"])) == strip(read_metrics(runs["resumed"]))
    rows = [json.loads(line) for line in
            (runs["full"] / "responses_after.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("reasoner" in r and "actor" in r for r in rows)

    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    out = tmp_path / "export"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "export.py"),
                           "--config=configs/tiny_cpu.py", *flags,
                           f"--run_dir={runs['full']}", f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True, env=jax_subprocess_env(),
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    state, _, _ = restore_state(setup, RunCheckpointer(runs["full"], keep=3,
                                                       async_save=False), 2)
    h = setup.hetero
    for index, name in enumerate(exp.team.adapter_names):
        b = h.groups.agent_base[index]  # adapter i is agent i's here
        peft = json.loads((out / name / "adapter_config.json").read_text())
        assert peft["base_model_name_or_path"] == h.sources[b]
        loaded = load_peft_adapter(out / name, h.model_configs[b], exp.lora, setup.lora[b],
                                   index)
        for x, y in zip(jax.tree.leaves(state.lora[b]), jax.tree.leaves(loaded)):
            np.testing.assert_array_equal(np.asarray(x)[index], np.asarray(y)[index])


@pytest.mark.slow
def test_smollm2_next_to_a_tiny_model(bases, tmp_path):
    """SmolLM2-135M-Instruct (GGUF, 49,152 ids) as the reasoner and the tiny Qwen2 (BPE of
    320 ids) as the actor: one rollout, the actor sees the reasoner's text (the update of a
    two-base team is tested on the tiny bases; SmolLM2's backward would double this test)."""
    from marft_jax.models.registry import resolve_model
    from marft_jax.training.config import finalize
    from marft_jax.training.iteration import make_iteration
    from marft_jax.training.loop import initial_state
    from marft_jax.training.setup import build_setup

    try:
        resolve_model("smollm2-135m-instruct")
    except ConfigError as e:
        pytest.skip(str(e))
    _, qwen = bases
    c = hetero_config(Path("smollm2-135m-instruct"), write_team(tmp_path / "team.json", qwen))
    c.model.name = "smollm2-135m-instruct"
    c.rollout.update(num_rounds=1, horizon=1)
    c.sampling.max_new_tokens = 8
    c.ppo.kl_coef = 0.0
    exp = finalize(c)
    setup = build_setup(exp)
    h = setup.hetero
    assert [cfg.vocab_size for cfg in h.model_configs] == [49152, 320]
    state, games = initial_state(setup)
    _, traj = make_iteration(setup).rollout_phase(setup.base, state, games,
                                                  jax.random.key(0), 0)
    said = h.tokenizers[0].decode(np.asarray(traj.action_tokens[0, 0, 0])[
        np.asarray(traj.action_mask[0, 0, 0])])
    seen = h.tokenizers[1].decode(np.asarray(traj.obs_tokens[0, 1, 0])[
        np.asarray(traj.obs_mask[0, 1, 0])])
    assert said.strip() and said in seen
