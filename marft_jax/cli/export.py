"""Exports a run's adapters for the Hugging Face ecosystem.

  marft-export --config=configs/default.py --run_dir=runs/x --out=export/
  marft-export ... --merged     # also a merged HF checkpoint per adapter

(or `python experiments/export.py ...`). Writes `<out>/<adapter>/adapter_config.json +
adapter_model.safetensors` (PEFT format, one folder per adapter name, as the reference saves
them), and with --merged `<out>/merged_<adapter>/` (config.json, model.safetensors,
tokenizer files).
"""

from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from marft_jax.training.entry import parse_flags, run_app, run_tool

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run whose checkpoint to export.",
                               required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: <run_dir>/export).")
_MERGED = flags.DEFINE_bool("merged", False, "Also write merged HF checkpoints.")


def _export(argv):
    del argv
    from marft_jax.models.peft_export import save_merged_checkpoint, save_peft_adapters
    from marft_jax.training.loop import load_trained_adapters
    from marft_jax.training.setup import build_setup

    def job(exp):
        setup = build_setup(exp)
        lora, step = load_trained_adapters(setup, _RUN_DIR.value, _STEP.value)
        out = Path(_OUT.value or Path(_RUN_DIR.value) / "export")
        names = list(exp.team.adapter_names)
        paths = save_peft_adapters(out, setup.model_config, exp.lora, lora, names,
                                   base_model_name_or_path=setup.base_source)
        for path in paths:
            print(f"adapter: {path}")
        if _MERGED.value:
            for index, name in enumerate(names):
                path = save_merged_checkpoint(out / f"merged_{name}", setup.model_config,
                                              exp.lora, setup.base, lora, index,
                                              tokenizer=setup.tokenizer)
                print(f"merged:  {path}")
        logging.info("exported step %d of %s", step, _RUN_DIR.value)

    return run_tool(_CONFIG.value, job)


def main() -> None:
    """`marft-export`: parses the command line and exports."""
    run_app(_export, __name__, __doc__, flags_parser=parse_flags)
