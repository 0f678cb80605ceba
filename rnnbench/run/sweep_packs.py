"""A multirun with pack=K (`run_in_sweep`): the sweep's jobs in packs of one family each
(`job_packs`); each pack is trained by whichever of its jobs claims it first, and the others
wait for its records.

    rnnbench -m seed=1,2,3,4 optim.lr=1e-3,3e-3 pack=4   # the sweep's 8 jobs in 2 packs of 4
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from rnnbench.config import compose
from rnnbench.errors import ConfigError, UserError
from rnnbench.results.record import (
    PACK_FILE,
    RECORD_FILE,
    Record,
    is_identity_key,
    read_record,
)
from rnnbench.run import claims
from rnnbench.run.pack import MEMBER_KEYS, WAIT_S, Member, describe_pack, run_pack
from rnnbench.run.sweep import sweep_jobs


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


def run_in_sweep(cfg: DictConfig, hydra_cfg: DictConfig, group: str | None) -> Record:
    """This sweep job's record: trained in its pack by whichever job of the pack takes the
    pack's claim first (a lock on packs/<jobs>/claim), or, for the others, waited for and read
    back. A claim ends with its process, on whichever node it ran (rnnbench.run.claims): after a
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
    saying = f"waiting for the pack in {pack_dir}, trained by"
    notice = claims.WaitNotice(pack_dir / "claim", saying)
    while True:
        ended = pack_ended(pack_dir, own_dir)
        if ended is not None:
            return ended
        claim = claims.hold(pack_dir / "claim", claims.this_process())
        if claim is not None:
            break
        notice.look()
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
