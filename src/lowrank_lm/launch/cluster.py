"""A sweep's runs as scheduler jobs: the resources of the ``cluster:`` section and the line each job runs.

In the sweep file (every key optional; the command line overrides any of them with
``--cluster KEY=VALUE``, e.g. ``--cluster partition=debug --cluster sizes.xl.nodes=4``)::

    cluster:
      nodes: 1                  # nodes per run; more than one: torchrun's c10d rendezvous across them
      gpus_per_node: 8          # torchrun starts one process per GPU inside the job (0 or 1: no torchrun)
      cpus_per_task: 32         # one task per node: the job process and torchrun's processes share them
      mem_gb: 480
      time: "2-00:00:00"        # the job's time limit: minutes, HH:MM:SS or D-HH:MM:SS; required on Slurm
      partition: gpu
      account: my-project
      qos: normal
      sbatch: {constraint: h100, exclusive: true}   # any other sbatch flag, as --KEY=VALUE
      setup: ["module load cuda/12.4"]             # shell lines before the job starts (in the job script)
      signal_delay_s: 120       # the scheduler's warning before the time limit; the checkpoint is written in it
      max_timeouts: 10          # time-limit requeues allowed per run (a run longer than the limit needs some)
      retries: 2                # a run that fails is requeued this often; a user error (exit 2) never
      max_parallel: 1           # submitit's local executor (no Slurm): jobs at a time
      sizes:                    # per-size changes of the keys above
        xl: {nodes: 4, time: "3-00:00:00"}

The job script exports the line the job runs (``LOWRANK_LM_LAUNCH``): ``python -m lowrank_lm train
RUN/config.yaml`` on one GPU or CPU, ``torchrun --standalone --nproc-per-node=G ...`` on one node,
``torchrun --nnodes=N ... --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"`` on several; the scheduler's
variables in it are expanded where the job runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lowrank_lm.config import parse_value, set_dotted
from lowrank_lm.errors import UserError

LAUNCH_ENV = "LOWRANK_LM_LAUNCH"
"""The variable the job script exports with the command line the job runs (lowrank_lm.launch.jobs)."""
RESOURCE_KEYS = ("nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "time", "partition", "account", "qos",
                 "sbatch", "setup", "signal_delay_s", "max_timeouts", "retries", "max_parallel")
CLUSTER_KEYS = (*RESOURCE_KEYS, "sizes")
SLURM_ONLY = ("partition", "account", "qos", "sbatch")
LOCAL_ONLY = ("max_parallel",)
MASTER_PORT = 29500
# On the local executor an unset time limit means none (submitit's own default is 2 minutes).
LOCAL_NO_LIMIT_MIN = 365 * 24 * 60


@dataclass
class Resources:
    """What one run's job asks the scheduler for, and how it is requeued."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    signal_delay_s: int = 120
    max_timeouts: int = 10
    retries: int = 2
    max_parallel: int | None = None
    launcher: str | None = None
    """Not a key of the section: ``sweep --launcher CMD`` on the local executor, the command that starts the
    trainer (followed by ``train RUN/config.yaml``) instead of this python or torchrun."""

    @property
    def processes(self) -> int:
        """Training processes of one run (torchrun's world size)."""
        return self.nodes * max(1, self.gpus_per_node)


@dataclass
class ClusterSpec:
    """The ``cluster:`` section: resources for every run, changed per size."""

    base: Resources
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)
    """Keys set anywhere (for the checks of what applies to which scheduler)."""

    def for_size(self, size: str) -> Resources:
        """The resources of a run of ``size``."""
        return dataclasses.replace(self.base, **self.sizes.get(size, {}))

    def check_scheduler(self, scheduler: str) -> None:
        """Refuse settings that do not apply to ``scheduler`` ("slurm" or "local")."""
        if scheduler == "local":
            bad = [k for k in SLURM_ONLY if k in self.given]
            if bad:
                raise UserError(f"cluster.{bad[0]} applies to Slurm, and there is no Slurm here (no srun on PATH); "
                                "remove it to run the jobs with submitit's local executor, or submit where Slurm is")
            if any(self.for_size(s).nodes > 1 for s in ["", *self.sizes]):
                raise UserError("cluster.nodes above 1 needs Slurm, and there is no Slurm here (no srun on PATH); "
                                "set nodes: 1 or submit where Slurm is")
        elif scheduler == "slurm":
            bad = [k for k in LOCAL_ONLY if k in self.given]
            if bad:
                raise UserError(f"cluster.{bad[0]} applies to submitit's local executor; on Slurm the queue decides "
                                "how many jobs run (limit it with a QOS or sbatch flags); remove it")
            for s in ["", *self.sizes]:
                if self.for_size(s).time_min is None:
                    raise UserError("cluster.time is not set: give the time limit Slurm should give each job, e.g. "
                                    "time: \"24:00:00\" in the sweep's cluster section or --cluster time=24:00:00")

