"""Follow mode's rules on a hand-moved clock (no broker, no sleeps): a pair is ready only once both
files exist and their sizes have not changed for settle_s; a file whose partner has not come after
partner_timeout_s is quarantined, once, with its reason."""

import logging
import types

import numpy as np
import pytest

from quax_faust.core import daq

from quax_faust.ingest.feed import Checkpoint, DirectoryFeed

L = 3072


class Clock:
    """time.monotonic for the feed module, moved by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr("quax_faust.ingest.feed.time", types.SimpleNamespace(monotonic=c))
    return c


def samples(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)


def ready_indices(feed: DirectoryFeed, done: Checkpoint | None = None) -> tuple[list[int], list[str]]:
    pairs, bad = feed.ready(done or Checkpoint(None))
    return [p.file_index for p in pairs], bad


def test_a_growing_pair_is_ready_only_after_its_sizes_held_for_settle_s(tmp_path, clock):
    feed = DirectoryFeed(tmp_path, tmp_path / "quarantine", follow=True, settle_s=1.0, partner_timeout_s=120)
    x = samples(4 * L)
    pair = daq.pair_paths(tmp_path, 0)
    x.real[: 2 * L].astype("<f4").tofile(pair.i_path)
    x.imag[: 2 * L].astype("<f4").tofile(pair.q_path)
    assert ready_indices(feed) == ([], [])  # just seen
    clock.now += 0.9
    assert ready_indices(feed) == ([], [])  # not stable for 1 s yet
    with open(pair.i_path, "ab") as f:  # the DAQ goes on writing: the wait starts again
        f.write(x.real[2 * L:].astype("<f4").tobytes())
    clock.now += 0.5
    assert ready_indices(feed) == ([], [])
    clock.now += 0.9
    assert ready_indices(feed) == ([], [])  # 1.4 s after the start, but i changed 0.9 s ago
    with open(pair.q_path, "ab") as f:
        f.write(x.imag[2 * L:].astype("<f4").tobytes())
    clock.now += 0.1
    assert ready_indices(feed) == ([], [])
    clock.now += 0.99
    assert ready_indices(feed) == ([], [])
    clock.now += 0.02
    assert ready_indices(feed) == ([0], [])  # both sizes unchanged for 1.01 s
    np.testing.assert_array_equal(daq.read_pair(pair), x)  # what is read then is the whole file


def test_a_pair_already_sent_is_not_ready_again(tmp_path, clock):
    feed = DirectoryFeed(tmp_path, tmp_path / "quarantine", follow=True, settle_s=1.0)
    daq.write_pair(tmp_path, 0, samples(L))
    daq.write_pair(tmp_path, 1, samples(L))
    done = Checkpoint(None)
    done.add(0)
    assert ready_indices(feed, done) == ([], [])
    clock.now += 1.0
    assert ready_indices(feed, done) == ([1], [])


def test_a_file_without_partner_is_quarantined_once_after_the_timeout(tmp_path, clock, caplog):
    feed = DirectoryFeed(tmp_path, tmp_path / "quarantine", follow=True, settle_s=1.0, partner_timeout_s=120)
    (tmp_path / "duck_i_00002.dat").write_bytes(np.zeros(L, "<f4").tobytes())
    caplog.set_level(logging.INFO, logger="quax_faust")
    assert ready_indices(feed) == ([], [])
    clock.now += 119.0
    assert ready_indices(feed) == ([], [])  # its partner may still come
    assert (tmp_path / "duck_i_00002.dat").exists()
    clock.now += 1.5
    pairs, bad = ready_indices(feed)
    assert pairs == [] and len(bad) == 1 and "no partner duck_q_00002.dat" in bad[0]
    for _ in range(3):  # later looks find nothing more to say
        clock.now += 200
        assert ready_indices(feed) == ([], [])
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == [
        "duck_i_00002.dat", "duck_i_00002.reason.txt"]
    lines = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(lines) == 1 and "duck_i_00002.dat" in lines[0] and "no partner" in lines[0]


def test_a_partner_that_comes_in_time_makes_a_pair(tmp_path, clock):
    feed = DirectoryFeed(tmp_path, tmp_path / "quarantine", follow=True, settle_s=1.0, partner_timeout_s=120)
    x = samples(L)
    pair = daq.pair_paths(tmp_path, 4)
    x.real.astype("<f4").tofile(pair.i_path)
    assert ready_indices(feed) == ([], [])
    clock.now += 100.0
    x.imag.astype("<f4").tofile(pair.q_path)
    assert ready_indices(feed) == ([], [])  # the pair is new: it must settle first
    clock.now += 1.0
    assert ready_indices(feed) == ([4], [])
    assert not (tmp_path / "quarantine").exists()


def test_without_follow_a_lone_file_is_quarantined_at_once(tmp_path, clock):
    feed = DirectoryFeed(tmp_path, tmp_path / "quarantine", follow=False)
    daq.write_pair(tmp_path, 0, samples(L))
    (tmp_path / "duck_q_00001.dat").write_bytes(np.zeros(L, "<f4").tobytes())
    pairs, bad = ready_indices(feed)
    assert pairs == [0] and len(bad) == 1 and "no partner duck_i_00001.dat" in bad[0]
    assert (tmp_path / "quarantine" / "duck_q_00001.dat").exists()
