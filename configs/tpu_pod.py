"""The default MARFT-A job (dual team, SmolLM2-135M, 2-digit addition) on a TPU pod slice.

Data parallel over every chip of the slice (`mesh.data = -1`): adapters, critic and base
replicated, 256 environments split over the chips, gradients all-reduced by XLA. For a
base too large for one chip's memory, shard it with `--config.mesh.fsdp=4` (or `tp`);
`--config.mesh.mode=shard_map` gives the pmap-style update with an explicit all-reduce.
Run the same command on every host of the slice (see BUILD_NOTES.md, "Scale-out"):

  python experiments/train.py --config=configs/tpu_pod.py --distributed \
      --run_dir=/mnt/shared/runs/pod1

The run directory must be visible to all hosts (NFS / Filestore / gcsfuse): every host
writes its shards of the Orbax checkpoints there; metrics and logs come from host 0.
"""

from configs.default import get_config as default_config


def get_config():
    c = default_config()
    c.model.dtype = "bfloat16"
    # 256 envs split over up to 256 chips; 4 minibatches of 64 envs keep shard_map mode
    # possible on up to 64 chips (each micro-batch must split evenly over the chips).
    c.rollout.num_envs = 256
    c.ppo.num_minibatches = 4
    c.mesh.update(data=-1, fsdp=1, tp=1, mode="auto")
    c.train.update(iterations=200, eval_every=20, eval_problems=200, checkpoint_every=10,
                   keep_checkpoints=3)
    return c