# --------------------------------------------------------------------------- parsing


def _err(where: str, msg: str) -> UserError:
    return UserError(f"{where}: {msg}")


def parse_time(value: Any, where: str) -> int:
    """A time limit in whole minutes, written as Slurm takes it: minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]."""
    bad = _err(where, f"{value!r} is not a time; write minutes (90), HH:MM:SS (\"12:00:00\") or D-HH:MM:SS")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, (int, float)):
        if value <= 0 or not math.isfinite(value):
            raise _err(where, f"{value!r} is not a positive number of minutes")
        return math.ceil(value)
    text = str(value).strip()
    m = re.fullmatch(r"(\d+)-(\d+)(?::(\d+))?(?::(\d+))?", text)
    if m:
        days, hours, minutes, seconds = (int(x) if x else 0 for x in m.groups())
    elif re.fullmatch(r"\d+(:\d+){0,2}", text):
        parts = [int(x) for x in text.split(":")]
        days = hours = seconds = 0
        if len(parts) == 3:
            hours, minutes, seconds = parts
        elif len(parts) == 2:  # Slurm reads A:B as minutes:seconds
            minutes, seconds = parts
        else:
            minutes = parts[0]
    else:
        raise bad
    total = (days * 24 + hours) * 60 + minutes + math.ceil(seconds / 60)
    if total <= 0:
        raise _err(where, "the time limit must be above zero")
    return total


