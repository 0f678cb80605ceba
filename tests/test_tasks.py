"""The time-series and classification task families on real files: split sizes against the
counts in SOURCES.md (or the published definition of generated tasks), shapes, train-only
normalisation, a short real training run of each, and their bad inputs."""

import math
import shutil

import pandas as pd
import pytest
import torch

from conftest import assert_refused, require_data, rnnbench_cli, train
from rnnbench.data.images import PixelMNIST
from rnnbench.data.music import PolyphonicMusic, read_piano_rolls
from rnnbench.data.series import Forecasting
from rnnbench.data.sst2 import SST2, read_sst2
from rnnbench.data.synthetic import AddingProblem, CopyMemory
from rnnbench.errors import ConfigError, DataError

MNIST = [
    "mnist/train-images-idx3-ubyte.gz",
    "mnist/train-labels-idx1-ubyte.gz",
    "mnist/t10k-images-idx3-ubyte.gz",
    "mnist/t10k-labels-idx1-ubyte.gz",
]
ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


def setup(dm):
    dm.setup()
    return dm


def test_adding_problem_follows_its_definition():
    dm = setup(AddingProblem(seq_len=50, train_size=300, valid_size=100, test_size=2000, seed=1))
    assert {s: len(d) for s, d in dm.splits.items()} == {"train": 300, "valid": 100, "test": 2000}
    batch = dm.splits["test"].tensors
    x, y = batch["x"], batch["y"]
    assert x.shape == (2000, 50, 2) and y.shape == (2000, 1)
    assert torch.all(x[..., 1].sum(1) == 2)  # exactly two marks per sequence
    torch.testing.assert_close(y[:, 0], (x[..., 0] * x[..., 1]).sum(1))
    assert 0 <= x[..., 0].min() and x[..., 0].max() < 1
    assert dm.reference_metrics()["test/mse_baseline"] == pytest.approx(1 / 6, abs=0.015)


def test_copy_memory_follows_its_definition():
    dm = setup(CopyMemory(seq_len=30, train_size=50, valid_size=10, test_size=10, seed=2))
    x, y = dm.splits["train"].tensors["x"], dm.splits["train"].tensors["y"]
    assert x.shape == y.shape == (50, 30 + 20)
    assert torch.equal(y[:, -10:], x[:, :10])  # the digits come back at the end
    assert torch.all((x[:, :10] >= 1) & (x[:, :10] <= 8))
    assert torch.all(x[:, 10:39] == 0) and torch.all(x[:, 39:] == 9)
    assert torch.all(y[:, :-10] == 0)
    assert dm.reference_metrics()["test/loss_baseline"] == pytest.approx(10 * math.log(8) / 50)


@pytest.mark.parametrize(
    "name, counts, frames",
    [
        ("jsb", (229, 76, 77), (13_807, 4_602, 4_725)),
        ("nottingham", (694, 173, 170), (176_561, 45_513, 44_463)),
        ("musedata", (524, 135, 124), (245_202, 82_755, 64_339)),
        ("piano_midi", (87, 12, 25), (75_911, 8_540, 19_036)),
    ],
)
def test_music_splits_match_sources(name, counts, frames):
    files = {
        "jsb": "JSB_Chorales",
        "nottingham": "Nottingham",
        "musedata": "MuseData",
        "piano_midi": "Piano_midi",
    }
    root = require_data(f"poly_music/{files[name]}.mat")
    dm = setup(PolyphonicMusic(name, batch_size=4, root=str(root)))
    assert tuple(len(dm.splits[s]) for s in ("train", "valid", "test")) == counts
    assert (
        tuple(sum(r.size(0) for r in dm.splits[s].rolls) for s in ("train", "valid", "test"))
        == frames
    )
    batch = next(iter(dm.test_dataloader()))  # in order: row 0 is the first test piece
    assert batch["x"].shape[-1] == 88 and batch["x"].shape == batch["y"].shape
    first = dm.splits["test"].rolls[0]
    n = first.size(0) - 1
    assert torch.equal(batch["x"][0, :n], first[:-1]) and torch.equal(batch["y"][0, :n], first[1:])
    assert batch["mask"][0].sum() == n and torch.all(batch["mask"][0, n:] == 0)


def test_truncated_mat_file_is_a_clear_error(tmp_path):
    root = require_data("poly_music/JSB_Chorales.mat")
    data = (root / "poly_music/JSB_Chorales.mat").read_bytes()
    (tmp_path / "jsb.mat").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="jsb.mat.*truncated"):
        read_piano_rolls(tmp_path / "jsb.mat")


