"""Claims (rnnbench.run.claims) on real files and real flock locks: a lock is per open file, so
one process can play two holders."""

from __future__ import annotations

from rnnbench.run import claims


def test_a_waiting_process_says_who_holds_the_claim_and_again_when_it_changes_hands(
    tmp_path, capsys
):
    path = tmp_path / "packs" / "0-1" / "claim"
    first = claims.hold(path, {"host": "a", "pid": 1})
    assert first is not None
    assert claims.hold(path, {"host": "b", "pid": 2}) is None  # held: nobody else takes it
    notice = claims.WaitNotice(path, "waiting for the pack, trained by")
    notice.look()
    notice.look()  # the same holder: said once
    first.close()  # its process ended, killed or not: the claim is free
    second = claims.hold(path, {"host": "b", "pid": 2, "slurm_job": "7_1"})
    assert second is not None
    notice.look()
    second.close()
    assert capsys.readouterr().err.splitlines() == [
        "rnnbench: waiting for the pack, trained by process 1 on host a",
        "rnnbench: waiting for the pack, trained by SLURM job 7_1 (host b, pid 2)",
    ]
    assert claims.is_held(path) is False
