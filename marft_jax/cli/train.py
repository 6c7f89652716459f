"""Trains a team of LoRA agents with MARFT (or a baseline) from an ml_collections config.

  marft-train --config=configs/default.py
  marft-train --config=configs/tiny_cpu.py --config.ppo.clip_eps=0.1
  marft-train --config=configs/default.py --run_dir=runs/x --resume

(or `python experiments/train.py ...`).
Bad input exits with code 2 and one line naming the file or field.

Several processes (GPU nodes, or processes on one machine) form one run with
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or the environment
variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); on a TPU pod slice
or under SLURM pass --distributed and JAX finds the others itself. Size the mesh with
--config.mesh.data / fsdp / tp (-1 = the rest of the devices).
"""

from absl import flags, logging
from ml_collections import config_flags

from marft_jax.training.entry import parse_flags, run_app, run_entry

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py",
                                          "Experiment config file (get_config()).")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory (default: "
                               "<train.output_dir>/<train.run_name or a generated name>).")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --run_dir from its latest "
                            "checkpoint.")
_STOP_AFTER = flags.DEFINE_integer("stop_after", None, "Stop after this many iterations in "
                                   "total (simulates an interrupted run).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process run that JAX "
                                 "detects (TPU pod slices, SLURM, Open MPI, Kubernetes).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 of a "
                                   "multi-process run (default: $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (default: "
                                      "$JAX_NUM_PROCESSES; 1 = a single-process run).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (default: "
                                   "$JAX_PROCESS_ID).")


def _train(argv):
    del argv
    from marft_jax import parallel

    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                    _PROCESS_ID.value, auto_detect=_DISTRIBUTED.value)
    if not parallel.is_main_process():
        logging.set_verbosity(logging.WARNING)  # logs and files come from process 0
    from marft_jax.training.loop import prepare_setup, train
    from marft_jax.training.plots import plot_learning_curve

    def job(exp, run_dir, setup):
        summary = train(exp, run_dir, resume=_RESUME.value, stop_after=_STOP_AFTER.value,
                        setup=setup)
        if not parallel.is_main_process():
            return
        png = plot_learning_curve(run_dir)
        before = (summary.get("eval_before") or {}).get("accuracy")
        after = (summary.get("eval_after") or {}).get("accuracy")
        if before is not None:
            print(f"held-out accuracy before training: {before:.3f}")
        if after is not None:
            print(f"held-out accuracy after training:  {after:.3f}")
        print(f"run directory: {run_dir}  (learning curve: {png})")

    return run_entry(_CONFIG.value, _RUN_DIR.value, _RESUME.value, job, build=prepare_setup)


def main() -> None:
    """`marft-train`: parses the command line and trains."""
    logging.set_verbosity(logging.INFO)
    run_app(_train, __name__, __doc__, flags_parser=parse_flags)
