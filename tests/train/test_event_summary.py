"""An event's summary (``events.json``, :attr:`RunResult.events`, the CLI's event line) carries
the method's headline facts: PL gating's final Hutchinson trace ± its standard error."""

from __future__ import annotations

import json

import numpy as np
import optax
import pytest

from jaxprune.data import load_dataset
from jaxprune.masks import one_shot
from jaxprune.train import Pruner, TrainConfig, build_model, pl_event_summary, train
from jaxprune.train.events import format_event

BASE = {"step": 2, "ratio": 0.5, "kept": 4, "groups_before": 8, "seconds": 0.25}


def _record(trace, stderr):
    return {
        "hessian": np.asarray("gauss_newton"),  # as event_<step>.npz gives it back
        "num_probes": 4,
        "history_trace": np.asarray(trace, np.float32),
        "history_trace_stderr": np.asarray(stderr, np.float32),
    }


def test_pl_event_summary_is_the_last_gating_step_with_its_standard_error():
    facts = pl_event_summary(_record([5.0, 4.0, 3.5], [0.5, 0.25, 0.125]))
    assert facts == {
        "gating_hessian": "gauss_newton",
        "gating_steps": 3,
        "gating_probes": 4,
        "gating_trace": 3.5,
        "gating_trace_stderr": 0.125,
    }
    assert all(type(v) in (str, int, float) for v in facts.values())  # JSON scalars
    json.dumps(facts, allow_nan=False)
    # One probe per step has no standard error: null in JSON, "n/a" on the line.
    single = pl_event_summary(_record([2.0], [np.inf]))
    assert single["gating_trace_stderr"] is None
    assert "gating_trace 2 ± n/a" in format_event({**BASE, **single})


def test_pl_event_summary_rejects_records_of_other_methods():
    with pytest.raises(ValueError, match=r"missing \['hessian', 'num_probes'"):
        pl_event_summary({"history_trace": np.ones(2), "history_trace_stderr": np.ones(2)})
    with pytest.raises(ValueError, match="non-empty trace histories"):
        pl_event_summary(_record([], []))
    with pytest.raises(ValueError, match="non-empty trace histories"):
        pl_event_summary(_record([1.0, 2.0], [0.1]))


def test_format_event_pairs_each_fact_with_its_standard_error():
    line = format_event({**BASE, "gating_trace": 6.0331, "gating_trace_stderr": 1.1874, "n": 3})
    assert line == (
        "event at step 2: kept 4 of 8 groups (ratio 0.5, 0.25 s); gating_trace 6.033 ± 1.2; n 3"
    )
    assert format_event(BASE) == "event at step 2: kept 4 of 8 groups (ratio 0.5, 0.25 s)"
    with pytest.raises(ValueError, match=r"missing \['groups_before', 'seconds'\]"):
        format_event({"step": 2, "ratio": 0.5, "kept": 4})


def _first_k(context, state):
    return np.arange(len(context.gates)) < context.num_keep, state, {"score": np.arange(3.0)}


@pytest.fixture(scope="module")
def tiny():
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="8")
    config = TrainConfig(num_steps=3, batch_size=16, log_every=3, progress=False)
    return model, splits, config


def test_summarize_facts_reach_events_json_and_bad_facts_fail_clearly(tiny, tmp_path):
    model, splits, config = tiny

    def run(summarize, run_dir=None):
        pruner = Pruner("first", one_shot(2, 0.5), _first_k, summarize=summarize)
        return train(model, splits, optax.sgd(0.1), config, pruner=pruner, run_dir=run_dir)

    result = run(lambda record: {"score_sum": float(record["score"].sum())}, tmp_path)
    (event,) = result.events
    assert event["score_sum"] == 3.0 and event["kept"] == 4
    assert json.loads((tmp_path / "events.json").read_text()) == result.events
    with pytest.raises(TypeError, match="summarize returned list, expected a dict"):
        run(lambda record: [1.0])
    with pytest.raises(ValueError, match="summarize key 'kept' is not a string or collides"):
        run(lambda record: {"kept": 1})
    with pytest.raises(TypeError, match=r"summarize\['score'\] is ndarray, expected int"):
        run(lambda record: {"score": record["score"]})
