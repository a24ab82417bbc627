"""runtime.data.prefetch: a vision-language loader's steps made ahead in a thread are the very steps
made on demand, its state is that of the last step handed out (a checkpoint resumes exactly), the
thread really works ahead of the consumer, and an error in it reaches the training loop."""
import threading
import time

import pytest
import torch

from runtime.data import Source
from runtime.data.multimodal import build_vl_loader
from runtime.data.prefetch import Prefetch

import vlfix


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return vlfix.make_data(tmp_path_factory.mktemp("vl_prefetch"))


def loader(data, prefetch):
    proc = vlfix.processor("tiny-qwen2.5-vl", data["tokenizer"])
    return build_vl_loader([Source("chat", str(data["chat"]), kind="sft")], proc, max_len=512, pack="greedy",
                           micro_batch=2, grad_accum=2, seed=0, prefetch=prefetch, log=lambda m: None)


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_same_steps_and_states_as_on_demand(data):
    plain, ahead = loader(data, 0), loader(data, 2)
    assert isinstance(ahead, Prefetch) and not isinstance(plain, Prefetch)
    a, b = iter(plain), iter(ahead)
    epochs = set()
    for _ in range(5):  # crosses an epoch boundary (12 samples, 4 rows a step)
        same(next(a), next(b))
        assert ahead.state_dict() == plain.state_dict()
        assert (ahead.epoch, ahead.step) == (plain.epoch, plain.step)
        epochs.add(ahead.epoch)
    assert len(epochs) > 1
    ahead.close()


def test_resume_from_a_prefetching_loader_is_exact(data):
    ref = loader(data, 0)
    it = iter(ref)
    for _ in range(2):
        next(it)
    expected = [next(it) for _ in range(3)]

    ahead = loader(data, 1)
    it = iter(ahead)
    for _ in range(2):
        next(it)
    time.sleep(0.2)  # let the thread run ahead: the state must not follow it
    state = ahead.state_dict()
    fresh = loader(data, 1)
    fresh.load_state_dict(state)
    for want, got in zip(expected, iter(fresh)):
        same(want, got)
    ahead.close()  # back to after step 2, whatever the thread had made
    it = iter(ahead)
    for want in expected:
        same(want, next(it))
    ahead.close()
    fresh.close()


def test_the_thread_makes_the_next_step_while_the_consumer_trains(data):
    ahead = loader(data, 1)
    calls, made = [], threading.Event()
    collate = ahead.dataloader.dataset.collate

    def counting(rows, length, pad):
        calls.append(threading.current_thread() is threading.main_thread())
        if len(calls) == 4:  # both micro-batches of step 2
            made.set()
        return collate(rows, length, pad)

    ahead.dataloader.dataset.collate = counting
    next(iter(ahead))
    assert made.wait(timeout=60), "step 2 was not made while step 1 was being used"
    assert not any(calls)  # never on the training thread
    ahead.close()


def test_an_error_in_the_thread_reaches_the_step_that_needed_it(data):
    ahead = loader(data, 1)
    collate, calls = ahead.dataloader.dataset.collate, []

    def failing(rows, length, pad):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("undecodable image (test)")
        return collate(rows, length, pad)

    ahead.dataloader.dataset.collate = failing
    it = iter(ahead)
    assert len(next(it)) == 2
    with pytest.raises(RuntimeError, match="undecodable image"):
        next(it)
