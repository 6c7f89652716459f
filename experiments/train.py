"""Trains a team of LoRA agents with MARFT (or a baseline) from an ml_collections config.

  python experiments/train.py --config=configs/default.py
  python experiments/train.py --config=configs/tiny_cpu.py --config.ppo.clip_eps=0.1
  python experiments/train.py --config=configs/default.py --run_dir=runs/x --resume

Bad input exits with code 2 and one line naming the file or field.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from marft_jax.training.entry import run_entry  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py",
                                          "Experiment config file (get_config()).")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory (default: "
                               "<train.output_dir>/<train.run_name or a generated name>).")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --run_dir from its latest "
                            "checkpoint.")
_STOP_AFTER = flags.DEFINE_integer("stop_after", None, "Stop after this many iterations in "
                                   "total (simulates an interrupted run).")


def main(argv):
    del argv
    from marft_jax.training.loop import train
    from marft_jax.training.plots import plot_learning_curve

    def job(exp, run_dir):
        summary = train(exp, run_dir, resume=_RESUME.value, stop_after=_STOP_AFTER.value)
        png = plot_learning_curve(run_dir)
        before = (summary.get("eval_before") or {}).get("accuracy")
        after = (summary.get("eval_after") or {}).get("accuracy")
        if before is not None:
            print(f"held-out accuracy before training: {before:.3f}")
        if after is not None:
            print(f"held-out accuracy after training:  {after:.3f}")
        print(f"run directory: {run_dir}  (learning curve: {png})")

    return run_entry(_CONFIG.value, _RUN_DIR.value, _RESUME.value, job)


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(main)
