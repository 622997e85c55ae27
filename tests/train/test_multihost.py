"""Multi-host data parallelism: two processes joined by ``jax.distributed`` on 127.0.0.1 (gloo
CPU collectives), two forced CPU devices each, train the run a single process trains.

Each process feeds only its own rows of every global batch (``local_slice`` and
``make_array_from_process_local_data`` in :mod:`jaxprune.train.parallel`); the 4-device
global step must then equal the single-device step up to float reduction order.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from cpu_devices import cpu_devices_env

# The run both sides train: a tiny MLP on digits with plain SGD, so that reduction-order
# round-off in the gradients stays round-off in the weights (Adam's first steps would
# amplify it to the learning rate).
_RUN = textwrap.dedent(
    """
    import jax, numpy as np, optax
    from jaxprune.data import load_dataset
    from jaxprune.train import TrainConfig, build_model, train

    def run():
        model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="16,12")
        config = TrainConfig(num_steps=6, batch_size=16, eval_batch_size=64, log_every=2,
                             progress=False)
        result = train(model, load_dataset("digits"), optax.sgd(0.1), config)
        return {
            "params": [np.asarray(w).tolist() for w in jax.tree_util.tree_leaves(result.state.params)],
            "rows": result.rows,
            "devices": result.summary["devices"],
            "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(),
        }
    """
)

_WORKER = (
    textwrap.dedent(
        """
    import json, sys
    import jax
    from jaxprune.compile_cache import enable_compilation_cache

    enable_compilation_cache()  # the tests' shared cache (tests/conftest.py)
    process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=120)
    """
    )
    + _RUN
    + "\nwith open(out, 'w') as f:\n    json.dump(run(), f)\n"
)


def _unsupported() -> str | None:
    """Why this machine cannot run two JAX processes on CPU, or None."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
    except OSError as error:
        return f"no TCP on 127.0.0.1 ({error}); jax.distributed's coordinator needs it"
    from jax._src import lib

    native = getattr(lib, "_jax", None) or getattr(lib, "xla_extension", None)
    if not hasattr(native, "make_gloo_tcp_collectives"):
        return f"jaxlib {jax.__version__} has no gloo CPU collectives for several processes"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
    reason = _unsupported()
    if reason:
        pytest.skip(reason)
    port = _free_port()
    outs = [tmp_path / f"process_{i}.json" for i in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(i), str(port), str(out)],
            env=cpu_devices_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, out in enumerate(outs)
    ]
    try:
        namespace: dict = {}
        exec(_RUN, namespace)
        single = namespace["run"]()  # this process: one device
        logs = [worker.communicate(timeout=300)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, log[-3000:]
    results = [json.loads(out.read_text()) for out in outs]
    assert single["devices"] == 1
    for result in results:
        assert (result["process_count"], result["local_devices"], result["devices"]) == (2, 2, 4)
        assert [r["step"] for r in result["rows"]] == [r["step"] for r in single["rows"]]
        for row, expected in zip(result["rows"], single["rows"]):
            assert row.keys() == expected.keys()
            for key, value in expected.items():
                np.testing.assert_allclose(row[key], value, rtol=1e-5, err_msg=key)
        for got, want in zip(result["params"], single["params"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Both processes hold the same replicated result.
    assert results[0]["params"] == results[1]["params"]
    assert results[0]["rows"] == results[1]["rows"]
