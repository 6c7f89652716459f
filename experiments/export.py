"""Exports a run's adapters for the Hugging Face ecosystem.

  python experiments/export.py --config=configs/default.py --run_dir=runs/x --out=export/
  python experiments/export.py ... --merged     # also a merged HF checkpoint per adapter

Writes `<out>/<adapter>/adapter_config.json + adapter_model.safetensors` (PEFT format, one
folder per adapter name, as the reference saves them), and with --merged
`<out>/merged_<adapter>/` (config.json, model.safetensors, tokenizer files).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from marft_jax.training.entry import parse_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run whose checkpoint to export.",
                               required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: <run_dir>/export).")
_MERGED = flags.DEFINE_bool("merged", False, "Also write merged HF checkpoints.")


def main(argv):
    del argv
    from marft_jax.errors import ConfigError
    from marft_jax.models.peft_export import save_merged_checkpoint, save_peft_adapters
    from marft_jax.training.config import finalize
    from marft_jax.training.entry import quiet_library_logs
    from marft_jax.training.loop import load_trained_state
    from marft_jax.training.setup import build_setup

    quiet_library_logs()
    try:
        exp = finalize(_CONFIG.value)
        setup = build_setup(exp)
        state, step = load_trained_state(setup, _RUN_DIR.value, _STEP.value)
        out = Path(_OUT.value or Path(_RUN_DIR.value) / "export")
        names = list(exp.team.adapter_names)
        paths = save_peft_adapters(out, setup.model_config, exp.lora, state.lora, names,
                                   base_model_name_or_path=setup.base_source)
        for path in paths:
            print(f"adapter: {path}")
        if _MERGED.value:
            for index, name in enumerate(names):
                path = save_merged_checkpoint(out / f"merged_{name}", setup.model_config,
                                              exp.lora, setup.base, state.lora, index,
                                              tokenizer=setup.tokenizer)
                print(f"merged:  {path}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    logging.info("exported step %d of %s", step, _RUN_DIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
