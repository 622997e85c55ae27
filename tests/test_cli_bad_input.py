"""Bad input to the `jaxprune` command and its data loaders: one line on stderr, exit status 2,
no traceback; the loaders' own errors; the TensorBoard warning; LTH's groups before each round."""

from __future__ import annotations

import logging
import sys
from unittest import mock

import numpy as np
import optax
import pytest

from jaxprune.cli import main
from jaxprune.data import DataConfig, load_dataset, load_tfds, read_text_files
from jaxprune.data.tfds_loader import _held_records
from jaxprune.masks import lth_schedule
from jaxprune.train import MetricsLogger, TrainConfig, build_model, make_pruner, train

tfds = pytest.importorskip("tensorflow_datasets")

TRAIN = ["train", "--steps", "2", "--batch-size", "8", "--quiet"]
SNIP = ["--method", "snip", "--prune-at", "1"]

#: ``(argv, fragments of the error line)``; ``{tmp}`` is a fresh directory, ``{file}`` a file in
#: it.  The first fragment is the flag the error names.
CASES = {
    "bert_on_features": (
        [*TRAIN, "--model", "bert", "--dataset", "digits"],
        ["--dataset", "model 'bert' needs a token dataset (docstrings, text:PATH), got 'digits'"],
    ),
    "mlp_on_tokens": (
        [*TRAIN, "--model", "mlp", "--dataset", "docstrings"],
        ["--dataset", "model 'mlp' needs a feature or image dataset (digits,", "'docstrings'"],
    ),
    "cnn_on_features": (
        [*TRAIN, "--model", "cnn", "--dataset", "digits"],
        ["--dataset", "model 'cnn' needs an image dataset (digits_image, digits32, tfds:"],
    ),
    "missing_text_file": (
        [*TRAIN, "--model", "bert", "--dataset", "text:{tmp}/missing.txt"],
        ["--dataset", "'{tmp}/missing.txt'", "no such file"],
    ),
    "unprepared_tfds": (
        [*TRAIN, "--model", "cnn", "--dataset", "tfds:mnist", "--data-dir", "{tmp}/tfds"],
        ["--dataset", "--data-dir", "tfds build mnist --file_format=array_record", "{tmp}/tfds"],
    ),
    "train_out_under_a_file": (
        [*TRAIN, "--out", "{file}/run"],
        ["--out", "'{file}/run'", "is a file"],
    ),
    "analyze_out_under_a_file": (
        ["analyze", "--train-steps", "0", "--quiet", "--out", "{file}/run"],
        ["--out", "'{file}/run'", "is a file"],
    ),
    "analyze_probe_examples_beyond_the_data": (
        ["analyze", "--train-steps", "0", "--probe-examples", "100000", "--quiet"],
        ["probe_examples", "at most the 1797 examples of dataset 'digits'", "got 100000"],
    ),
    "compact_cnn": (
        [*TRAIN, *SNIP, "--model", "cnn", "--dataset", "digits_image", "--compact"],
        ["--compact", "model 'cnn' cannot be compacted", "mlp, two_layer, vgg"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_naming_the_flag(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # runs without --out write under runs/ here
    (tmp_path / "file").write_text("not a directory\n")
    fill = lambda text: text.format(tmp=tmp_path, file=tmp_path / "file")  # noqa: E731
    argv, fragments = CASES[case]
    argv = [fill(arg) for arg in argv]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse
        status = exit.code
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fill(fragment) in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_read_text_files_names_a_missing_file(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("= Title =\n one  two \n\nthree\n")
    assert read_text_files([good]) == ["one two", "three"]
    with pytest.raises(ValueError, match=r"paths: expected .* got '.*missing\.txt' \(no such"):
        read_text_files([good, tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match=r"paths: .* \(a directory\)"):
        read_text_files([tmp_path])


def test_tfds_never_downloads_under_mock_data(tmp_path):
    """``load_tfds`` reads prepared data only: with ``download_and_prepare`` failing it still
    loads (mock data), so it never asks TFDS to download."""

    def no_download(*args, **kwargs):
        raise AssertionError("load_tfds asked TFDS to download")

    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", no_download):
            data = load_tfds("mnist", "train", data_dir=tmp_path)
    assert data.x.shape == (4, 28, 28, 1) and data.num_outputs == 10


def test_unprepared_tfds_says_how_to_prepare_it(tmp_path, caplog):
    data_dir = tmp_path / "tfds"
    with caplog.at_level(logging.INFO, logger="absl"), pytest.raises(ValueError) as error:
        load_tfds("fashion_mnist", "test", data_dir=data_dir)
    assert not [r for r in caplog.records if r.name == "absl"]  # the error says it all
    message = str(error.value)
    assert message.startswith("data_dir: expected 'fashion_mnist' prepared in ArrayRecord format")
    assert f"got {str(data_dir)!r}" in message and "TFDS_DATA_DIR" in message
    assert "tfds build fashion_mnist --file_format=array_record" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="tfds build cifar10"):
        load_dataset(DataConfig(name="tfds:cifar10", data_dir=str(data_dir)))
    assert not any(data_dir.rglob("*.array_record*"))  # nothing was written


def test_held_records_pass_on_only_when_the_block_completes(caplog):
    logger = logging.getLogger("jaxprune.test.held")
    with caplog.at_level(logging.INFO, logger=logger.name):
        with _held_records(logger.name):
            logger.warning("kept")
            assert not caplog.records  # held until the block ends
        with pytest.raises(RuntimeError), _held_records(logger.name):
            logger.warning("dropped")
            raise RuntimeError
        logger.warning("after")
    assert [r.getMessage() for r in caplog.records] == ["kept", "after"]


def test_tensorboard_without_a_writer_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # both imports fail
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with caplog.at_level(logging.WARNING, logger="jaxprune.train.logging"):
        logger = MetricsLogger(tmp_path, tensorboard=True)
        logger.log(1, {"loss": 1.0})
        logger.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "TensorBoard" in message and "pip install 'jaxprune[tensorboard]'" in message
    assert "\n" not in message
    assert not (tmp_path / "tensorboard").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxprune.train.logging"):
        MetricsLogger(tmp_path / "off", tensorboard=False).close()
    assert not caplog.records  # no warning when TensorBoard was not asked for


def test_lth_groups_before_are_those_alive_before_each_round(tmp_path):
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="16,12")
    schedule = lth_schedule(30, 0.75)
    config = TrainConfig(num_steps=30, batch_size=32, log_every=10, progress=False)
    result = train(
        model,
        splits,
        optax.adam(1e-2),
        config,
        pruner=make_pruner("lth", schedule),
        run_dir=tmp_path,
    )
    masks = [np.load(tmp_path / f"event_{e['step']}.npz")["mask"] for e in result.events]
    alive = [28, *(int(mask.sum()) for mask in masks[:-1])]
    assert alive[1] < alive[0] and alive[2] < alive[1]
    assert [e["groups_before"] for e in result.events] == alive
    assert [e["kept"] for e in result.events] == [int(mask.sum()) for mask in masks]
