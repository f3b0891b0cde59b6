"""gaheads.train.train_state: the run's position round-trips through a checkpoint, old layouts included."""

from __future__ import annotations

import importlib.metadata

import gaheads
from gaheads.train.train_state import EpochProgress, TrainState


def test_state_dict_round_trips_every_rank_s_sums():
    st = TrainState(epoch=1, step=7, epoch_step=3, best_top1=41.5, best_epoch=1, skipped_total=1, train_seconds=9.25)
    st.history.append({"epoch": 1, "top1": 41.5})
    st.progress.add_losses([2.5, 2.0, 0.5])
    other_rank = EpochProgress(loss=3.0, task=2.75, decor=0.25, steps=1, samples=8).state_dict()
    ck = st.state_dict([st.progress.state_dict(), other_rank])
    assert ck["progress"] == {"loss": 2.5, "task": 2.0, "decor": 0.5, "steps": 1, "skipped": 0, "seconds": 0.0,
                              "samples": 0}
    assert ck["metrics"] == {"epoch": 1, "top1": 41.5} and ck["best"] == {"top1": 41.5, "epoch": 1}
    back = TrainState()
    back.load_state_dict(ck, rank=1)
    assert (back.epoch, back.step, back.epoch_step, back.skipped_total, back.train_seconds) == (1, 7, 3, 1, 9.25)
    assert back.progress == EpochProgress(loss=3.0, task=2.75, decor=0.25, steps=1, samples=8)
    assert back.history == st.history and (back.best_top1, back.best_epoch) == (41.5, 1)


def test_old_layouts_load():
    # before per-rank sums: one "progress" dict; before mid-epoch checkpoints: no epoch_step at all
    old = {"epoch": 0, "step": 3, "epoch_step": 3, "history": [],
           "progress": {"loss": 6.0, "task": 5.5, "decor": 0.5, "steps": 3, "skipped": 0, "seconds": 1.5,
                        "samples": 12, "unknown": 1}}
    st = TrainState()
    st.load_state_dict(old)
    assert st.progress == EpochProgress(loss=6.0, task=5.5, decor=0.5, steps=3, seconds=1.5, samples=12)
    st.load_state_dict({"epoch": 2, "step": 8})
    assert (st.epoch, st.step, st.epoch_step, st.best_top1, st.progress) == (2, 8, 0, -1.0, EpochProgress())


def test_end_epoch_tracks_the_best_and_resets_the_sums():
    st = TrainState(epoch_step=4, progress=EpochProgress(steps=4))
    assert st.end_epoch({"epoch": 1, "top1": 10.0}) is True
    assert (st.epoch, st.epoch_step, st.progress, st.best_epoch) == (1, 0, EpochProgress(), 1)
    assert st.end_epoch({"epoch": 2, "top1": 9.0}) is False and (st.best_top1, st.best_epoch) == (10.0, 1)


def test_version_is_the_installed_distribution_s():
    assert gaheads.__version__ == importlib.metadata.version("gaheads")