def test_mnist_splits_shapes_and_permutation():
    root = str(require_data(*MNIST))
    seq = setup(PixelMNIST("seq_mnist", root=root))
    perm = setup(PixelMNIST("pmnist", permute=True, root=root))
    assert {s: len(d) for s, d in seq.splits.items()} == {
        "train": 55_000,
        "valid": 5_000,
        "test": 10_000,
    }
    test_counts = torch.bincount(seq.splits["test"].labels).tolist()
    assert test_counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    item = seq.splits["test"][0]
    assert item["x"].shape == (784, 1) and 0.0 <= item["x"].min() and item["x"].max() <= 1.0
    assert item["x"].max() == 1.0  # scaled by 255, not left as bytes
    p = perm.splits["test"][0]["x"]
    assert not torch.equal(p, item["x"])
    assert torch.equal(p.sort(0).values, item["x"].sort(0).values)  # same pixels, other order
    again = setup(PixelMNIST("pmnist", permute=True, root=root, seed=7))
    assert torch.equal(again.splits["test"][0]["x"], p)  # one fixed permutation


def test_sst2_splits_and_packing():
    root = str(require_data("sst2/train.tsv", "sst2/dev.tsv"))
    dm = setup(SST2(root=root, batch_size=5))
    sizes = {s: len(d) for s, d in dm.splits.items()}
    assert sizes == {"train": 67_349 - 872, "valid": 872, "test": 872}
    assert torch.bincount(dm.splits["test"].labels).tolist() == [428, 444]
    assert dm.vocab.itos[0] == "<pad>"
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (5, int(batch["lengths"].max()))
    for row, n in zip(batch["x"], batch["lengths"], strict=True):
        assert torch.all(row[n:] == 0) and torch.all(row[:n] != 0)


def test_sst2_malformed_row_names_its_line(tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_text("sentence\tlabel\na fine film \t1\nno label here\nworse \t0\n")
    with pytest.raises(DataError, match=r"sst2/train.tsv line 3: expected 'sentence<TAB>label'"):
        read_sst2(bad, "sst2/train.tsv")


def ett(**kw):
    root = str(require_data("ett/ETTh1.csv"))
    args = {
        "name": "etth1",
        "file": "ett/ETTh1.csv",
        "columns": ETT_COLUMNS,
        "targets": ETT_COLUMNS,
        "split": [8640, 2880, 2880],
        "root": root,
    } | kw
    return Forecasting(**args)


def test_ett_windows_follow_informer_and_normalise_on_train_only():
    dm = setup(ett(lookback=96, horizon=24))
    assert {s: len(d) for s, d in dm.splits.items()} == {
        "train": 8640 - 96 - 24 + 1,
        "valid": 2880 - 24 + 1,
        "test": 2880 - 24 + 1,
    }
    item = dm.splits["test"][0]
    assert item["x"].shape == (96, 7) and item["y"].shape == (24, 7)
    raw = pd.read_csv(require_data("ett/ETTh1.csv") / "ett/ETTh1.csv")[ETT_COLUMNS]
    train_mean = torch.tensor(raw.iloc[:8640].mean().to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(dm.mean, train_mean)
    assert not torch.allclose(dm.mean, torch.tensor(raw.mean().to_numpy(), dtype=torch.float32))
    # The first test target is row 8640 + 2880 of the file, normalised with train statistics.
    expected = (torch.tensor(raw.iloc[11520].to_numpy(), dtype=torch.float32) - dm.mean) / dm.std
    torch.testing.assert_close(item["y"][0], expected)


def test_airline_holds_out_the_last_24_months():
    root = str(require_data("airline/airline-passengers.csv"))
    dm = setup(
        Forecasting(
            "airline",
            "airline/airline-passengers.csv",
            ["Passengers"],
            ["Passengers"],
            [108, 12, 24],
            lookback=12,
            horizon=1,
            root=root,
        )
    )
    assert {s: len(d) for s, d in dm.splits.items()} == {"train": 96, "valid": 12, "test": 24}
    last = dm.splits["test"][23]["y"] * dm.std + dm.mean
    assert last.item() == pytest.approx(432.0)  # December 1960


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"lookback": 0}, ConfigError, "data.lookback=0"),
        ({"horizon": 0}, ConfigError, "data.horizon=0"),
        ({"lookback": 9000}, ConfigError, "longer than the train split"),
        (
            {"columns": ["HUFL", "foo"], "targets": ["foo"]},
            DataError,
            r"\['foo'\] not in ett/ETTh1",
        ),
        ({"targets": ["bar"]}, ConfigError, "data.targets"),
    ],
)
def test_forecasting_bad_inputs(kwargs, error, message):
    with pytest.raises(error, match=message):
        setup(ett(**kwargs))


