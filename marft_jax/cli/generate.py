"""Chat with a model (and optionally trained adapters) through its chat template.

  marft-generate                                   # SmolLM2, a few prompts
  marft-generate --prompt="What is 23 + 45?" --temperature=0
  marft-generate --model=/path/to/hf_dir --max_new_tokens=128

(or `python experiments/generate.py ...`). A smoke test of the whole generation stack: registry, GGUF/HF import, tokenizer, sampler.
"""

import time

from absl import flags

from marft_jax.training.entry import one_line_errors, run_app

_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "Registered name, HF "
                             "directory or GGUF file.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "User message(s); default: a few examples.")
_SYSTEM = flags.DEFINE_string("system", None, "Optional system message.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per answer.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 50, "Top-k (0 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")

EXAMPLES = ["What is the capital of France?",
            "Tom has 23 apples and buys 45 more. How many apples does he have now? "
            "Put the final answer in \\boxed{}."]


def _generate(argv):
    del argv
    import jax

    from marft_jax.models.layers import BASE_ADAPTER
    from marft_jax.models.weights import load_model
    from marft_jax.sampling import Sampler, SamplerConfig
    from marft_jax.tokenizer import Tokenizer

    with one_line_errors():
        t0 = time.perf_counter()
        model = load_model(_MODEL.value)
        tokenizer = Tokenizer.from_model_source(model.source)
    print(f"loaded {model.source.path} in {time.perf_counter() - t0:.1f}s")
    prompts = _PROMPT.value or EXAMPLES
    system = [{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else []
    ids = [tokenizer.apply_chat_template(system + [{"role": "user", "content": p}])
           for p in prompts]
    sampler = Sampler(model.graphdef, SamplerConfig(
        max_new_tokens=_MAX_NEW.value, top_k=_TOP_K.value,
        stop_token_ids=tokenizer.stop_token_ids, pad_token_id=tokenizer.pad_token_id),
        default_temperature=_TEMPERATURE.value)
    t0 = time.perf_counter()
    gen = sampler(model.base, model.lora, ids, adapter_ids=BASE_ADAPTER,
                  key=jax.random.key(_SEED.value))
    seconds = time.perf_counter() - t0
    for prompt, tokens, mask in zip(prompts, gen.tokens, gen.mask):
        print(f"\n>>> {prompt}\n{tokenizer.decode(tokens[mask])}")
    print(f"\n{int(gen.mask.sum())} tokens in {seconds:.1f}s (compilation included)")


def main() -> None:
    """`marft-generate`: parses the command line and answers the prompts."""
    run_app(_generate, __name__, __doc__)
