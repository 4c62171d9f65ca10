"""The scorer process dies (SIGKILL) or is stopped (SIGTERM) mid-stream, and is started again."""

from __future__ import annotations

import random
import time

import pytest

from scorer.pipeline import REPLAY_AFTER_CRASH
from tests.faults.common import Feed, collect_outputs, running, wait_until
from tests.integration.helpers import scorer_env, start_scorer
from tests.integration.test_restarts import _register_input_schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 5
KILL_RECORDS = 50_000
KILL_RATE = 800  # the feed lasts about 62 s: all five kills (each costs 7-15 s) land while input arrives
KILL_BATCH = 500
SEED = 20240605


@pytest.mark.timeout(200)
def test_five_sigkills_during_one_run_lose_nothing(
    stack, trained, topic_factory, producer, registry_client, tmp_path, fault_results
):
    """SIGKILL at seeded random points, five times, restarting each time, while 50,000 records arrive.

    At-least-once: a kill replays what was produced but not yet committed, which is at most the
    ``MAX_IN_FLIGHT`` batches awaiting acknowledgement plus the one being produced. So per kill at most
    ``REPLAY_AFTER_CRASH * batch size`` duplicates, and nothing lost.
    """
    model = trained("binary")
    source, sink = topic_factory("features"), topic_factory("predictions")
    _register_input_schema(registry_client, source, model)
    env = scorer_env(stack, source, sink, model, SCORER_MAX_BATCH_SIZE=str(KILL_BATCH))
    rng = random.Random(SEED)
    assigned = f"assigned {source}["
    restarts: list[float] = []
    kills_mid_stream = 0

    scorer = start_scorer(env, tmp_path, "run-0")
    processes = [scorer]
    with running(*processes):
        scorer.wait_for_log(assigned, timeout_s=60)
        feed = Feed(producer, registry_client, source, model, KILL_RECORDS, KILL_RATE, seed=SEED)
        for k in range(1, KILLS + 1):
            scorer.wait_for_log(assigned, timeout_s=60)
            time.sleep(rng.uniform(0.3, 2.0))
            kills_mid_stream += not feed.done
            scorer.sigkill()
            restarts.append(time.time())
            scorer = start_scorer(env, tmp_path, f"run-{k}")
            processes.append(scorer)
        feed.join(120)
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", feed.ids, timeout_s=90)
        scorer.sigterm()
        assert scorer.wait(30) == 0, scorer.output()[-3000:]
        # a last read after the drained stop: every duplicate the run produced is in the topics now
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", feed.ids, timeout_s=30)

    lost, extra = outputs.account(feed.ids)
    recovery = [outputs.first_after(t) for t in restarts]
    bound = KILLS * REPLAY_AFTER_CRASH * KILL_BATCH
    fault_results.add(
        f"SIGKILL ×{KILLS} + restart",
        len(feed.ids),
        len(lost),
        extra,
        max(r for r in recovery if r is not None),
        f"duplicates bound {bound:,}; worst of {KILLS} restarts (session timeout 6 s + join)",
    )
    assert kills_mid_stream == KILLS, f"only {kills_mid_stream} of {KILLS} kills landed while input was arriving"
    assert not lost, f"{len(lost)} inputs have neither a prediction nor a dead letter, e.g. {sorted(lost)[:5]}"
    assert extra <= bound, f"{extra} duplicates: more than the uncommitted in-flight batches of {KILLS} kills"
    assert not outputs.dead_letters, "good records are never dead-lettered"


TERM_RECORDS = 20_000
TERM_RATE = 5_000
DRAIN_S = 15


@pytest.mark.timeout(150)
def test_sigterm_drains_within_the_timeout_and_restart_duplicates_nothing(
    stack, trained, topic_factory, producer, registry_client, tmp_path, fault_results
):
    """SIGTERM while batches are in flight: finish, deliver, commit, leave; exit 0 within the drain timeout.

    The restarted scorer then resumes exactly after the last committed offset: no duplicates.
    """
    model = trained("binary")
    source, sink = topic_factory("features"), topic_factory("predictions")
    _register_input_schema(registry_client, source, model)
    env = scorer_env(stack, source, sink, model, SCORER_MAX_BATCH_SIZE="500", SCORER_DRAIN_TIMEOUT_S=str(DRAIN_S))
    first = start_scorer(env, tmp_path, "first")
    with running(first):
        first.wait_for_log(f"assigned {source}[", timeout_s=60)
        feed = Feed(producer, registry_client, source, model, TERM_RECORDS, TERM_RATE)
        time.sleep(2.0)
        assert not feed.done, "the stop must land while input arrives"
        stopped = time.monotonic()
        first.sigterm()
        code = first.wait(DRAIN_S + 10)
        took = time.monotonic() - stopped
    assert code == 0, first.output()[-3000:]
    assert took < DRAIN_S, f"SIGTERM took {took:.1f} s, more than the {DRAIN_S} s drain timeout"
    assert "stopped:" in first.output()

    restarted = time.time()
    second = start_scorer(env, tmp_path, "second")
    with running(second):
        feed.join(60)
        wait_until(lambda: "assigned" in second.output(), 60)
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", feed.ids, timeout_s=90)
        second.sigterm()
        assert second.wait(30) == 0, second.output()[-3000:]
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", feed.ids, timeout_s=30)

    lost, extra = outputs.account(feed.ids)
    fault_results.add(
        "SIGTERM + restart", len(feed.ids), len(lost), extra, outputs.first_after(restarted), f"drained in {took:.1f} s"
    )
    assert not lost, f"{len(lost)} inputs have no output"
    assert extra == 0, f"{extra} duplicates after a drained stop"
