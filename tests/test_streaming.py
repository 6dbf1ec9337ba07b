"""Data beyond the memory budget is streamed (issue 23, must show 3): a pair of torch Datasets over
the budget becomes a ``StreamedData`` that reads them by index through a DataLoader, never whole,
and trains to the same numbers as the in-memory ``TensorData`` of the same data.

The budget is set small through ``PRUNE_DATA_MEMORY_BYTES``; the Datasets below make each image
from its index on demand, record every index read, and refuse iteration and slicing.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from prune_core.config import ExperimentConfig, ModelConfig, PruneConfig, TrainConfig
from prune_core.data import TensorData, load_dataset
from prune_core.experiment import model_for, run_pruning, seed_everything
from prune_core.sources import SourceError, tensor_data_from
from prune_core.streaming import (
    MEMORY_BUDGET_CAP,
    MEMORY_BUDGET_ENV,
    WORKERS_ENV,
    SplitView,
    StreamedData,
    default_workers,
    memory_budget,
)
from prune_core.train import evaluate, train_epochs

SHAPE = (1, 8, 8)
CLASSES = 4


class IndexOnly(Dataset):
    """``n`` images made from their index alone (a class pattern plus seeded noise, uint8), read
    only by ``dataset[i]``: each read is recorded (in ``reads``, or appended to ``log_path`` when
    loader workers in other processes do the reading). Iterating or slicing raises."""

    def __init__(self, n: int, seed: int, log_path: str = "", shape: tuple[int, ...] = SHAPE):
        self.n, self.seed, self.log_path, self.shape = n, seed, log_path, shape
        self.reads: list[int] = []
        g = torch.Generator().manual_seed(1234)  # the class patterns, shared by both splits
        self.patterns = torch.rand(CLASSES, *shape, generator=g) * 255

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if not isinstance(index, int):
            raise TypeError(f"IndexOnly is read one int index at a time, not {index!r}")
        if not 0 <= index < self.n:
            raise IndexError(index)
        if self.log_path:
            with open(self.log_path, "a") as f:  # one short append per read: atomic
                f.write(f"{index}\n")
        else:
            self.reads.append(index)
        label = index % CLASSES
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        noise = torch.randn(self.shape, generator=g) * 40
        return (self.patterns[label] + noise).clamp(0, 255).to(torch.uint8), label

    def __iter__(self):
        raise TypeError("IndexOnly refuses to be iterated: it is read by index")

    def logged(self) -> list[int]:
        """The indices read so far by every process, and forget them."""
        if not self.log_path:
            out, self.reads = self.reads, []
            return out
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            out = [int(line) for line in f]
        os.remove(self.log_path)
        return out


def pair(tmp_path: Path | None = None, n_train: int = 96, n_test: int = 40):
    log = (lambda name: str(tmp_path / name)) if tmp_path is not None else (lambda name: "")
    return IndexOnly(n_train, 1, log("train.log")), IndexOnly(n_test, 2, log("test.log"))


def stream(monkeypatch, workers: int = 0, budget: int = 1000) -> None:
    monkeypatch.setenv(MEMORY_BUDGET_ENV, str(budget))  # bytes: 96 + 40 images of 64 B are more
    monkeypatch.setenv(WORKERS_ENV, str(workers))


def quiet(_msg: str) -> None:
    pass


# --------------------------------------------------------------------------- the budget rule


def test_budget_is_the_env_var_else_a_quarter_of_ram_capped_at_2_gib(monkeypatch):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "12345")
    assert memory_budget() == 12345
    monkeypatch.delenv(MEMORY_BUDGET_ENV)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory_budget() == min(MEMORY_BUDGET_CAP, ram // 4) > 0
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MEMORY_BUDGET_ENV}='lots' is invalid"):
        memory_budget()


def test_default_workers_leave_the_training_threads_their_cores(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 14)
    assert default_workers() == default_workers(torch.device("cuda")) == 4  # MAX_WORKERS
    assert default_workers(torch.device("cpu")) == 2  # 16 cores - 14 threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert default_workers(torch.device("cpu")) == 0  # reads in the training process
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert default_workers(torch.device("cpu")) == 3
    monkeypatch.setenv(WORKERS_ENV, "-1")
    with pytest.raises(ValueError, match=f"{WORKERS_ENV}='-1' is invalid"):
        default_workers()


def test_under_the_budget_the_pair_is_held_in_memory(monkeypatch):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, str((64 + 8) * (96 + 40)))  # exactly what it takes
    data = tensor_data_from("t:d", *pair())
    assert isinstance(data, TensorData) and data.x_train.shape == (96, *SHAPE)
    monkeypatch.setenv(MEMORY_BUDGET_ENV, str((64 + 8) * (96 + 40) - 1))
    assert isinstance(tensor_data_from("t:d", *pair()), StreamedData)


# --------------------------------------------------------------------------- read by index only


@pytest.mark.parametrize("workers", [0, 2])
def test_over_the_budget_it_is_read_by_index_each_training_index_once_per_epoch(
    monkeypatch, tmp_path, workers
):
    stream(monkeypatch, workers)
    train, test = pair(tmp_path if workers else None)
    data = tensor_data_from("t:d", train, test)
    assert isinstance(data, StreamedData)
    # loading: image 0 of each split for the shape, then one pass over each split (labels,
    # shapes, and the training statistics)
    assert sorted(train.logged()) == sorted([0, 0, *range(96)])
    assert sorted(test.logged()) == sorted([0, *range(40)])
    # it holds the two Datasets and no tensor: nothing of the split's size is kept
    assert not [k for k, v in vars(data).items() if isinstance(v, torch.Tensor)]
    assert data.train is train and data.test is test
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, CLASSES))
    seen = []
    for epoch in range(2):
        train_epochs(model, data, 1, lr=0.1, batch_size=32, seed=epoch, log=quiet)
        reads = train.logged()
        assert sorted(reads) == list(range(96))  # every training index once per epoch
        assert reads != list(range(96))  # in a shuffled order
        seen.append(reads)
    assert seen[0] != seen[1]
    assert test.logged() == []  # training reads no test image
    acc = evaluate(model, data, batch_size=16)
    assert sorted(test.logged()) == list(range(40)) and 0 <= acc <= 1
    with pytest.raises(TypeError, match="read by index"):
        iter(train)
    with pytest.raises(TypeError, match="one int index"):
        train[:4]


def test_split_views_answer_what_the_call_sites_ask_without_holding_the_split(monkeypatch):
    stream(monkeypatch)
    train, test = pair()
    data = tensor_data_from("t:d", train, test)
    train.logged(), test.logged()
    assert isinstance(data.x_test, SplitView)
    assert data.x_train.shape[0] == len(data.y_train) == data.size("train") == 96
    assert data.y_test.shape[0] == data.size("test") == 40 and data.x_test.shape == (40, *SHAPE)
    first = data.x_test[:3]
    assert first.dtype == torch.uint8 and first.shape == (3, *SHAPE)
    assert torch.equal(first, torch.stack([test[i][0] for i in range(3)]))
    assert data.y_test[:3].tolist() == [0, 1, 2] and int(data.y_test[-1]) == 39 % CLASSES
    assert torch.equal(data.example(3), data.normalize(first))
    assert sorted(test.logged()) == sorted([0, 1, 2] * 4 + [39])  # only what was asked
    with pytest.raises(TypeError, match="batches"):
        list(data.x_test)


# --------------------------------------------------------------------------- same numbers


def in_memory_twin(monkeypatch, streamed: StreamedData) -> TensorData:
    """The same pair held in memory, with the streamed statistics (the two paths compute them in
    different precision: float32 over the tensor, exact integer sums when streaming)."""
    monkeypatch.setenv(MEMORY_BUDGET_ENV, str(2**30))
    memory = tensor_data_from("t:d", *pair())
    assert memory.mean == pytest.approx(streamed.mean, rel=1e-5)
    assert memory.std == pytest.approx(streamed.std, rel=1e-5)
    return dataclasses.replace(memory, mean=streamed.mean, std=streamed.std)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("augment", [False, True])
def test_streamed_batches_equal_the_in_memory_batches_from_the_same_seed(
    monkeypatch, workers, augment
):
    stream(monkeypatch, workers)
    streamed = dataclasses.replace(tensor_data_from("t:d", *pair()), augment=augment)
    memory = dataclasses.replace(in_memory_twin(monkeypatch, streamed), augment=augment)
    for split, shuffle in (("train", True), ("train", False), ("test", False)):
        g_streamed, g_memory = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        for _epoch in range(2):  # the second epoch reuses the kept loader and its workers
            got = list(streamed.batches(split, 32, shuffle, g_streamed))
            want = list(memory.batches(split, 32, shuffle, g_memory))
            assert [len(y) for _, y in got] == [len(y) for _, y in want]
            for (xs, ys), (xm, ym) in zip(got, want, strict=True):
                assert torch.equal(ys, ym) and ys.dtype == ym.dtype == torch.int64
                assert torch.equal(xs, xm) and xs.dtype == torch.float32
        assert torch.equal(g_streamed.get_state(), g_memory.get_state())  # drew the same


def test_run_pruning_one_shot_on_streamed_data_equals_in_memory(monkeypatch, tmp_path):
    stream(monkeypatch)
    train, test = pair()
    streamed = tensor_data_from("t:d", train, test)
    memory = in_memory_twin(monkeypatch, streamed)
    cfg = ExperimentConfig(
        model=ModelConfig("cnn"),
        train=TrainConfig(epochs=1, lr=0.05),
        prune=PruneConfig(method="global_magnitude", target_sparsity=0.5, finetune_epochs=1),
    )
    seed_everything(cfg.seed)
    dense = {k: v.clone() for k, v in model_for(cfg, memory).state_dict().items()}
    train.logged(), test.logged()
    got = run_pruning(cfg, streamed, dense, log=quiet)
    train_reads = train.logged()
    assert sorted(train_reads) == list(range(96))  # the one fine-tune epoch, each index once
    assert len(test.logged()) >= 40  # evaluations read the test split by index
    want = run_pruning(cfg, memory, dense, log=quiet)
    assert got.history == want.history  # accuracy, loss-free metrics: exactly equal
    assert got.dense == want.dense and got.permanent_test_accuracy == want.permanent_test_accuracy
    for (name, a), (_, b) in zip(
        got.model.state_dict().items(), want.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


# --------------------------------------------------------------------------- the user's package


def write_package(root: Path) -> None:
    pkg = root / "streampkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bigdata.py").write_text(
        textwrap.dedent(
            '''
            import torch
            from torch.utils.data import Dataset


            class Ramp(Dataset):
                """Image i: every pixel (i * 3 + channel) % 256, as floats in [0, 1]."""

                def __init__(self, n):
                    self.n = n

                def __len__(self):
                    return self.n

                def __getitem__(self, i):
                    chans = torch.arange(3).view(3, 1, 1).expand(3, 6, 6)
                    return ((i * 3 + chans) % 256).float() / 255, i % 5

                def __iter__(self):
                    raise TypeError("read by index")


            def data():
                return Ramp(300), Ramp(50)
            '''
        )
    )


def test_load_dataset_routes_a_package_function_through_streaming(monkeypatch, tmp_path):
    write_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    stream(monkeypatch, workers=2)
    data = load_dataset("streampkg.bigdata:data")
    assert isinstance(data, StreamedData)
    assert (data.in_channels, data.image_size, data.num_classes) == (3, 6, 5)
    monkeypatch.setenv(MEMORY_BUDGET_ENV, str(2**30))
    memory = load_dataset("streampkg.bigdata:data")
    assert isinstance(memory, TensorData) and memory.num_classes == 5
    assert memory.mean == pytest.approx(data.mean, rel=1e-5)
    assert memory.std == pytest.approx(data.std, rel=1e-5)
    # --normalize replaces the statistics on either kind
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "0")
    given = load_dataset("streampkg.bigdata:data", normalize=((0.5,), (0.25,)))
    assert isinstance(given, StreamedData) and given.mean == (0.5,) * 3 and given.std == (0.25,) * 3
    # it pickles (Ray ships it to the trials), kept loaders and all, and yields the same batches
    before = len(children())
    list(data.batches("train", 64))
    assert len(children()) == before + 2  # the kept loader's two workers wait for the next epoch
    again = pickle.loads(pickle.dumps(data))
    assert again._loaders == {} and again.mean == data.mean
    for (xa, ya), (xb, yb) in zip(data.batches("test", 16), again.batches("test", 16), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    moved = data.to("cpu")
    assert moved.device == torch.device("cpu") and moved.train is data.train
    assert len(children()) == before + 6  # train and test of data, test of again
    data.close()  # ends its kept loaders' workers
    assert len(children()) == before + 2
    again.close()
    assert len(children()) == before


def test_a_sweep_trains_streamed_data_in_its_trials(monkeypatch, tmp_path, ray_tmpdir):
    """``python -m sweeps`` on a package function over the budget: Ray ships the StreamedData to
    the trials (pickled with the user's Datasets), which read it by index, in whole epochs."""
    from sweeps.__main__ import STUDY
    from sweeps.runner import main

    pkg = tmp_path / "logpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    log = tmp_path / "reads.log"
    (pkg / "data.py").write_text(
        textwrap.dedent(
            f"""
            import os
            import torch
            from torch.utils.data import Dataset


            class Logged(Dataset):
                def __init__(self, n, split):
                    self.n, self.split = n, split
                    g = torch.Generator().manual_seed(1)
                    self.patterns = torch.rand(4, 1, 8, 8, generator=g) * 255

                def __len__(self):
                    return self.n

                def __getitem__(self, i):
                    with open({str(log)!r}, "a") as f:
                        f.write(f"{{os.getpid()}} {{self.split}} {{i}}\\n")
                    g = torch.Generator().manual_seed(i)
                    noise = torch.randn(1, 8, 8, generator=g) * 40
                    return (self.patterns[i % 4] + noise).clamp(0, 255).to(torch.uint8), i % 4

                def __iter__(self):
                    raise TypeError("read by index")


            def data():
                return Logged(200, "train"), Logged(50, "val")
            """
        )
    )
    # the trials' processes import the package as the driver does
    inherited = os.environ.get("PYTHONPATH", "")  # unset in CI (an installed project)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), inherited) if p))
    monkeypatch.syspath_prepend(str(tmp_path))
    stream(monkeypatch, workers=1)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["--model", "cnn", "--dataset", "logpkg.data:data", "--quick", "--num-samples", "1",
            "--tracking-uri", uri, "--experiment", "streamed", "--cache-dir", str(tmp_path / "c"),
            "--storage-path", str(tmp_path / "ray"), "--results-dir", str(tmp_path / "r"),
            ]  # fmt: skip
    assert main(STUDY, argv) == 0
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["streamed"])
    child = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(child) == 1 and (child["status"] == "FINISHED").all()
    assert child["metrics.test_accuracy"].notna().all()
    reads: dict[int, list[int]] = {}  # reader pid -> training indices it read
    for line in log.read_text().splitlines():
        pid, split, index = line.split()
        if split == "train":
            reads.setdefault(int(pid), []).append(int(index))
    # the driver itself reads image 0 only: for the size estimate and the shape
    assert reads.pop(os.getpid()) == [0, 0]
    # its loader workers make the load pass and the dense training, the trial's its fine-tuning:
    # whole epochs (1 + the dense ones + the recipe's), each index equally often
    counts = torch.bincount(torch.tensor([i for r in reads.values() for i in r]), minlength=200)
    assert len(set(counts.tolist())) == 1 and int(counts[0]) > 1 + STUDY.quick_baseline_epochs


def children() -> list[int]:
    """This process's live child processes (loader workers among them)."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids += f.read().split()
        except FileNotFoundError:  # a thread that ended since the listing has no children
            continue
    return pids


def test_images_of_another_shape_are_one_line_naming_the_index(monkeypatch, tmp_path):
    stream(monkeypatch, workers=2)

    class Odd(IndexOnly):
        def __getitem__(self, index):
            image, label = super().__getitem__(index)
            return (image[:, :7, :7] if index == 50 else image), label

    with pytest.raises(SourceError) as err:
        tensor_data_from("t:d", Odd(96, 1), IndexOnly(40, 2))
    assert str(err.value) == (
        "dataset 't:d': train image 50 is (1, 7, 7), image 0 is (1, 8, 8); give --image-size "
        "to resize them to one square size"
    )
    with pytest.raises(SourceError, match="its val split is empty"):
        tensor_data_from("t:d", IndexOnly(96, 1), IndexOnly(0, 2))
