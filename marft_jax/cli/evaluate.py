"""Evaluates a team (base + adapters) on a held-out split.

  marft-evaluate --config=configs/default.py                 # untrained team
  marft-evaluate --config=configs/default.py --run_dir=runs/x --step=60
  marft-evaluate --config=configs/default.py --run_dir=runs/x \\
      --config.task.kind=dataset --config.task.dataset=gsm8k --samples=4 --nogreedy

(or `python experiments/evaluate.py ...`). Writes `responses.jsonl` and `metrics.json`
into --out (default <run_dir>/eval_<step>).
"""

import json
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from marft_jax.training.entry import parse_flags, run_app, run_tool

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run whose checkpoint to evaluate (default: "
                               "the untrained adapters).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_GREEDY = flags.DEFINE_bool("greedy", True, "Greedy decoding (else sampled at "
                            "config.sampling.temperature).")
_SAMPLES = flags.DEFINE_integer("samples", 1, "Samples per problem (pass@k), sampled mode.")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate only the first N problems.")
_SPLIT = flags.DEFINE_enum("split", "heldout", ["heldout", "train"], "Which split.")


def _evaluate(argv):
    del argv
    import jax

    from marft_jax.errors import ConfigError
    from marft_jax.training.evaluation import Evaluator
    from marft_jax.training.loop import eval_batch, initial_state, load_trained_adapters
    from marft_jax.training.setup import build_setup

    def job(exp):
        setup = build_setup(exp)
        if _RUN_DIR.value:
            lora, step = load_trained_adapters(setup, _RUN_DIR.value, _STEP.value)
        else:
            lora, step = initial_state(setup)[0].lora, 0
        split = setup.heldout if _SPLIT.value == "heldout" else setup.train
        if split is None:
            raise ConfigError("config field 'task.heldout_problems': the held-out split is "
                              "empty")
        out = Path(_OUT.value or Path(_RUN_DIR.value or "runs") / f"eval_step{step}")
        out.mkdir(parents=True, exist_ok=True)
        evaluator = Evaluator(setup, split, batch=eval_batch(exp),
                              greedy=_GREEDY.value, samples=_SAMPLES.value)
        metrics = evaluator.run(lora, jax.random.key(exp.seed), limit=_LIMIT.value,
                                responses_path=out / "responses.jsonl", progress=True)
        metrics = {"step": step, "split": _SPLIT.value, "greedy": _GREEDY.value, **metrics}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics, indent=2))
        logging.info("wrote %s", out)

    return run_tool(_CONFIG.value, job)


def main() -> None:
    """`marft-evaluate`: parses the command line and evaluates."""
    run_app(_evaluate, __name__, __doc__, flags_parser=parse_flags)
