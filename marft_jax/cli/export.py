"""Exports a run's adapters for the Hugging Face ecosystem.

  marft-export --config=configs/default.py --run_dir=runs/x --out=export/
  marft-export ... --merged     # also a merged HF checkpoint per adapter

(or `python experiments/export.py ...`). Writes `<out>/<adapter>/adapter_config.json +
adapter_model.safetensors` (PEFT format, one folder per adapter name, as the reference saves
them), and with --merged `<out>/merged_<adapter>/` (config.json, model.safetensors,
tokenizer files). A heterogeneous team's adapters are each written against their own
base (`base_model_name_or_path`, the merged weights and tokenizer of that base).
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
    from marft_jax.models.peft_export import (save_merged_checkpoint, save_peft_adapter,
                                              save_peft_adapters)
    from marft_jax.training.loop import load_trained_adapters
    from marft_jax.training.setup import build_setup

    def job(exp):
        setup = build_setup(exp)
        lora, step = load_trained_adapters(setup, _RUN_DIR.value, _STEP.value)
        out = Path(_OUT.value or Path(_RUN_DIR.value) / "export")
        names = list(exp.team.adapter_names)
        if setup.hetero is None:
            paths = save_peft_adapters(out, setup.model_config, exp.lora, lora, names,
                                       base_model_name_or_path=setup.base_source)
        else:  # each adapter against its own base
            paths = [save_peft_adapter(out / name, *per_base(setup, lora, i)[:3], i,
                                       base_model_name_or_path=per_base(setup, lora, i)[3])
                     for i, name in enumerate(names)]
        for path in paths:
            print(f"adapter: {path}")
        if _MERGED.value:
            for index, name in enumerate(names):
                config, lora_config, own_lora, _, base, tokenizer = per_base(setup, lora, index)
                path = save_merged_checkpoint(out / f"merged_{name}", config, lora_config,
                                              base, own_lora, index, tokenizer=tokenizer)
                print(f"merged:  {path}")
        logging.info("exported step %d of %s", step, _RUN_DIR.value)

    return run_tool(_CONFIG.value, job)


def per_base(setup, lora, adapter: int):
    """`(model config, LoRA config, LoRA stack, base source, base weights, tokenizer)` of
    the base adapter `adapter` lives on (a heterogeneous team's; else the one base)."""
    exp = setup.exp
    if setup.hetero is None:
        return (setup.model_config, exp.lora, lora, setup.base_source, setup.base,
                setup.tokenizer)
    h = setup.hetero
    b = h.groups.agent_base[exp.team.adapter_index.index(adapter)]
    return (h.model_configs[b], exp.lora, lora[b], h.sources[b], setup.base[b],
            h.tokenizers[b])


def main() -> None:
    """`marft-export`: parses the command line and exports."""
    run_app(_export, __name__, __doc__, flags_parser=parse_flags)
