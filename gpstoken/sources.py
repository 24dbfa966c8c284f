"""Image sources for ``gpstoken tokenize`` / ``gpstoken eval``: a folder, a list file or a
Hugging Face ``datasets`` dataset, seen as one ordered list of images with stable ids.

* a folder: every image file below it (recursive; extensions :data:`IMAGE_EXTENSIONS`),
  sorted; ids are the paths relative to the folder (``/`` separated); with ``labeled`` its
  sub-folders are the classes;
* a text file (``.txt`` / ``.lst``): one image path per line (relative paths are relative to
  the file's folder; blank lines and ``#`` comments skipped); ids are the lines as written;
* a ``datasets`` dataset: a folder written by ``Dataset.save_to_disk`` or a Hub dataset name
  (optional dependency ``datasets``; ``split`` picks the split), with an image column (the
  first ``Image`` feature unless ``image_column`` is given); ids are ``"<split>/<row>"``.

:meth:`ImageSource.load` returns an RGB PIL image and raises :class:`UnreadableImage` (with
the reason) for a file that cannot be decoded, so a run can list and skip it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from .images import to_rgb8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
LIST_EXTENSIONS = (".txt", ".lst")


class UnreadableImage(Exception):
    """An image of a source that cannot be read; the message says why."""


def image_files(root: Path) -> list[Path]:
    """Image files below ``root`` (recursive), sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _open_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return to_rgb8(im, path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"cannot decode {path}: {e}") from None


class ImageSource:
    """An ordered list of images: ``len(src)``, ``src.ids[i]`` and ``src.load(i)`` (RGB PIL).

    Picklable, so DataLoader workers load (decode) the images. ``description`` says what
    the source is, for manifests.
    """

    def __init__(self, ids: list[str], description: str, *, paths: Optional[list[str]] = None,
                 dataset: Any = None, column: Optional[str] = None, labels: Optional[list[int]] = None,
                 classes: Optional[list[str]] = None) -> None:
        self.ids = ids
        self.description = description
        #: class index of each image (-1: unlabeled) and the class names
        self.labels = labels if labels is not None else [-1] * len(ids)
        self.classes = classes or []
        self._paths = paths
        self._dataset = dataset
        self._column = column

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> Image.Image:
        if self._paths is not None:
            return _open_rgb(self._paths[i])
        try:
            value = self._dataset[i][self._column]
        except (OSError, ValueError) as e:
            raise UnreadableImage(f"cannot decode row {i} of the dataset: {e}") from None
        if isinstance(value, dict) and value.get("path"):  # an undecoded Image feature
            return _open_rgb(value["path"])
        if not isinstance(value, Image.Image):
            raise UnreadableImage(f"row {i}: column {self._column!r} holds {type(value).__name__}, not an image")
        return to_rgb8(value, f"row {i}")


def _from_list_file(path: Path) -> ImageSource:
    ids, paths = [], []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ids.append(line)
        p = Path(line)
        paths.append(str(p if p.is_absolute() else path.parent / p))
    if not ids:
        raise ValueError(f"SRC: the list file {path} names no images")
    return ImageSource(ids, f"list file {path}", paths=paths)


def _from_folder(root: Path, labeled: bool) -> ImageSource:
    files = image_files(root)
    if not files:
        raise ValueError(f"SRC: no images ({', '.join(IMAGE_EXTENSIONS)}) under the folder {root}")
    ids = [p.relative_to(root).as_posix() for p in files]
    if not labeled:
        return ImageSource(ids, f"folder {root}", paths=[str(p) for p in files])
    loose = [i for i in ids if "/" not in i]
    if loose:
        raise ValueError(f"--labeled: every image must sit in a class sub-folder of {root}; {loose[0]} does not")
    classes = sorted({i.split("/", 1)[0] for i in ids})
    labels = [classes.index(i.split("/", 1)[0]) for i in ids]
    return ImageSource(ids, f"folder {root} (one class per sub-folder)", paths=[str(p) for p in files],
                       labels=labels, classes=classes)


def _from_datasets(src: str, split: str, image_column: Optional[str]) -> ImageSource:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"SRC: {src!r} is not a folder or a list file; to read a Hugging Face dataset "
                         "install the optional dependency: pip install gpstoken[datasets]") from None
    try:
        if Path(src).is_dir():
            ds = datasets.load_from_disk(src)
        else:
            ds = datasets.load_dataset(src, split=split)
    except Exception as e:  # datasets raises many kinds (FileNotFoundError, ConnectionError, DatasetNotFoundError)
        if not Path(src).exists():
            raise ValueError(f"SRC: no folder or file {src!r} exists here, and as a Hub dataset name it cannot be "
                             f"opened ({e}); check the path (SRC is a folder of images, a .txt list of paths or a "
                             "datasets dataset)") from None
        raise ValueError(f"SRC: cannot open the dataset {src!r}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"--split: the dataset {src!r} has splits {sorted(ds)}, not {split!r}")
        ds = ds[split]
    images = [k for k, f in ds.features.items() if isinstance(f, datasets.Image)]
    if not images:
        raise ValueError(f"SRC: the dataset {src!r} has no Image column (columns {list(ds.features)}); "
                         "cast the column that holds the images to datasets.Image()")
    column = image_column or images[0]
    if column not in images:
        raise ValueError(f"--image-column: {column!r} is not an Image column of the dataset {src!r}; "
                         f"its Image columns are {images}")
    return ImageSource([f"{split}/{i}" for i in range(len(ds))], f"dataset {src} [{split}]",
                       dataset=ds.select_columns([column]), column=column)


def open_source(src: str | os.PathLike, *, split: str = "train", image_column: Optional[str] = None,
                labeled: bool = False) -> ImageSource:
    """The images of ``src`` (see the module doc). labeled: a folder whose sub-folders are the
    classes (sorted names; ImageNet layout) gives each image its class index. Raises
    ValueError / FileNotFoundError naming SRC when it is empty or cannot be opened."""
    p = Path(src)
    is_dataset = (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
    if image_column is not None and (p.is_file() or (p.is_dir() and not is_dataset)):
        raise ValueError(f"--image-column: {src} is a {'list file' if p.is_file() else 'folder'}, not a datasets "
                         "dataset; leave --image-column out")
    if p.is_dir() and not is_dataset:
        return _from_folder(p, labeled)
    if labeled:
        raise ValueError(f"--labeled: needs a folder with one sub-folder per class, got {src}")
    if p.is_file():
        if p.suffix.lower() not in LIST_EXTENSIONS:
            raise ValueError(f"SRC: {p} is a file but not a list of image paths ({', '.join(LIST_EXTENSIONS)}); "
                             "pass a folder, a list file or a dataset")
        return _from_list_file(p)
    if not p.exists() and (str(src).startswith((".", "/")) or p.suffix):
        raise FileNotFoundError(f"SRC: {src} does not exist")
    return _from_datasets(str(src), split, image_column)
