"""Packed runs (`pack=K`): K runs of one shape trained at once, in one process, each leaving
its own record exactly as a lone run of its configuration would.

    rnnbench data=seq_mnist model=lstm pack=4            # seeds seed, seed+1, seed+2, seed+3
    rnnbench -m seed=1,2,3,4 optim.lr=1e-3,3e-3 pack=4   # the sweep's 8 jobs in 2 packs of 4

What may differ between the members of one pack: `seed` (initialisation and dropout),
`optim.lr` and `trainer.gradient_clip_val`. Everything else is one configuration, and the
members read one stream of batches: their data order (and, for generated data, the data
itself) comes from one `data.seed`, the first member's. A member's record holds that
`data.seed` beside its own `seed`, so the lone run `seed=S data.seed=D` is the same run_key
and computes the same numbers (with dropout, other masks of the same law).

Per member, as a lone run: the seed notes' clipping g <- min(1, θ/‖g‖) g on its own
gradient; its own learning rate and schedule (ReduceLROnPlateau reads its own val/loss); a
member whose loss goes non-finite is frozen and recorded `diverged` while the others train on;
its best epoch (lowest val/loss), whose weights it is tested with; metrics.csv, steps.csv,
result.json (with `packed_with`) and checkpoints/best.ckpt in its own folder. The pack's own
folder holds pack.json and the checkpoint a relaunch resumes the whole pack from.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn
from torchmetrics.aggregation import MeanMetric

from rnnbench import claims
from rnnbench.callbacks import EpochMetricsCSV, StepTrace, Throughput, quiet_lightning
from rnnbench.checkpoints import (
    AtomicCheckpointIO,
    ResumeCheckpoint,
    copy_traces,
    resume_point,
)
from rnnbench.clipping import clip_global_norm_
from rnnbench.config import check_config, compose
from rnnbench.errors import ConfigError, UserError
from rnnbench.lifecycle import build_loggers, finish_wandb, reuse, trainer_plugins
from rnnbench.module import SPLITS, TASKS, RecurrentTask
from rnnbench.packed import PackedSequenceModel
from rnnbench.results.record import (
    BEST_CKPT,
    LAST_CKPT,
    METRICS_FILE,
    PACK_FILE,
    RECORD_FILE,
    STEPS_FILE,
    Record,
    check_run_folder,
    claim_run_folder,
    config_hash,
    environment,
    flatten,
    identity,
    is_identity_key,
    new_record,
    now_iso,
    read_record,
    read_trace,
    write_json_atomic,
    write_record,
)
from rnnbench.runner import conclude_record, measured_timing, record_best, train_and_record
from rnnbench.sweep import sweep_jobs

# The keys whose values may differ between the members of one pack.
MEMBER_KEYS = ("seed", "optim.lr", "trainer.gradient_clip_val")


# ---------------------------------------------------------------------------------------------
# The task module of a pack


class PackedTask:
    """Mixed in before a lone task class (`packed_task`): the lone class's loop, data hooks
    (the language model's carried state), `measure` and `derive`, applied to each member of a
    PackedSequenceModel. Metrics are kept per member (`member_metrics`); the Trainer sees one
    loss, the sum of the live members' losses, whose gradient with respect to member k's
    parameters is the gradient of member k's loss alone."""

    def __init__(
        self,
        model: PackedSequenceModel,
        optimizer,
        scheduler=None,
        unit: str = "",
        lrs: Sequence[float] = (),
        clips: Sequence[float | None] = (),
        member_dirs: Sequence[Path] = (),
    ) -> None:
        super().__init__(model, optimizer, scheduler, unit)
        members = model.members
        self.member_means = nn.ModuleList(
            nn.ModuleDict(
                {
                    f"{split}_{name}": MeanMetric(nan_strategy="disable")
                    for split in SPLITS
                    for name in self.means
                }
            )
            for _ in range(members)
        )
        self.lrs, self.clips = list(lrs), list(clips)
        self.alive = [True] * members
        self.diverged_at: list[int | None] = [None] * members  # the epoch of the first bad loss
        self.member_metrics: list[dict[str, float]] = [{} for _ in range(members)]
        self.validated = False  # whether validation ran in the epoch now ending
        self.epochs = [EpochMetricsCSV(Path(d) / METRICS_FILE) for d in member_dirs]
        self.traces = [
            StepTrace(Path(d) / STEPS_FILE, clip)
            for d, clip in zip(member_dirs, clips, strict=True)
        ]
        self.best: list[dict[str, Any] | None] = [None] * members  # {"row", "weights"}
        self.shadows: list[torch.optim.Optimizer] = []
        self.schedules: list[Any] = []
        self.epoch_lrs = [math.nan] * members
        self.member_losses: Tensor | None = None
        self._rates: list[float] | None = None  # this step's per-member learning rates
        self._before: list[Tensor] | None = None
        self._restored: dict[str, Any] | None = None
        self._limits: Tensor | None = None  # the members' clipping thresholds, as a tensor

    @property
    def members(self) -> int:
        return self.model.members

    # The batches ------------------------------------------------------------------------------

    def step(self, batch, split: str) -> Tensor:
        """Every member's loss of a batch, (K,); each member's means accumulated for `split`
        (for training and validation only while it is alive)."""
        out = self.run_model(batch)
        n = self.kind.items(batch)
        losses = []
        for k in range(self.members):
            values = self.measure(out[k], batch)
            if self.alive[k] or split == "test":
                for name, value in values.items():
                    self.member_means[k][f"{split}_{name}"].update(value.detach(), n)
            losses.append(values["loss"])
        return torch.stack(losses)

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        losses = self.step(batch, "train")
        for k, finite in enumerate(torch.isfinite(losses).tolist()):
            if self.alive[k] and not finite:
                # A finding for that member (it diverged), not the end of the others.
                self.alive[k], self.diverged_at[k] = False, self.current_epoch
        live = [k for k in range(self.members) if self.alive[k]]
        self.member_losses = losses.detach()
        if not live:
            self.diverged, self.trainer.should_stop = True, True
            return None
        self.last_loss = losses.detach()[live].mean()  # what the progress display shows
        return losses[live].sum()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.member_losses is None or self.grad_norm is None:
            return
        for k, trace in enumerate(self.traces):
            if self.alive[k]:
                trace.add(self.global_step, self.member_losses[k], self.grad_norm[k])
            if len(trace.pending) >= trace.flush_every:
                trace.flush()
        self.member_losses = None

    # Clipping and the update ------------------------------------------------------------------

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Per member: ‖g_k‖ over its own gradients, g_k <- min(1, θ_k/‖g_k‖) g_k. Runs after
        the backward and before the optimizer's update, so it also sets up the update's
        per-member learning rates (a member frozen in this very step included)."""
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        dead = [k for k in range(self.members) if not self.alive[k]]
        if not params:
            self.grad_norm = None
            return
        if dead:  # their gradient may be NaN: nothing of it may reach their weights
            for p in params:
                p.grad[dead] = 0
        if self._limits is None and any(c is not None for c in self.clips):
            # The thresholds never change: made once.
            thresholds = [math.inf if c is None else float(c) for c in self.clips]
            self._limits = params[0].new_tensor(thresholds)
        self.grad_norm = clip_global_norm_(params, self._limits, self.members).detach()
        self.prepare_update(optimizer)

    def prepare_update(self, optimizer) -> None:
        """Each member's learning rate for this update. One rate for all: the optimizer takes
        it. Rates that differ: the optimizer steps with rate 1 and each member's change is
        scaled by its own rate afterwards (`optimizer_step`) — exact, because every torch
        optimizer's change of the weights is proportional to its learning rate (its moments do
        not depend on it). A frozen member's rate is 0: its weights stay as they are."""
        rates = [
            s.param_groups[0]["lr"] if self.alive[k] else 0.0 for k, s in enumerate(self.shadows)
        ]
        self._rates, self._before = rates, None
        common = rates[0] if len(set(rates)) == 1 else 1.0
        for group in optimizer.param_groups:
            group["lr"] = common
        if len(set(rates)) > 1:
            self._before = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer.step(closure=optimizer_closure)
        if self._before is None:
            return
        params = [p for g in optimizer.param_groups for p in g["params"]]
        with torch.no_grad():
            rates = torch.tensor(self._rates, dtype=params[0].dtype, device=params[0].device)
            for p, before in zip(params, self._before, strict=True):
                r = rates.view(-1, *[1] * (p.dim() - 1))
                p.copy_(torch.where(r == 0, before, before + r * (p - before)))
        self._before = None

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        # Each member's learning rate and schedule live on a one-parameter optimizer of its own
        # (its "shadow"): a schedule steps it, and each update reads its rate.
        self.shadows = [
            self.optimizer_factory([nn.Parameter(torch.zeros(1))], lr=lr) for lr in self.lrs
        ]
        factory = self.scheduler_factory
        self.schedules = [factory(s) if factory else None for s in self.shadows]
        for shadow in self.shadows:
            # A shadow has no gradient, so this changes nothing; it tells torch's schedules that
            # their optimizer steps (they warn "lr_scheduler.step() before optimizer.step()").
            shadow.step()
        restored = self._restored or {}
        for shadow, state in zip(self.shadows, restored.get("shadows", []), strict=False):
            shadow.load_state_dict(state)
        for schedule, state in zip(self.schedules, restored.get("schedules", []), strict=False):
            if schedule is not None and state is not None:
                schedule.load_state_dict(state)
        return optimizer

    # Epochs -----------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        for trace in self.traces:  # a resumed pack re-runs the steps after its checkpoint
            trace.on_train_start(self.trainer, self)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Each member's learning rate of the epoch, read at its first batch (the first after a
        # resume), as EpochMetricsCSV reads a lone run's: by the epoch's end it may have moved.
        if any(math.isnan(lr) for lr in self.epoch_lrs):
            self.epoch_lrs = [s.param_groups[0]["lr"] for s in self.shadows]

    def log_split(self, split: str) -> None:
        """Each member's metrics of `split` (kept in `member_metrics`); the mean val/loss of
        the live members is logged for the progress display."""
        shown = []
        for k in range(self.members):
            means = {}
            for name in self.means:
                metric = self.member_means[k][f"{split}_{name}"]
                if metric.update_count == 0:
                    break
                means[name] = metric.compute()
                metric.reset()
            else:
                derived = self.derive(means, self.unit)
                self.member_metrics[k] |= {f"{split}/{n}": float(v) for n, v in derived.items()}
                if self.alive[k]:
                    shown.append(float(derived["loss"]))
        if split == "val" and not self.trainer.sanity_checking:
            self.validated = True
        if split == "val" and shown:
            self.log("val/loss", sum(shown) / len(shown), prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self.log_split("train")
        # member_metrics keep the last validation's val/ values: as a lone run's metrics.csv,
        # an epoch that ran none does not show them as its own.
        kept = ("train/", "val/") if self.validated else ("train/",)
        self.validated = False
        for k in range(self.members):
            if self.alive[k] or self.diverged_at[k] == self.current_epoch:
                row = {"epoch": self.current_epoch, "step": self.global_step}
                row |= {
                    key: value
                    for key, value in sorted(self.member_metrics[k].items())
                    if key.startswith(kept)
                }
                row["lr"] = self.epoch_lrs[k]
                self.epochs[k].append(row)
                best = self.best[k]
                val = row.get("val/loss")
                if (
                    self.alive[k]
                    and val is not None
                    and (best is None or val < best["row"]["val/loss"])
                ):
                    self.best[k] = {"row": row, "weights": self.model.member_state_dict(k)}
            self.traces[k].flush()
        self.epoch_lrs = [math.nan] * self.members
        for k, schedule in enumerate(self.schedules):
            if schedule is None or not self.alive[k]:
                continue
            if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
                val = self.member_metrics[k].get("val/loss")
                if val is not None:
                    schedule.step(val)
            else:
                schedule.step()

    # Checkpoints: the pack's whole state, so a relaunch goes on exactly -----------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rnnbench_pack"] = {
            "alive": self.alive,
            "diverged_at": self.diverged_at,
            "member_metrics": self.member_metrics,
            "rows": [e.rows for e in self.epochs],
            "best": self.best,
            "shadows": [s.state_dict() for s in self.shadows],
            "schedules": [s.state_dict() if s is not None else None for s in self.schedules],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("rnnbench_pack")
        if state is None:
            return
        self._restored = state
        self.alive, self.diverged_at = list(state["alive"]), list(state["diverged_at"])
        self.member_metrics = [dict(m) for m in state["member_metrics"]]
        for epochs, rows in zip(self.epochs, state["rows"], strict=True):
            epochs.rows = list(rows)
        self.best = list(state["best"])

    def test_with_best(self) -> list[str]:
        """Give each member its best epoch's weights for the test; which each was tested with."""
        tested = []
        for k, best in enumerate(self.best):
            if best is not None:
                self.model.load_member(k, best["weights"])
            tested.append("best" if best is not None else "last")
        return tested


def packed_task(lone: type[RecurrentTask]) -> type:
    """The task module of a pack of `lone`'s kind."""
    if lone.kind.readout == "decoder":
        raise ConfigError(
            f"pack is not available for {lone.kind.name} (sequence-to-sequence) data: "
            f"run its seeds without pack"
        )
    return type(f"Packed{lone.__name__}", (PackedTask, lone), {})


# ---------------------------------------------------------------------------------------------
# The members and their records


@dataclass
class Member:
    """One run of a pack: its own (lone) configuration, folder, command line and record."""

    cfg: DictConfig
    run_dir: Path
    overrides: list[str]
    record: Record | None = None


def check_members(members: Sequence[Member]) -> None:
    """Refuse members that are not one configuration up to MEMBER_KEYS and the watching keys."""

    def shape(cfg: DictConfig) -> dict[str, Any]:
        flat = flatten(identity(OmegaConf.to_container(cfg, resolve=True)))
        return {key: value for key, value in flat.items() if key not in MEMBER_KEYS}

    first = shape(members[0].cfg)
    for m in members[1:]:
        if shape(m.cfg) != first:
            raise ConfigError(
                f"pack members must differ only in {', '.join(MEMBER_KEYS)}: "
                f"{m.run_dir} differs from {members[0].run_dir} in more"
            )


def seed_members(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> list[Member]:
    """The members of a single run with `pack=K`: seeds seed, seed+1, ..., seed+K-1, in
    run_dir/member-0 ... member-(K-1), reading the data of the first member's data.seed."""
    size = int(cfg.pack)
    data_seed = OmegaConf.select(cfg, "data.seed")
    members = []
    for k in range(size):
        member = cfg.copy()
        with open_dict(member):
            member.seed = int(cfg.seed) + k
            if data_seed is not None:
                member.data.seed = int(data_seed)
        extra = [f"seed={member.seed}"] + ([f"data.seed={data_seed}"] if k else [])
        members.append(Member(member, run_dir / f"member-{k}", [*overrides, *extra]))
    return members


def run_packed(
    cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool, group: str | None
) -> list[Record]:
    """`rnnbench ... pack=K`: in a single run, K seeds packed in the run folder; in a
    multirun, this job's record, from its pack (`run_in_sweep`)."""
    check_config(cfg)  # pack: a whole number >= 1 (schema.RunSchema)
    if multirun:
        return [run_in_sweep(cfg, hydra_cfg, group)]
    run_dir = Path(hydra_cfg.runtime.output_dir)
    members = seed_members(cfg, run_dir, list(hydra_cfg.overrides.task))
    return run_pack(members, run_dir, group)


def run_pack(
    members: list[Member],
    pack_dir: Path,
    group: str | None = None,
    search: Sequence[str | Path] = (),
) -> list[Record]:
    """Train `members` (one configuration up to MEMBER_KEYS) as one pack in `pack_dir`; write
    each member's record into its own folder. A member whose run_key already completed (in its
    folder, under `search` or results_root: train.reuse) is reused and left out of the pack.
    Returns the members' records, in order."""
    check_members(members)
    quiet_lightning(banners=True)
    for m in members:
        config = OmegaConf.to_container(m.cfg, resolve=True)
        m.record = new_record(config, m.run_dir.resolve(), m.overrides)
        check_run_folder(m.run_dir, m.record["run_key"])
    # One pack of these members trains at a time, wherever it is launched from (two sweeps of
    # the same jobs): the others wait, then reuse what it recorded.
    lock, others = hold_pack(members, pack_dir)
    try:
        records: dict[int, Record] = {}
        training = []
        for i, m in enumerate(members):
            m.run_dir.mkdir(parents=True, exist_ok=True)
            reused = None
            if not m.cfg.get("force"):
                root = m.cfg.get("results_root") or m.run_dir
                reused = reuse(m.record, m.run_dir.resolve(), root, [*search, *others])
            if reused is not None:
                records[i] = reused
            else:
                training.append(i)
        if training:
            trained = train_members([members[i] for i in training], pack_dir, group)
            records |= dict(zip(training, trained, strict=True))
    finally:
        if lock is not None:
            lock.close()
    return [records[i] for i in range(len(members))]


def hold_pack(members: Sequence[Member], pack_dir: Path) -> tuple[IO[str] | None, list[Path]]:
    """The lock under results_root/.claims that lets one pack of `members` train at a time,
    taken once no other process holds it; and the member folders of the packs waited for,
    where their records are. No lock without a results_root."""
    root = members[0].cfg.get("results_root")
    if not root:
        return None, []
    path = Path(root) / ".claims" / f"pack-{pack_key(members)}"
    others: list[Path] = []
    said = False
    holder = {**claims.this_process(), "pack": str(pack_dir.resolve())}
    while (lock := claims.hold(path, holder)) is None:
        try:
            other = Path(claims.holder_of(path)["pack"])
            described = json.loads((other / PACK_FILE).read_text())["members"]
            others += [Path(m["run_dir"]) for m in described if Path(m["run_dir"]) not in others]
        except (OSError, ValueError, KeyError, TypeError):
            other = path
        if not said:
            print(f"rnnbench: waiting for the same pack, training in {other}", file=sys.stderr)
            said = True
        time.sleep(WAIT_S)
    return lock, others


def pack_key(members: Sequence[Member]) -> str:
    """Which pack a folder holds: its members' run_keys, in order."""
    return config_hash({"pack": [m.record["run_key"] for m in members]})


@dataclass
class PackTraining:
    """What a pack trains with: `train_members` fits and tests it, `rnnbench-bench` times it."""

    task: PackedTask
    trainer: pl.Trainer
    throughput: Throughput
    params: int  # one member's parameter count


def build_pack(
    members: Sequence[Member],
    datamodule: pl.LightningDataModule,
    pack_dir: Path,
    extra_callbacks: Sequence[pl.Callback] = (),
) -> PackTraining:
    """The packed model (each member built as its own seed builds a lone run's model), its
    task module and its Trainer, for a set-up datamodule."""
    lead = members[0].cfg
    models = []
    for m in members:
        # Each member's weights as its own seed gives a lone run (seeded, then built).
        pl.seed_everything(int(m.cfg.seed), workers=True, verbose=False)
        models.append(instantiate(m.cfg.model, **datamodule.model_io()))
    params = sum(p.numel() for p in models[0].parameters())
    model = PackedSequenceModel(models)
    del models
    task_cls = packed_task(TASKS[datamodule.task])
    scheduler = instantiate(lead.scheduler) if lead.get("scheduler") else None
    task = task_cls(
        model,
        instantiate(lead.optim),
        scheduler,
        datamodule.unit,
        lrs=[float(m.cfg.optim.lr) for m in members],
        clips=[OmegaConf.select(m.cfg, "trainer.gradient_clip_val") for m in members],
        member_dirs=[m.run_dir for m in members],
    )
    # Dropout masks: one stream for the pack, from the first member's seed.
    pl.seed_everything(int(lead.seed), workers=True, verbose=False)
    throughput = Throughput()
    callbacks: list[pl.Callback] = [
        *extra_callbacks,
        ResumeCheckpoint(pack_dir / LAST_CKPT),
        throughput,
    ]
    progress = (lead.get("callbacks") or {}).get("progress_bar")
    if progress is not None and lead.trainer.get("enable_progress_bar", True):
        callbacks.append(instantiate(progress))
    trainer = instantiate(
        lead.trainer,
        logger=False,
        callbacks=callbacks,
        default_root_dir=str(pack_dir),
        plugins=trainer_plugins(),
        gradient_clip_val=None,  # clipped per member by the task
        enable_checkpointing=False,
    )
    return PackTraining(task, trainer, throughput, params)


def train_members(members: list[Member], pack_dir: Path, group: str | None) -> list[Record]:
    """Fit and test `members` as one PackedSequenceModel (`PackRun`); record each."""
    train_and_record(PackRun(members, pack_dir.resolve(), group))
    return [m.record for m in members]


class PackRun:
    """The strategy of a pack (`train_and_record`): its members trained at once as one
    PackedSequenceModel (`build_pack`), resumed together from the pack folder's last.ckpt, each
    tested with its own best epoch's weights and recorded in its own folder, as its lone run
    would be (`packed_with` says with whom). pack.json says how the pack stands."""

    refuses_unbuilt = False  # a member refused is recorded failed: its sweep counts it

    def __init__(self, members: list[Member], pack_dir: Path, group: str | None) -> None:
        self.members, self.pack_dir, self.group = members, pack_dir, group
        self.records = [m.record for m in members]
        self.pack_record: dict[str, Any] = {"run_key": pack_key(members)}
        self.built: PackTraining | None = None
        check_run_folder(pack_dir, self.pack_record["run_key"])
        pack_dir.mkdir(parents=True, exist_ok=True)
        describe_pack(pack_dir, members, "running")
        for m in members:
            claim_run_folder(m.run_dir, m.record["run_key"])

    def build(self) -> pl.LightningDataModule:
        datamodule = instantiate(self.members[0].cfg.data)
        datamodule.setup("fit")
        self.built = build_pack(self.members, datamodule, self.pack_dir)
        self.task, self.trainer = self.built.task, self.built.trainer
        return datamodule

    def resume_point(self) -> Path | None:
        last = resume_point(self.pack_record, self.pack_dir, self.members[0].cfg, packed=True)
        if "resumed_from" in self.pack_record:
            adopt_member_traces(Path(self.pack_record["resumed_from"]), self.members)
        return last

    def conclude(self, datamodule: pl.LightningDataModule) -> None:
        task, trainer, lead = self.task, self.trainer, self.members[0].cfg
        size = len(self.members)
        tested = task.test_with_best()
        testable = [k for k in range(size) if tested[k] == "best" or task.alive[k]]
        if testable:
            trainer.test(task, datamodule=datamodule, verbose=False)
        env = environment(str(trainer.strategy.root_device), lead.get("flush_denormal", True))
        timing = measured_timing(self.built.throughput, trainer.global_step)
        timing["packed"] = size  # train_s is the pack's: every member's steps in it
        for k, m in enumerate(self.members):
            record = m.record
            record["task"], record["headline"] = datamodule.task, datamodule.headline_metric
            record["params"], record["env"] = self.built.params, env
            record["timing"] = dict(timing)
            if "resume" in self.pack_record:
                record["resume"] = self.pack_record["resume"]
                record["notes"] += self.pack_record.get("notes", [])
            best = task.best[k]
            record_best(record, best["row"] if best else None)
            record["notes"].append(
                f"trained in a pack of {size}: the recurrence ran the seed notes' equations "
                f"(model.impl=scratch's), whatever model.impl says"
            )
            test = task.member_metrics[k] if k in testable else {}
            conclude_record(
                record,
                tested[k],
                {key: v for key, v in test.items() if key.startswith("test/")},
                datamodule.reference_metrics(),
                None if task.alive[k] else f"(epoch {task.diverged_at[k]})",
                task.model.member_state_dict(k).values(),
            )
            keep = OmegaConf.select(m.cfg, "checkpoints.keep", default="both")
            if best is not None and keep != "none":
                write_best_checkpoint(m.run_dir, best)

    def finish(self, refused: bool) -> None:
        members, pack_dir = self.members, self.pack_dir
        statuses = {m.record["status"] for m in members}
        for k, m in enumerate(members):
            m.record["packed_with"] = {
                "pack": str(pack_dir),
                "index": k,
                "size": len(members),
                "members": [str(x.run_dir.resolve()) for x in members],
            }
            if m.record["status"] == "failed" and self.built is not None:
                m.record["notes"].append(f"the pack in {pack_dir} did not end")
            write_record(m.run_dir, m.record)
        if statuses & {"failed", "interrupted"}:
            describe_pack(pack_dir, members, max(statuses & {"failed", "interrupted"}))
            return
        describe_pack(pack_dir, members, "ended")
        finish_member_loggers(members, self.group)
        if statuses == {"completed"}:
            keep = OmegaConf.select(members[0].cfg, "checkpoints.keep", default="both")
            if keep in ("best", "none"):
                (pack_dir / LAST_CKPT).unlink(missing_ok=True)


def adopt_member_traces(old_pack: Path, members: Sequence[Member]) -> None:
    """A pack resumed from another folder's pack (`old_pack`, a relaunched sweep): each
    member goes on from the same member of that pack, whose step traces it takes over (the
    pack's checkpoint holds the epoch rows, not the steps) and names in `resumed_from`."""
    try:
        described = json.loads((old_pack / PACK_FILE).read_text())["members"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for m, old in zip(members, described, strict=False):
        if not isinstance(old, dict) or old.get("run_key") != m.record["run_key"]:
            continue
        source = Path(str(old.get("run_dir")))
        if source.is_dir() and source.resolve() != m.run_dir.resolve():
            copy_traces(source, m.run_dir)
            m.record["resumed_from"] = str(source.resolve())


def write_best_checkpoint(run_dir: Path, best: dict[str, Any]) -> None:
    """A member's best weights as checkpoints/best.ckpt: a Lightning-style checkpoint whose
    state_dict is a lone task module's (`model.` + SequenceModel names)."""
    checkpoint = {
        "state_dict": {f"model.{name}": w for name, w in best["weights"].items()},
        "epoch": int(best["row"]["epoch"]),
        "global_step": int(best["row"]["step"]),
        "pytorch-lightning_version": pl.__version__,
        "rnnbench_packed": True,
    }
    AtomicCheckpointIO().save_checkpoint(checkpoint, run_dir / BEST_CKPT)


def describe_pack(pack_dir: Path, members: Sequence[Member], status: str) -> None:
    """pack.json: who trains the pack (host, pid, SLURM job), its members and how it stands
    (running, then ended, failed or interrupted)."""
    pack_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        pack_dir / PACK_FILE,
        {
            "status": status,
            **{k: v for k, v in claims.this_process().items() if k != "since"},
            "updated": now_iso(),
            "members": [
                {
                    "run_dir": str(m.run_dir.resolve()),
                    "run_key": m.record["run_key"] if m.record else None,
                }
                for m in members
            ],
        },
    )


def finish_member_loggers(members: Sequence[Member], group: str | None) -> None:
    """Give each member its own experiment-logger run (W&B, CSV), as a lone run would have:
    its epoch rows and steps, then its summary. Written once the pack has ended, member by
    member, so a dashboard shows ordinary runs."""
    for m in members:
        config = m.record["config"]
        loggers = build_loggers(m.cfg.get("logger"), m.run_dir, config, group, quiet=True)
        if not loggers:
            continue
        every = max(1, int(m.cfg.trainer.get("log_every_n_steps") or 1))
        steps = read_trace(m.run_dir / STEPS_FILE)
        epochs = read_trace(m.run_dir / METRICS_FILE)
        for logger in loggers:
            if steps is not None:
                for row in steps.itertuples(index=False):
                    if int(row.step) % every == 0:
                        logger.log_metrics(
                            {"train/batch_loss": row.batch_loss, "train/grad_norm": row.grad_norm},
                            step=int(row.step),
                        )
            if epochs is not None:
                for row in epochs.to_dict("records"):
                    values = {k: v for k, v in row.items() if k not in ("step",)}
                    logger.log_metrics(values, step=int(row["step"]))
            logger.save()
        finish_wandb(loggers, m.record)
        write_json_atomic(m.run_dir / RECORD_FILE, m.record)  # now naming its W&B run


# ---------------------------------------------------------------------------------------------
# A multirun with pack=K: the sweep's jobs are packed


def family(job: list[str]) -> tuple[str, ...]:
    """What a job's overrides say it computes, less the keys pack members may differ in."""
    kept = []
    for o in OverridesParser.create().parse_overrides(job):
        key = o.key_or_group
        if key in (*MEMBER_KEYS, "pack"):
            continue
        if is_identity_key(key) or key.endswith(".seed"):  # data.seed: what the members share
            kept.append(o.input_line)
    return tuple(sorted(kept))


def job_packs(jobs: list[list[str]], size: int) -> list[list[int]]:
    """The sweep's jobs in packs of up to `size`: jobs of one family, in job order."""
    families: dict[tuple[str, ...], list[int]] = {}
    for num, job in enumerate(jobs):
        families.setdefault(family(job), []).append(num)
    return [nums[i : i + size] for nums in families.values() for i in range(0, len(nums), size)]


WAIT_S = 2.0


def run_in_sweep(cfg: DictConfig, hydra_cfg: DictConfig, group: str | None) -> Record:
    """This sweep job's record: trained in its pack by whichever job of the pack takes the
    pack's claim first (a lock on packs/<jobs>/claim), or, for the others, waited for and read
    back. A claim ends with its process, on whichever node it ran (rnnbench.claims): after a
    kill, another job of the pack, or a relaunched one, takes it and the pack goes on from its
    checkpoint."""
    sweep_dir = Path(hydra_cfg.sweep.dir).resolve()
    saved = OmegaConf.load(sweep_dir / "multirun.yaml")
    if OmegaConf.to_container(saved.hydra.sweep).get("subdir") != "${hydra.job.num}":
        raise ConfigError(
            "pack in a multirun needs hydra.sweep.subdir=${hydra.job.num} (the default): the "
            "pack writes each member's record into its job's folder"
        )
    num = int(hydra_cfg.job.num)
    jobs = sweep_jobs(sweep_dir)
    size = int(cfg.pack)
    pack = next(p for p in job_packs(jobs, size) if num in p)
    own_dir = sweep_dir / str(num)
    pack_dir = sweep_dir / "packs" / "-".join(str(n) for n in pack)
    said = False
    while True:
        ended = pack_ended(pack_dir, own_dir)
        if ended is not None:
            return ended
        claim = claims.hold(pack_dir / "claim", claims.this_process())
        if claim is not None:
            break
        if not said:
            holder = claims.describe(claims.holder_of(pack_dir / "claim"))
            print(
                f"rnnbench: waiting for the pack in {pack_dir}, trained by {holder}",
                file=sys.stderr,
                flush=True,
            )
            said = True
        time.sleep(WAIT_S)
    try:
        members = []
        lead_data_seed = None
        for n in pack:
            member_cfg = (cfg if n == num else compose(jobs[n])).copy()
            if OmegaConf.select(member_cfg, "data.seed") is not None:
                if lead_data_seed is None:
                    lead_data_seed = int(OmegaConf.select(member_cfg, "data.seed"))
                with open_dict(member_cfg):
                    member_cfg.data.seed = lead_data_seed  # one stream of batches for the pack
            members.append(Member(member_cfg, sweep_dir / str(n), list(jobs[n])))
        describe_pack(pack_dir, members, "running")
        status = "failed"
        try:
            records = run_pack(members, pack_dir, group, [sweep_dir])
            status = "ended"
        except (KeyboardInterrupt, SystemExit):
            status = "interrupted"
            raise
        finally:
            describe_pack(pack_dir, members, status)
    finally:
        claim.close()
    return records[pack.index(num)]


def pack_ended(pack_dir: Path, own_dir: Path) -> Record | None:
    """This job's record, when its pack ended (pack.json says so) and wrote it; None while the
    pack is yet to train, training, or stopped unfinished (a relaunch trains it on)."""
    try:
        described = json.loads((pack_dir / PACK_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(described, dict) or described.get("status") != "ended":
        return None
    try:
        return read_record(own_dir / RECORD_FILE)
    except FileNotFoundError:
        raise UserError(f"the pack in {pack_dir} ended without this job's record") from None
