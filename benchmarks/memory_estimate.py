"""The memory budget's estimate against XLA's compiled temporary bytes of the update.

  python benchmarks/memory_estimate.py
  python benchmarks/memory_estimate.py --layers=30 --envs=4,8 --tokens=256 \
      --remat=layers,none --head_chunk=0,128

Compiles `algorithms.update.make_update` on SmolLM2-135M's shapes (d 576, f 1536, 9 heads,
3 KV heads, vocabulary 49152, `--layers` layers; float32; LoRA rank 8 on q and v) for one
round of two agents and every `--envs` × `--tokens` × `--remat` × `--head_chunk` setting,
whole rows (one micro-batch, one epoch, one minibatch, the base critic trunk), and prints
`memory_analysis().temp_size_in_bytes` beside `algorithms.memory.activation_bytes` for the
same shapes. The weights are abstract (`jax.ShapeDtypeStruct`): nothing is allocated but
the small trajectory, so it runs in a few GB whatever the settings. The coefficients in
`algorithms/memory.py` are fitted to this; figures go to BUILD_NOTES.md ("Memory").
"""

from absl import app, flags

_LAYERS = flags.DEFINE_integer("layers", 30, "Decoder layers (SmolLM2: 30).")
_ENVS = flags.DEFINE_list("envs", ["4", "8"], "Envs per micro-batch (two agents each).")
_TOKENS = flags.DEFINE_list("tokens", ["256"], "Row widths T (observation + action).")
_ACTIONS = flags.DEFINE_integer("action_tokens", 64, "Action width K.")
_REMAT = flags.DEFINE_list("remat", ["layers"], "ppo.remat values.")
_HEAD_CHUNK = flags.DEFINE_list("head_chunk", ["0", "128"], "ppo.head_chunk values.")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp

    from marft_jax.algorithms import memory
    from marft_jax.algorithms.config import PPOConfig
    from marft_jax.algorithms.state import create_train_state
    from marft_jax.algorithms.update import make_update
    from marft_jax.flexmg.trajectory import Trajectory
    from marft_jax.models import functional as F
    from marft_jax.models.config import LoraConfig, ModelConfig, RopeConfig

    model = ModelConfig(model_type="llama", vocab_size=49152, hidden_size=576,
                        intermediate_size=1536, num_layers=_LAYERS.value, num_heads=9,
                        num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5,
                        rope=RopeConfig(theta=100000.0), max_position_embeddings=2048,
                        tie_word_embeddings=True, attention_bias=False)
    lora_config = LoraConfig(num_adapters=2)  # the reference's: rank 8 on q and v
    graphdef, base, lora = F.abstract_model(model, lora_config)
    lora = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), lora)
    k = _ACTIONS.value
    print(f"{'remat':>8} {'head_chunk':>10} {'envs':>4} {'T':>4} {'XLA temp':>10} "
          f"{'estimate':>10} {'ratio':>6}")
    for remat in _REMAT.value:
        for chunk in map(int, _HEAD_CHUNK.value):
            for tokens in map(int, _TOKENS.value):
                for envs in map(int, _ENVS.value):
                    o = tokens - k
                    shape = (1, 2, envs)
                    zeros = lambda *s, dtype=jnp.int32: jnp.zeros(shape + s, dtype)
                    traj = Trajectory(
                        obs_tokens=zeros(o), obs_mask=zeros(o, dtype=bool),
                        action_tokens=zeros(k), action_mask=zeros(k, dtype=bool),
                        behaviour_logprobs=zeros(k, dtype=jnp.float32),
                        policy_logprobs=zeros(k, dtype=jnp.float32),
                        rewards=jnp.zeros((1, 2, envs)), dones=jnp.ones((1, envs), bool),
                        scores=jnp.zeros((1, envs)), next_obs_tokens=jnp.zeros((envs, o),
                                                                               jnp.int32),
                        next_obs_mask=jnp.zeros((envs, o), bool),
                        adapter_ids=jnp.arange(2, dtype=jnp.int32))
                    config = PPOConfig(algorithm="marft_a", epochs=1, num_minibatches=1,
                                       remat=remat, head_chunk=chunk, critic_trunk="base")
                    state = create_train_state(config, lora, jax.random.key(0), 576, 2)
                    compiled = make_update(graphdef, config).lower(
                        state, base, traj, jax.random.key(1)).compile()
                    temp = compiled.memory_analysis().temp_size_in_bytes
                    estimate = memory.activation_bytes(model, 2 * envs, tokens, k, remat,
                                                       chunk)
                    print(f"{remat:>8} {chunk:>10} {envs:>4} {tokens:>4} "
                          f"{temp / 2**20:>8.0f}Mi {estimate / 2**20:>8.0f}Mi "
                          f"{estimate / temp:>6.2f}", flush=True)


if __name__ == "__main__":
    app.run(main)