TINY = ["trainer=debug", "model.hidden_size=12", "model.num_layers=1", "data.batch_size=4"]
DATASETS = {
    "adding": ["data.seq_len=30", "data.train_size=64", "data.valid_size=16", "data.test_size=16"],
    "copy_memory": [
        "data.seq_len=30",
        "data.train_size=64",
        "data.valid_size=16",
        "data.test_size=16",
    ],
    "jsb": [],
    "nottingham": [],
    "musedata": [],
    "piano_midi": [],
    "etth1": [],
    "etth2": [],
    "airline": [],
    "seq_mnist": [],
    "pmnist": [],
    "sst2": [],
}
FILES = {
    "jsb": ["poly_music/JSB_Chorales.mat"],
    "nottingham": ["poly_music/Nottingham.mat"],
    "musedata": ["poly_music/MuseData.mat"],
    "piano_midi": ["poly_music/Piano_midi.mat"],
    "etth1": ["ett/ETTh1.csv"],
    "etth2": ["ett/ETTh2.csv"],
    "airline": ["airline/airline-passengers.csv"],
    "seq_mnist": MNIST,
    "pmnist": MNIST,
    "sst2": ["sst2/train.tsv", "sst2/dev.tsv"],
}
HEADLINE = {
    "adding": "test/mse",
    "copy_memory": "test/loss",
    "jsb": "test/nll",
    "nottingham": "test/nll",
    "musedata": "test/nll",
    "piano_midi": "test/nll",
    "etth1": "test/mse",
    "etth2": "test/mse",
    "airline": "test/mse",
    "seq_mnist": "test/acc",
    "pmnist": "test/acc",
    "sst2": "test/acc",
}


@pytest.mark.parametrize("data", list(DATASETS))
def test_every_dataset_trains(data, tmp_path):
    require_data(*FILES.get(data, []))
    record = train([f"data={data}", *TINY, *DATASETS[data]], tmp_path)
    assert record["status"] == "completed", record["error"]
    assert record["headline"] == HEADLINE[data]
    assert math.isfinite(record["metrics"][HEADLINE[data]])
    assert record["timing"]["items_per_s"] > 0


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_bidirectional_classifier_and_regressor(cell, tmp_path):
    record = train(
        [
            "data=adding",
            *TINY,
            *DATASETS["adding"],
            f"model={cell}",
            "model.bidirectional=true",
            "model.impl=scratch",
        ],
        tmp_path / "a",
    )
    assert record["status"] == "completed"
    require_data("sst2/train.tsv")
    record = train(
        ["data=sst2", *TINY, f"model={cell}", "model.bidirectional=true"], tmp_path / "s"
    )
    assert record["status"] == "completed" and 0 <= record["metrics"]["test/acc"] <= 1


def test_lstm_beats_the_trivial_adding_predictor(tmp_path):
    record = train(
        [
            "data=adding",
            "data.seq_len=20",
            "data.train_size=4000",
            "data.valid_size=500",
            "data.test_size=500",
            "model=lstm",
            "model.num_layers=1",
            "model.hidden_size=64",
            "optim.lr=0.005",
            "trainer.max_epochs=10",
        ],
        tmp_path,
    )
    metrics = record["metrics"]
    assert metrics["test/mse"] < 0.5 * metrics["test/mse_baseline"], metrics


@pytest.mark.parametrize("data", ["jsb", "copy_memory"])
def test_bidirectional_next_step_prediction_is_refused(data, tmp_path):
    if data == "jsb":
        require_data("poly_music/JSB_Chorales.mat")
    result = rnnbench_cli([f"data={data}", "model.bidirectional=true", "logger=none"], cwd=tmp_path)
    assert_refused(result, "model.bidirectional=true is not allowed", tmp_path)


def test_window_longer_than_the_series_from_the_cli(tmp_path):
    require_data("airline/airline-passengers.csv")
    result = rnnbench_cli(["data=airline", "data.lookback=200", "logger=none"], cwd=tmp_path)
    assert_refused(result, "data.lookback=200", tmp_path)


def test_truncated_mat_from_the_cli_is_refused(tmp_path):
    shared = require_data("poly_music/JSB_Chorales.mat")
    (tmp_path / "data/poly_music").mkdir(parents=True)
    data = (shared / "poly_music/JSB_Chorales.mat").read_bytes()
    (tmp_path / "data/poly_music/JSB_Chorales.mat").write_bytes(data[:5000])
    result = rnnbench_cli(
        ["data=jsb", "logger=none"], cwd=tmp_path, env={"RNNBENCH_DATA_DIR": str(tmp_path / "data")}
    )
    assert_refused(result, "JSB_Chorales.mat fails its sha256 check", tmp_path)
    shutil.rmtree(tmp_path / "data")
