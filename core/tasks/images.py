"""Few-shot image classification: Omniglot and MiniImagenet as N-way K-shot task families.

Nothing is downloaded: the user points `data_root` at the official files.

Omniglot: ``images_background/<alphabet>/<character>/*.png`` and ``images_evaluation/...`` (any
folder named ``images_background*`` / ``images_evaluation*``, also inside torchvision's
``omniglot-py/``). Every character found is one class; the classes are split into
train / val / test by a fixed permutation (``split_seed``) of the sorted character list, sizes
``splits`` (default 1100 / 100 / 423, the MAML/MT-net split of the 1623 characters). Images are
resized to 28x28 grey, strokes = 1, background = 0. Each class of each task gets a random rotation
by a multiple of 90 degrees (at training and at evaluation).

MiniImagenet: either ``<root>/{train,val,test}/<class>/*.jpg`` or ``<root>/images/*.jpg`` plus
Ravi & Larochelle's ``<root>/{train,val,test}.csv`` (``filename,label``). Images are 84x84 RGB
(resized if needed), scaled to [0, 1]. 64 / 16 / 20 classes in the standard split (not enforced).

Decoding happens once: the images of a split are stored as one uint8 array (``images.npy``,
memory-mapped) under ``cache_dir``, keyed by a SHA-256 of the files' contents and the decoding
options, so sampling an episode is array indexing. Changed files give a new key (a new cache).

An episode of N ways, K shots and Q queries per class has its support laid out shot-major:
``x_support[:, j * N + c]`` is shot j of class c, labels ``0..N-1`` (int64). The first ``k * N``
support examples are therefore the k-shot task (``Batch.shots(k, ways=N)``): support sets nest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .base import Batch, FamilyBase

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class DataError(ValueError):
    """A dataset that cannot be read as the expected layout, or episodes it cannot give; the message
    names the path or the split. `option`: what to change where the ways are to blame - "ways" (the
    family's classes per task), "train_ways" (a learner's own training ways) - else None;
    sweeps.preflight names the spec's field after it."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


