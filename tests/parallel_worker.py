"""Runs tiny training runs on forced host devices for `test_parallel.py` (a subprocess).

    python tests/parallel_worker.py --devices=4 --out=DIR \
        --run=one:1,1,1,auto,1 --run=data4:4,1,1,auto,1 ...
    # one of two processes over loopback:
    python tests/parallel_worker.py --devices=2 --out=DIR --run=mp:4,1,1,auto,2 \
        --coordinator=localhost:PORT --num_processes=2 --process_id=0

Each `--run=NAME:DATA,FSDP,TP,MODE,ITERATIONS[:SECTION.FIELD=VALUE|...]` trains
`configs/tiny_cpu.py` (no eval, fields overridden with Python literals) in
`DIR/NAME`, then restores its last checkpoint into the same mesh and, on process 0,
writes `DIR/NAME.npz` (every leaf of the restored train and game state, gathered) and
`DIR/NAME.json` (the metrics records and the shardings the state had).
"""

import argparse
import ast
import json
import os
import sys


def _parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--run", action="append", required=True)
    parser.add_argument("--coordinator")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    return parser.parse_args()


ARGS = _parse()
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")  # keeps conftest's flags
                           + f" --xla_force_host_platform_device_count={ARGS.devices}")
os.environ["JAX_PLATFORMS"] = "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from marft_jax import parallel  # noqa: E402

parallel.initialize_distributed(ARGS.coordinator, ARGS.num_processes, ARGS.process_id)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs.tiny_cpu import get_config  # noqa: E402
from marft_jax.training.checkpoint import RunCheckpointer, base_fingerprint  # noqa: E402
from marft_jax.training.config import finalize  # noqa: E402
from marft_jax.training.loop import place_setup, restore_state, train  # noqa: E402
from marft_jax.training.run_dir import read_metrics  # noqa: E402
from marft_jax.training.setup import build_setup  # noqa: E402


def run(name: str, spec: str, overrides: str = "") -> None:
    data, fsdp, tp, mode, iterations = spec.split(",")
    config = get_config()
    config.mesh.update(data=int(data), fsdp=int(fsdp), tp=int(tp), mode=mode)
    for item in filter(None, overrides.split("|")):  # section.field=python literal
        path, value = item.split("=", 1)
        section, field = path.split(".")
        config[section][field] = ast.literal_eval(value)
    config.train.update(iterations=int(iterations), eval_problems=0)
    exp = finalize(config)
    run_dir = os.path.join(ARGS.out, name)
    os.makedirs(run_dir, exist_ok=True)
    train(exp, run_dir)

    plan = parallel.plan_for(exp.mesh)
    setup = build_setup(exp)
    fingerprint = base_fingerprint(setup.model_config.to_dict(), setup.base)
    setup = place_setup(setup, plan)
    checkpointer = RunCheckpointer(run_dir, keep=3, async_save=False)
    state, game, _ = restore_state(setup, checkpointer, int(iterations), plan, fingerprint)
    checkpointer.close()
    leaves = jax.tree_util.tree_flatten_with_path({"train": state, "game": game})[0]
    arrays = {jax.tree_util.keystr(p): plan.fetch(x) for p, x in leaves}
    specs = {jax.tree_util.keystr(p): str(x.sharding.spec) for p, x in leaves}
    if parallel.is_main_process():
        np.savez(os.path.join(ARGS.out, f"{name}.npz"), **arrays)
        info = {"metrics": read_metrics(run_dir), "specs": specs,
                "mesh": dict(plan.mesh.shape), "processes": jax.process_count()}
        with open(os.path.join(ARGS.out, f"{name}.json"), "w") as f:
            json.dump(info, f)


for item in ARGS.run:
    run(*item.split(":"))
