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

A pack is a strategy of the one run lifecycle (`PackRun`, trained by rnnbench.run.runner); its task
module is rnnbench.run.packed_task's, and a sweep's packs are claimed by its jobs in
rnnbench.run.sweep_packs.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from rnnbench.errors import ConfigError
from rnnbench.nn.build import build_model
from rnnbench.nn.packed import PackedSequenceModel
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
    new_record,
    now_iso,
    read_trace,
    write_json_atomic,
    write_record,
)
from rnnbench.run import claims
from rnnbench.run.callbacks import Throughput, quiet_lightning
from rnnbench.run.checkpoints import (
    AtomicCheckpointIO,
    ResumeCheckpoint,
    copy_traces,
    resume_point,
)
from rnnbench.run.lifecycle import build_loggers, finish_wandb, reuse, trainer_plugins
from rnnbench.run.module import task_class
from rnnbench.run.packed_task import PackedTask, packed_task
from rnnbench.run.runner import conclude_record, measured_timing, record_best, train_and_record

# The keys whose values may differ between the members of one pack.
MEMBER_KEYS = ("seed", "optim.lr", "trainer.gradient_clip_val")


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


def run_pack(
    members: list[Member],
    pack_dir: Path,
    group: str | None = None,
    search: Sequence[str | Path] = (),
) -> list[Record]:
    """Train `members` (one configuration up to MEMBER_KEYS) as one pack in `pack_dir`; write
    each member's record into its own folder. A member whose run_key already completed (in its
    folder, under `search` or results_root: lifecycle.reuse) is reused and left out of the pack.
    Returns the members' records, in order."""
    check_members(members)
    task_class(members[0].cfg)  # a task that is not the data's: refused before any reuse
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


WAIT_S = 2.0  # seconds between looks at a claim held by another process


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
        models.append(build_model(m.cfg.model, datamodule.model_io()))
    params = sum(p.numel() for p in models[0].parameters())
    model = PackedSequenceModel(models)
    del models
    task_cls = packed_task(task_class(lead))
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
                f"trained in a pack of {size}: the recurrence ran the equations written out in "
                f"rnnbench/nn/cells.py (model.impl=scratch's), whatever model.impl says"
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
            ended = "interrupted" if "interrupted" in statuses else "failed"
            describe_pack(pack_dir, members, ended)
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