def default_cache_dir() -> Path:
    return Path(os.environ.get("METASWEEP_CACHE_DIR") or Path.home() / ".cache" / "metasweep" / "images")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _decode(path: Path, size: int, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if im.size != (size, size):
                im = im.resize((size, size), Image.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except Exception as e:  # PIL raises several types for broken files
        raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None


def _content_key(classes: list[tuple[str, list[Path]]], options: str) -> str:
    h = hashlib.sha256(options.encode())
    for name, files in classes:
        h.update(name.encode() + b"\0")
        for f in files:
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


@dataclass
class ImageArray:
    """The decoded images of a set of classes: images [n, H, W(, 3)] uint8 grouped by class,
    class c being rows offsets[c]:offsets[c + 1]."""

    images: np.ndarray
    offsets: np.ndarray
    class_names: list[str]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def load_cached(classes: list[tuple[str, list[Path]]], *, size: int, mode: str, cache_dir: Path,
                tag: str) -> ImageArray:
    """Decode every class's images once into ``cache_dir/<tag>-<key>/`` and memory-map them."""
    key = _content_key(classes, f"{tag}:{size}:{mode}")[:24]
    target = Path(cache_dir) / f"{tag}-{key}"
    if not (target / "done").exists():
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{tag}-", dir=cache_dir))
        try:
            n = sum(len(files) for _, files in classes)
            shape = (n, size, size) + ((3,) if mode == "RGB" else ())
            arr = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
            offsets, i = [0], 0
            for _, files in classes:
                for f in files:
                    arr[i] = _decode(f, size, mode)
                    i += 1
                offsets.append(i)
            arr.flush()
            del arr
            np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
            (tmp / "classes.json").write_text(json.dumps([name for name, _ in classes]))
            (tmp / "done").write_text("")
            try:
                os.replace(tmp, target)
            except OSError:  # another process built it first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ImageArray(np.load(target / "images.npy", mmap_mode="r"), np.load(target / "offsets.npy"),
                      json.loads((target / "classes.json").read_text()))


# ---------------------------------------------------------------- layouts


def omniglot_classes(root: Path) -> list[tuple[str, list[Path]]]:
    """All characters under the official layout, sorted by 'set/alphabet/character'."""
    root = Path(root)
    expected = ("expected Omniglot's layout: DIR/images_background/<alphabet>/<character>/*.png "
                "(and/or images_evaluation/...; torchvision's DIR/omniglot-py/ also works)")
    if not root.is_dir():
        raise DataError(f"--data-root {root}: not a directory; {expected}")
    bases = [root, root / "omniglot-py"]
    sets = [d for b in bases if b.is_dir() for d in sorted(b.iterdir())
            if d.is_dir() and (d.name.startswith("images_background") or d.name.startswith("images_evaluation"))]
    if not sets:
        raise DataError(f"--data-root {root}: no images_background*/images_evaluation* folder; {expected}")
    classes = []
    for s in sets:
        for alphabet in sorted(d for d in s.iterdir() if d.is_dir()):
            for char in sorted(d for d in alphabet.iterdir() if d.is_dir()):
                files = _image_files(char)
                if not files:
                    raise DataError(f"empty class folder {char} (no image files); {expected}")
                classes.append((f"{s.name}/{alphabet.name}/{char.name}", files))
    if not classes:
        raise DataError(f"--data-root {root}: no character folders found under {', '.join(map(str, sets))}; "
                        f"{expected}")
    return classes


def miniimagenet_classes(root: Path, split: str) -> list[tuple[str, list[Path]]]:
    """The classes of one split: folder-per-class, or images/ plus Ravi & Larochelle's CSV."""
    root = Path(root)
    expected = ("expected MiniImagenet as DIR/{train,val,test}/<class>/*.jpg, or DIR/images/*.jpg with "
                "DIR/{train,val,test}.csv (Ravi & Larochelle split files)")
    if not root.is_dir():
        raise DataError(f"--data-root {root}: not a directory; {expected}")
    folder, csv_file = root / split, root / f"{split}.csv"
    if folder.is_dir():
        classes = []
        for c in sorted(d for d in folder.iterdir() if d.is_dir()):
            files = _image_files(c)
            if not files:
                raise DataError(f"empty class folder {c} (no image files); {expected}")
            classes.append((c.name, files))
        if not classes:
            raise DataError(f"split folder {folder} has no class folders; {expected}")
        return classes
    if csv_file.is_file():
        by_label: dict[str, list[Path]] = {}
        with open(csv_file, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or [c.strip() for c in rows[0][:2]] != ["filename", "label"]:
            raise DataError(f"{csv_file}: expected a header 'filename,label'; {expected}")
        for row in rows[1:]:
            if len(row) < 2:
                continue
            path = root / "images" / row[0].strip()
            if not path.is_file():
                raise DataError(f"{csv_file}: image {path} listed but missing")
            by_label.setdefault(row[1].strip(), []).append(path)
        if not by_label:
            raise DataError(f"{csv_file}: no images listed; {expected}")
        return [(label, sorted(files)) for label, files in sorted(by_label.items())]
    raise DataError(f"--data-root {root}: missing split {split!r} (neither {folder} nor {csv_file}); {expected}")


# ---------------------------------------------------------------- task families


def _check_ways(family) -> None:
    if isinstance(family.ways, bool) or int(family.ways) != family.ways or family.ways < 2:
        raise ValueError(f"ways must be an integer >= 2 (got {family.ways!r})")
    object.__setattr__(family, "ways", int(family.ways))
    if not family.data_root:
        raise ValueError(f"{family.name}: the task option data_root (--data-root) is required")


@dataclass(frozen=True)
class ImageFamily(FamilyBase):
    """Shared episode sampling; subclasses provide `_split(split) -> ImageArray` and `_to_float`."""

    data_root: str = ""
    ways: int = 5
    cache_dir: str = ""
    loss = "cross_entropy"
    rotate = False
    path_options = ("data_root", "cache_dir")  # options that are paths (a spec file resolves them relative to itself)
    required_options = ("data_root",)  # options without a usable default

    @property
    def output_dim(self) -> int:
        return self.ways

    def root(self) -> Path:
        """data_root with ~ and $VARS expanded (spec files may say data_root: $OMNIGLOT_ROOT)."""
        return Path(os.path.expandvars(os.path.expanduser(self.data_root)))

    def _cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def split_data(self, split: str) -> ImageArray:
        # frozen dataclass: the decoded splits are kept aside, not as a field (not part of the options)
        memo = self.__dict__.setdefault("_memo", {})
        if split not in memo:
            memo[split] = self._split(split)
        return memo[split]

    def with_ways(self, ways: int):
        """The same family with `ways` classes per episode, sharing the decoded splits (e.g. a
        Prototypical Network's training episodes with more ways than at test)."""
        other = replace(self, ways=ways)
        other.__dict__["_memo"] = self.__dict__.setdefault("_memo", {})
        return other

    def check(self) -> None:
        """Load (and cache) every split now, so that a bad layout fails before training."""
        for s in ("train", "val", "test"):
            self.split_data(s)

    def _episodes(self, g: torch.Generator, data: ImageArray, split: str, n_tasks: int, shots: int,
                  queries: int, query_first: bool = False) -> Batch:
        """n_tasks episodes: `ways` distinct classes, per class a random order of its images of which
        the support takes the first `shots` and the query the next `queries` (`query_first`: the query
        the first `queries` and the support the next `shots`, so that the query set of an evaluation
        task does not depend on its shot count and its support sets nest)."""
        n_classes = len(data.class_names)
        per = shots + queries
        self.check_episode(split, shots, queries)
        counts = torch.as_tensor(data.counts)
        cls = torch.rand(n_tasks, n_classes, generator=g).argsort(1)[:, : self.ways]  # [tasks, ways]
        keys = torch.rand(n_tasks, self.ways, int(counts.max()), generator=g)
        keys = keys.masked_fill(torch.arange(keys.shape[-1]) >= counts[cls].unsqueeze(-1), 2.0)
        pick = keys.argsort(-1)[..., :per]  # [tasks, ways, shots + queries], distinct images
        rot = torch.randint(0, 4, (n_tasks, self.ways), generator=g) if self.rotate else None
        index = torch.as_tensor(data.offsets)[cls].unsqueeze(-1) + pick
        x = self._to_float(np.asarray(data.images[np.sort(index.flatten().numpy())]), index)
        if rot is not None:
            for k in (1, 2, 3):
                sel = rot == k
                if sel.any():
                    x[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
        y = torch.arange(self.ways).view(1, self.ways, 1).expand(n_tasks, self.ways, per)
        # shot-major: [tasks, per, ways, ...] flattened, so the first k*ways support are the k-shot task
        x = x.transpose(1, 2)
        y = y.transpose(1, 2)
        s_part, q_part = (slice(queries, None), slice(0, queries)) if query_first else \
            (slice(0, shots), slice(shots, None))
        xs, xq = x[:, s_part].flatten(1, 2), x[:, q_part].flatten(1, 2)
        ys, yq = y[:, s_part].flatten(1, 2), y[:, q_part].flatten(1, 2)
        return Batch(xs.contiguous(), ys.contiguous(), xq.contiguous(), yq.contiguous())

    def _to_float(self, rows: np.ndarray, index: torch.Tensor) -> torch.Tensor:
        """rows: the images at sorted(index) (memmaps read fastest in order); returns float images
        shaped [*index.shape, C, H, W]."""
        flat = index.flatten()
        order = flat.argsort()
        out = torch.empty((len(flat),) + rows.shape[1:], dtype=torch.uint8)
        out[order] = torch.from_numpy(rows)
        x = out.reshape(*index.shape, *rows.shape[1:])
        return self._scale(x)

    def sample(self, g: torch.Generator, n_tasks: int, shots: int, queries: int) -> Batch:
        """Meta-training episodes: classes of the train split only."""
        return self._episodes(g, self.split_data("train"), "train", n_tasks, shots, queries)

    def eval_task(self, g: torch.Generator, max_shots: int, queries: int, split: str = "test") -> Batch:
        """Task i of split val/test: classes, then per class the query images, then the support."""
        return self._episodes(g, self.split_data(split), split, 1, max_shots, queries, query_first=True)

    def check_episode(self, split: str, shots: int, queries: int) -> None:
        """DataError (naming the split, the sizes and the option to change) unless every episode of
        `shots` + `queries` images per class of `ways` classes can be drawn from `split`."""
        data = self.split_data(split)
        n_classes, fewest = len(data.class_names), int(data.counts.min())
        if n_classes < self.ways:
            raise DataError(f"{self.name} {split} split has {n_classes} classes, fewer than ways={self.ways} "
                            "(lower ways, or give the split more classes)", option="ways")
        if fewest < shots + queries:
            raise DataError(f"{self.name} {split} split: a class has {fewest} images, fewer than shots + queries "
                            f"= {shots} + {queries} = {shots + queries} per class (lower the shots or the queries)")


@dataclass(frozen=True)
class Omniglot(ImageFamily):
    """Omniglot characters, 28x28 grey, rotations by k*90 degrees per class per task."""

    splits: tuple[int, int, int] = (1100, 100, 423)
    split_seed: int = 0
    image_size: int = 28
    name = "omniglot"
    model = "conv4-omniglot"
    rotate = True

    def __post_init__(self) -> None:
        if len(self.splits) != 3 or any(int(s) != s or s < 1 for s in self.splits):
            raise ValueError(f"omniglot splits must be three integers >= 1 (train, val, test); got {self.splits!r}")
        object.__setattr__(self, "splits", tuple(int(s) for s in self.splits))  # 1100.0 from YAML -> 1100
        _check_ways(self)

    def key(self) -> str:
        return f"{self.name}:ways={self.ways}:splits={tuple(self.splits)}:seed={self.split_seed}:size={self.image_size}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.image_size, self.image_size)

    def _split(self, split: str) -> ImageArray:
        classes = omniglot_classes(self.root())
        n_train, n_val, n_test = (int(s) for s in self.splits)
        if n_train + n_val + n_test > len(classes):
            raise DataError(f"--data-root {self.data_root}: found {len(classes)} Omniglot characters, fewer than the "
                            f"split {n_train}/{n_val}/{n_test} needs (set the task option 'splits')")
        perm = np.random.default_rng(self.split_seed).permutation(len(classes))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
                  "test": (n_train + n_val, n_train + n_val + n_test)}
        lo, hi = bounds[split]
        chosen = [classes[i] for i in sorted(perm[lo:hi])]
        return load_cached(chosen, size=self.image_size, mode="L", cache_dir=self._cache(), tag="omniglot")

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return (1.0 - x.float() / 255.0).unsqueeze(-3)  # black strokes on white -> strokes = 1


@dataclass(frozen=True)
class MiniImagenet(ImageFamily):
    """MiniImagenet, 84x84 RGB in [0, 1]."""

    image_size: int = 84
    name = "miniimagenet"
    model = "conv4-miniimagenet"

    def __post_init__(self) -> None:
        _check_ways(self)

    def key(self) -> str:
        return f"{self.name}:ways={self.ways}:size={self.image_size}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def _split(self, split: str) -> ImageArray:
        classes = miniimagenet_classes(self.root(), split)
        return load_cached(classes, size=self.image_size, mode="RGB", cache_dir=self._cache(), tag="miniimagenet")

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0).movedim(-1, -3)  # [..., H, W, 3] -> [..., 3, H, W]