def _int(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _err(where, f"{value!r} is not a whole number >= {low}")
    return value


def _resource_changes(raw: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """Validated Resources fields from a mapping of cluster keys."""
    if not isinstance(raw, dict):
        raise _err(where, "must be a mapping of keys such as nodes, gpus_per_node, time, partition")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{where}.{k}"
        if k not in allowed:
            hint = difflib.get_close_matches(str(k), allowed, n=1)
            raise _err(where, f"unknown key {k}" + (f"; did you mean {hint[0]}?" if hint else
                                                     f" (allowed: {', '.join(allowed)})"))
        if v is None:
            continue
        if k in ("nodes", "max_parallel"):
            out[k] = _int(v, key, 1)
        elif k in ("gpus_per_node", "retries", "max_timeouts"):
            out[k] = _int(v, key, 0)
        elif k in ("cpus_per_task", "signal_delay_s"):
            out[k] = _int(v, key, 1)
        elif k == "mem_gb":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise _err(key, f"{v!r} is not a positive number of GiB")
            out[k] = v
        elif k == "time":
            out["time_min"] = parse_time(v, key)
        elif k in ("partition", "account", "qos"):
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise _err(key, f"{v!r} is not a name")
            out[k] = str(v)
        elif k == "sbatch":
            if not isinstance(v, dict) or not all(isinstance(x, str) for x in v):
                raise _err(key, "must map sbatch flag names to values, e.g. {constraint: h100, exclusive: true}")
            out[k] = dict(v)
        elif k == "setup":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise _err(key, "must be a list of shell lines, e.g. [\"module load cuda\"]")
            out[k] = list(v)
    return out


def _apply_override(raw: dict[str, Any], text: str) -> None:
    """Apply one ``--cluster KEY=VALUE`` (dotted keys reach into sbatch and sizes; VALUE is YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"--cluster {text!r}: write KEY=VALUE, e.g. --cluster partition=gpu or "
                        "--cluster sizes.xl.nodes=4")
    set_dotted(raw, key, parse_value(value), f"--cluster {text!r}")


def parse_cluster(raw: Any, overrides: list[str], sizes: list[str], where: str = "cluster") -> ClusterSpec:
    """The ``cluster:`` section (or None) with the command line's ``--cluster KEY=VALUE`` applied."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _err(where, "must be a mapping (see docs/cluster.md)")
    raw = yaml.safe_load(yaml.safe_dump(raw))  # a deep copy: overrides never touch the plan's section
    for text in overrides:
        _apply_override(raw, text)
    given = {k for k in raw if k != "sizes"}
    base = Resources(**_resource_changes({k: v for k, v in raw.items() if k != "sizes"}, where, CLUSTER_KEYS))
    per_size: dict[str, dict[str, Any]] = {}
    raw_sizes = raw.get("sizes") or {}
    if not isinstance(raw_sizes, dict):
        raise _err(f"{where}.sizes", "must map size names to resource changes, e.g. {xl: {nodes: 4}}")
    for name, changes in raw_sizes.items():
        if str(name) not in sizes:
            raise _err(f"{where}.sizes", f"{name} is not a size of this sweep (sizes: {', '.join(sizes)})")
        per_size[str(name)] = _resource_changes(changes or {}, f"{where}.sizes.{name}",
                                                tuple(k for k in RESOURCE_KEYS if k != "max_parallel"))
        given |= set(changes or {})
    return ClusterSpec(base, per_size, given)


# --------------------------------------------------------------------------- the job's command line


def torchrun_command(python: str | None = None) -> list[str]:
    """torchrun beside this interpreter (a virtual environment's), else ``python -m torch.distributed.run``."""
    exe = Path(python or sys.executable)
    script = exe.with_name("torchrun")
    return [str(script)] if script.is_file() else [str(exe), "-m", "torch.distributed.run"]


def launch_line(config_path: str | Path, res: Resources, python: str | None = None) -> str:
    """The shell line a run's job runs: the trainer alone, or torchrun with one process per GPU (or the
    resources' own ``launcher`` followed by ``train CONFIG``)."""
    if res.launcher:
        return shlex.join([*shlex.split(res.launcher), "train", str(config_path)])
    py = python or sys.executable
    train = ["-m", "lowrank_lm", "train", str(config_path)]
    if res.nodes == 1 and res.gpus_per_node <= 1:
        return shlex.join([py, *train])
    torchrun = torchrun_command(py)
    if res.nodes == 1:
        return shlex.join([*torchrun, "--standalone", "--nnodes=1", f"--nproc-per-node={res.gpus_per_node}", *train])
    # several nodes: one torchrun agent per node (one task per node), meeting at the first node
    head = shlex.join([*torchrun, f"--nnodes={res.nodes}", f"--nproc-per-node={res.gpus_per_node}",
                       "--rdzv-backend=c10d"])
    return f'{head} --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" {shlex.join(train)}'


def setup_lines(res: Resources, launch: str) -> list[str]:
    """The job script's setup: the user's lines, the rendezvous address, and the launch line itself."""
    lines = list(res.setup)
    if res.nodes > 1:
        lines += ['export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                  f"export MASTER_PORT={MASTER_PORT}"]
    if res.processes > 1:
        # torchrun waits this long for its processes to write the checkpoint after SIGTERM (default 30 s)
        lines.append(f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={max(10, res.signal_delay_s - 15)}")
    lines.append(f"export {LAUNCH_ENV}={shlex.quote(launch)}")
    return lines


def executor_parameters(res: Resources, name: str, launch: str, scheduler: str,
                        devices: str | None = None) -> dict[str, Any]:
    """Parameters for ``submitit.AutoExecutor.update_parameters`` of one run's job.

    ``devices``: on the local executor, the GPUs of this job (CUDA_VISIBLE_DEVICES). submitit's local executor
    gives every job GPUs 0..gpus_per_node-1 (its ``visible_gpus`` is not among AutoExecutor's parameters), so
    the job script's setup sets them, before the user's own setup lines.
    """
    params: dict[str, Any] = {
        "name": name,
        "nodes": res.nodes,
        "tasks_per_node": 1,  # one job process per node; torchrun starts the GPU processes
        "gpus_per_node": res.gpus_per_node,
        "timeout_min": res.time_min or LOCAL_NO_LIMIT_MIN,
        "stderr_to_stdout": True,
    }
    if res.cpus_per_task is not None:
        params["cpus_per_task"] = res.cpus_per_task
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    setup = setup_lines(res, launch)
    if scheduler == "slurm":
        params.update(slurm_setup=setup, slurm_signal_delay_s=res.signal_delay_s)
        for k in ("partition", "account", "qos"):
            if getattr(res, k) is not None:
                params[f"slurm_{k}"] = getattr(res, k)
        if res.sbatch:
            params["slurm_additional_parameters"] = dict(res.sbatch)
    else:
        params["local_setup"] = ([f"export CUDA_VISIBLE_DEVICES={devices}"] if devices is not None else []) + setup
    return params
