"""Image task families: layouts, splits, the decode cache, episodes, rotations, clear errors.

Omniglot tests use the two minimal background sets in shared/data/omniglot beside the checkout (checked against
its SHA256SUMS, unzipped into a temporary folder); MiniImagenet tests build a tiny tree of JPEGs."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omniglotdata import SPLITS

from metasweep.core.tasks import DataError, MiniImagenet, Omniglot
from metasweep.core.tasks.images import omniglot_classes


@pytest.fixture(scope="module")
def omniglot(omniglot_root, tmp_path_factory):
    fam = Omniglot(data_root=str(omniglot_root), ways=5, splits=SPLITS,
                   cache_dir=str(tmp_path_factory.mktemp("cache")))
    fam.check()
    return fam


def test_omniglot_split_sizes_and_disjointness(omniglot, omniglot_root):
    names = {s: omniglot.split_data(s).class_names for s in ("train", "val", "test")}
    assert [len(names[s]) for s in ("train", "val", "test")] == list(SPLITS)
    sets = [set(v) for v in names.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == {n for n, _ in omniglot_classes(omniglot_root)}
    data = omniglot.split_data("train")
    assert data.images.shape == (int(data.counts.sum()), 28, 28) and data.images.dtype == np.uint8
    assert isinstance(data.images, np.memmap)
    # the split is a fixed function of split_seed, and another seed gives another split
    other = Omniglot(data_root=omniglot.data_root, ways=5, splits=SPLITS, split_seed=1, cache_dir=omniglot.cache_dir)
    assert other.split_data("val").class_names != names["val"]


def test_omniglot_default_split_needs_all_characters(omniglot_root, tmp_path):
    fam = Omniglot(data_root=str(omniglot_root), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"found 292 Omniglot characters.*1100/100/423.*splits"):
        fam.sample(torch.Generator().manual_seed(0), 1, 1, 1)


def test_episode_layout_and_labels(omniglot):
    b = omniglot.sample(torch.Generator().manual_seed(0), 3, 2, 4)
    assert b.x_support.shape == (3, 10, 1, 28, 28) and b.x_query.shape == (3, 20, 1, 28, 28)
    assert b.y_support.dtype == torch.int64
    assert torch.equal(b.y_support[0], torch.arange(5).repeat(2))  # shot-major
    assert torch.equal(b.y_query[1], torch.arange(5).repeat(4))
    assert 0 <= float(b.x_support.min()) and float(b.x_support.max()) <= 1
    # no image is both support and query of a class (strokes differ between drawers)
    for c in range(5):
        s, q = b.x_support[0, c::5], b.x_query[0, c::5]
        assert not any(torch.equal(a, z) for a in s for z in q)


def test_rotations_are_per_class_per_task(omniglot):
    class Upright(Omniglot):
        rotate = False

    plain = Upright(data_root=omniglot.data_root, ways=5, splits=SPLITS, cache_dir=omniglot.cache_dir)
    b = omniglot.sample(torch.Generator().manual_seed(7), 8, 2, 3)
    u = plain.sample(torch.Generator().manual_seed(7), 8, 2, 3)  # same draws up to the rotation
    seen = set()
    for t in range(8):
        for c in range(5):
            rot = [a for a in torch.cat([b.x_support[t, c::5], b.x_query[t, c::5]])]
            up = [a for a in torch.cat([u.x_support[t, c::5], u.x_query[t, c::5]])]
            ks = [k for k in range(4) if all(torch.equal(r, torch.rot90(x, k, dims=(-2, -1))) for r, x in zip(rot, up))]
            assert ks, f"task {t} class {c}: images of one class are not rotated alike"
            seen.add(ks[0])
    assert seen == {0, 1, 2, 3}


def test_eval_episodes_fixed_by_seed_and_index(omniglot):
    a = omniglot.eval_tasks("val", 3, range(4), 2, 3)
    b = omniglot.eval_tasks("val", 3, [2], 2, 3)
    c = omniglot.eval_tasks("val", 4, range(4), 2, 3)
    for x, y in zip(a, b):
        assert torch.equal(x[2:3], y)
    assert not torch.equal(a.x_support, c.x_support)
    one = a.shots(1, ways=5)
    assert torch.equal(one.x_support, a.x_support[:, :5]) and torch.equal(one.y_support[0], torch.arange(5))


def test_cache_reused_and_invalidated_when_files_change(omniglot_root, tmp_path):
    root = tmp_path / "data"
    src = omniglot_root / "images_background_small1"
    alphabets = sorted(p.name for p in src.iterdir())[:2]
    for a in alphabets:
        shutil.copytree(src / a, root / "images_background" / a)
    n = len(omniglot_classes(root))
    cache = tmp_path / "cache"
    fam = Omniglot(data_root=str(root), ways=2, splits=(n - 2, 1, 1), cache_dir=str(cache))
    before = fam.split_data("train")
    again = Omniglot(data_root=str(root), ways=2, splits=(n - 2, 1, 1), cache_dir=str(cache)).split_data("train")
    assert len(list(cache.iterdir())) == 1 and np.array_equal(before.images, again.images)
    first_class = root / "images_background" / before.class_names[0].split("/", 1)[1]
    victim = sorted(first_class.iterdir())[0]
    shutil.copy(sorted(first_class.iterdir())[1], victim)  # a changed file: new content, same name
    after = Omniglot(data_root=str(root), ways=2, splits=(n - 2, 1, 1), cache_dir=str(cache)).split_data("train")
    assert len(list(cache.iterdir())) == 2
    assert np.array_equal(after.images[0], after.images[1]) and not np.array_equal(before.images[0], after.images[0])


def test_omniglot_clear_errors(tmp_path, omniglot_root):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="images_background"):
        Omniglot(data_root=str(empty), cache_dir=str(tmp_path)).check()
    with pytest.raises(DataError, match="not a directory"):
        Omniglot(data_root=str(tmp_path / "nope"), cache_dir=str(tmp_path)).check()
    root = tmp_path / "r"
    char = root / "images_background" / "Alpha" / "character01"
    char.mkdir(parents=True)
    with pytest.raises(DataError, match=f"empty class folder {char}"):
        omniglot_classes(root)
    (char / "0001_01.png").write_bytes(b"not a png")
    for i in range(2, 5):
        (root / "images_background" / "Alpha" / f"character0{i}").mkdir()
        shutil.copy(next((omniglot_root / "images_background_small1").rglob("*.png")),
                    root / "images_background" / "Alpha" / f"character0{i}" / "a.png")
    with pytest.raises(DataError, match=f"cannot decode image {char / '0001_01.png'}"):
        Omniglot(data_root=str(root), ways=2, splits=(2, 1, 1), split_seed=0, cache_dir=str(tmp_path / "c")).check()


# ---------------------------------------------------------------- MiniImagenet


def make_mini_tree(root: Path, classes=(3, 2, 2), per_class=6, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    layout = {}
    for split, n in zip(("train", "val", "test"), classes):
        for c in range(n):
            name = f"n{split}{c:02d}"
            for i in range(per_class):
                img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
                (root / split / name).mkdir(parents=True, exist_ok=True)
                img.save(root / split / name / f"{name}_{i:03d}.jpg", quality=90)
            layout.setdefault(split, []).append(name)
    return layout


def test_miniimagenet_folder_and_csv_layouts_agree(tmp_path):
    folders = tmp_path / "folders"
    layout = make_mini_tree(folders)
    csv_root = tmp_path / "csv"
    (csv_root / "images").mkdir(parents=True)
    for split, names in layout.items():
        lines = ["filename,label"]
        for name in names:
            for f in sorted((folders / split / name).iterdir()):
                shutil.copy(f, csv_root / "images" / f.name)
                lines.append(f"{f.name},{name}")
        (csv_root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    a = MiniImagenet(data_root=str(folders), ways=2, cache_dir=str(tmp_path / "c1"))
    b = MiniImagenet(data_root=str(csv_root), ways=2, cache_dir=str(tmp_path / "c2"))
    for s in ("train", "val", "test"):
        da, db = a.split_data(s), b.split_data(s)
        assert da.class_names == db.class_names == layout[s]
        assert da.images.shape == (len(layout[s]) * 6, 84, 84, 3) and np.array_equal(da.images, db.images)
    ba = a.sample(torch.Generator().manual_seed(1), 2, 1, 2)
    bb = b.sample(torch.Generator().manual_seed(1), 2, 1, 2)
    assert ba.x_support.shape == (2, 2, 3, 84, 84) and ba.x_query.shape == (2, 4, 3, 84, 84)
    assert all(torch.equal(x, y) for x, y in zip(ba, bb))
    ev = a.eval_tasks("test", 1, range(3), 2, 1)
    assert torch.equal(ev.x_query[1:2], a.eval_tasks("test", 1, [1], 2, 1).x_query)


def test_miniimagenet_clear_errors(tmp_path):
    root = tmp_path / "m"
    make_mini_tree(root)
    shutil.rmtree(root / "val")
    fam = MiniImagenet(data_root=str(root), ways=2, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=f"missing split 'val'.*{root / 'val'}"):
        fam.check()
    (root / "test" / "nempty").mkdir()
    with pytest.raises(DataError, match=f"empty class folder {root / 'test' / 'nempty'}"):
        fam.split_data("test")
    with pytest.raises(DataError, match="fewer than shots \\+ queries"):
        fam.sample(torch.Generator().manual_seed(0), 1, 3, 4)


# ---------------------------------------------------------------- `metasweep train` on image tasks


def run_cli(*args):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two busy cores: torch's default threads oversubscribe them
    return subprocess.run([sys.executable, "-m", "metasweep.sweeps.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_train_cli_bad_data_root_exits_2_with_the_expected_layout(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("train", "--task", "omniglot", "--data-root", str(empty), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "images_background/<alphabet>/<character>/*.png" in r.stderr
    r = run_cli("train", "--task", "miniimagenet", "--data-root", str(empty), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "missing split 'train'" in r.stderr and "{train,val,test}/<class>" in r.stderr
    r = run_cli("train", "--task", "omniglot", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--data-root: required" in r.stderr
    assert not (tmp_path / "x").exists()


def test_short_omniglot_run_beats_chance(omniglot_root, tmp_path):
    """MAML, 5-way 1-shot on the minimal sets, 40 meta-steps of 4 tasks: accuracy on 60 fixed test
    tasks after one inner step is far above chance (0.2) and above the untrained net's."""
    from metasweep.analysis.store import read_dataset
    from metasweep.core.evaluate import evaluate
    from metasweep.core.state import init_state
    from metasweep.sweeps.trial import TrialConfig, build_setup

    out, cache = tmp_path / "omni", tmp_path / "cache"
    r = run_cli("train", "--task", "omniglot", "--data-root", str(omniglot_root), "--splits", "200,40,52",
                "--cache-dir", str(cache), "--ways", "5", "--train-shots", "1", "--queries", "5",
                "--variant", "maml", "--alpha", "0.4", "--beta", "0.003", "--meta-batch", "4", "--meta-steps", "40",
                "--report-every", "20", "--val-tasks", "10", "--eval-tasks", "60", "--eval-steps", "0,1",
                "--cka-tasks", "8", "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "accuracy (mean ± 95% CI)" in r.stdout
    # the feature-reuse table and its figure
    from metasweep.analysis.plots import make_plot
    from metasweep.analysis.store import read_raw

    cka = read_raw(str(out), "cka").to_pandas()
    assert len(cka) == 8 * 5 and sorted(set(cka["layer"])) == [0, 1, 2, 3, 4]
    assert ((cka["cka"] > 0) & (cka["cka"] <= 1 + 1e-9)).all() and set(cka["shots"]) == {1}
    # SVCCA over the spatial positions of 25 query images: defined for conv 1-3; conv 4 is pooled
    # (25 points of 64 channels: undefined, NaN)
    conv = cka[cka["layer"] < 3]["cca"]
    assert conv.notna().all() and ((conv > 0) & (conv <= 1 + 1e-9)).all()
    assert cka[cka["layer"] == 3]["cca"].isna().all()
    from metasweep.analysis.query import query_table

    by_layer = query_table(str(out), "select layer, count(*) as n, avg(cka) as cka from cka group by layer order by layer")
    assert by_layer["n"].to_pylist() == [8] * 5
    assert by_layer["cka"].to_pylist() == pytest.approx(cka.groupby("layer")["cka"].mean().tolist())
    assert make_plot(str(out), "cka", str(tmp_path / "cka.png")) and (tmp_path / "cka.png").stat().st_size > 1000
    import matplotlib.image

    height, width = matplotlib.image.imread(tmp_path / "cka.png").shape[:2]
    assert width > 2.5 * height  # two panels side by side: CKA and SVCCA
    ev = read_dataset(str(out))["eval_tasks"].to_pandas()
    acc = ev.groupby("inner_steps")["accuracy"].agg(["mean", "std", "count"])
    assert set(ev["shots"]) == {1} and acc.loc[1, "count"] == 60
    assert abs(acc.loc[0, "mean"] - 0.2) < 0.1  # before adaptation: chance
    trained = acc.loc[1, "mean"]
    ci = 1.96 * acc.loc[1, "std"] / 60**0.5
    assert trained - ci > 0.45, (trained, ci)
    cfg = TrialConfig(task="omniglot", task_options=dict(data_root=str(omniglot_root), ways=5, splits=[200, 40, 52],
                                                          cache_dir=str(cache)), train_shots=1, queries=5, alpha=0.4)
    setup = build_setup(cfg)
    untrained = evaluate(setup, init_state(setup, 0).params, n_tasks=60, shots=(1,), steps=(1,))["accuracy"].mean()
    assert trained > untrained + 0.1, (trained, untrained)


def test_smoke_spec_builds_image_trials(omniglot_root, tmp_path, monkeypatch):
    """A shipped image spec -> trial configs -> the conv net on the data under $OMNIGLOT_ROOT."""
    from metasweep.core.conv import ConvNet
    from metasweep.sweeps.plan import cells, trial_config
    from metasweep.sweeps.spec import load_spec
    from metasweep.sweeps.trial import build_setup

    monkeypatch.setenv("OMNIGLOT_ROOT", str(omniglot_root))
    monkeypatch.setenv("METASWEEP_CACHE_DIR", str(tmp_path / "cache"))
    spec, _, _ = load_spec("omniglot-smoke")
    by_name = {c.variant: trial_config(spec, c, split="test", seed=0) for c in cells(spec)}
    setup = build_setup(by_name["nil"])
    assert isinstance(setup.model, ConvNet) and setup.model.filters == 64 and setup.family.splits == SPLITS
    assert setup.variant.eval_head == "nil" and setup.engine in ("batched", "vmap", "loop")
    b = setup.family.sample(torch.Generator().manual_seed(0), 2, 1, 5)
    assert b.x_support.shape == (2, 5, 1, 28, 28)
    assert build_setup(by_name["anil"]).variant.inner_params == "head"
