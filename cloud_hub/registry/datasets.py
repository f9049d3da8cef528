"""Built-in data sources: scikit-learn's bundled digits and iris, a CSV file, a folder of images.

Every loader returns raw values plus what the preprocessing step needs to describe them; nothing
is downloaded. Problems in the data raise `DatasetError` naming the file, line and column by
position, never by what the file holds: an error travels to REST callers, and the file may be
one they should not read (its content is no part of a message).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

DATASETS = ("digits", "iris", "csv", "images")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}


class DatasetError(ValueError):
    """The data cannot be used: unknown source, missing column, unreadable file..."""


@dataclass
class Dataset:
    name: str
    kind: Literal["tabular", "image"]
    X: np.ndarray  # tabular: (N, F) float32; image: (N, H, W, C) float32, raw pixel values
    y: np.ndarray  # (N,) int64 class indices
    labels: list[str]
    feature_names: list[str] = field(default_factory=list)
    value_max: float = 1.0  # image pixel scale: 255 for 8-bit images (digits included)
    color: Literal["gray", "rgb", "bgr"] = "gray"

    def summary(self) -> dict[str, object]:
        return {
            "dataset": self.name,
            "kind": self.kind,
            "samples": int(self.X.shape[0]),
            "shape": list(self.X.shape[1:]),
            "classes": len(self.labels),
            "labels": self.labels,
        }


def _encode_labels(raw: list[str]) -> tuple[np.ndarray, list[str]]:
    try:
        ordered = sorted(set(raw), key=float)
    except ValueError:
        ordered = sorted(set(raw))
    index = {label: i for i, label in enumerate(ordered)}
    return np.array([index[v] for v in raw], dtype=np.int64), ordered


def _check_classes(name: str, y: np.ndarray, labels: list[str]) -> None:
    if len(labels) < 2:
        raise DatasetError(f"dataset {name!r} has {len(labels)} class(es); at least 2 are needed")
    counts = np.bincount(y, minlength=len(labels))
    if counts.min() < 2:
        rare = int(counts.argmin())
        raise DatasetError(
            f"dataset {name!r}: class {rare + 1} of {len(labels)} (in sorted order) has fewer "
            "than 2 samples"
        )


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    # scikit-learn's digits are 0..16; stretch them to 0..255 like any 8-bit image, so a model
    # trained here reads the same digits saved as PNG files or seen by a camera.
    X = (bunch.images.astype(np.float32) * np.float32(255.0 / 16.0))[..., None]
    return Dataset(
        name="digits",
        kind="image",
        X=X,
        y=bunch.target.astype(np.int64),
        labels=[str(t) for t in bunch.target_names],
        value_max=255.0,
    )


def load_iris() -> Dataset:
    from sklearn.datasets import load_iris as sk_iris

    bunch = sk_iris()
    return Dataset(
        name="iris",
        kind="tabular",
        X=bunch.data.astype(np.float32),
        y=bunch.target.astype(np.int64),
        labels=[str(t) for t in bunch.target_names],
        feature_names=list(bunch.feature_names),
    )


def load_csv(path: Path, label_column: str | None) -> Dataset:
    if label_column is None:
        raise DatasetError("a CSV dataset needs --label naming its label column")
    if not path.is_file():
        raise DatasetError(f"CSV file {str(path)!r} does not exist")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise DatasetError(f"CSV file {str(path)!r} is empty")
        header = [h.strip() for h in header]
        if label_column not in header:
            raise DatasetError(
                f"CSV file {str(path)!r} has no label column {label_column!r} "
                f"(its header has {len(header)} column{'s' if len(header) != 1 else ''})"
            )
        label_at = header.index(label_column)
        features = [h for i, h in enumerate(header) if i != label_at]
        if not features:
            raise DatasetError(f"CSV file {str(path)!r} has no feature columns besides the label")
        rows: list[list[float]] = []
        raw_labels: list[str] = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DatasetError(
                    f"CSV file {str(path)!r} line {line_no}: {len(row)} fields, "
                    f"header has {len(header)}"
                )
            values: list[float] = []
            for i, cell in enumerate(row):
                if i == label_at:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    raise DatasetError(
                        f"CSV file {str(path)!r} line {line_no}: column {i + 1} is not numeric"
                    ) from None
                if not np.isfinite(value):
                    raise DatasetError(
                        f"CSV file {str(path)!r} line {line_no}: column {i + 1} is not finite"
                    )
                values.append(value)
            rows.append(values)
            raw_labels.append(row[label_at].strip())
    if not rows:
        raise DatasetError(f"CSV file {str(path)!r} has a header but no rows")
    y, labels = _encode_labels(raw_labels)
    data = Dataset(
        name=path.name,
        kind="tabular",
        X=np.asarray(rows, dtype=np.float32),
        y=y,
        labels=labels,
        feature_names=features,
    )
    _check_classes(path.name, y, labels)
    return data


def load_image_folder(
    path: Path,
    *,
    size: tuple[int, int] | None = None,
    color: Literal["gray", "rgb", "bgr"] = "gray",
) -> Dataset:
    """A folder with one sub-folder per class, read with OpenCV and resized to `size` (H, W)."""
    import cv2

    if not path.is_dir():
        raise DatasetError(f"image folder {str(path)!r} does not exist")
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir())
    if len(class_dirs) < 2:
        raise DatasetError(
            f"image folder {str(path)!r} needs one sub-folder per class (found {len(class_dirs)})"
        )
    images: list[np.ndarray] = []
    raw_labels: list[str] = []
    flag = cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR
    for class_dir in class_dirs:
        files = sorted(f for f in class_dir.iterdir() if f.is_file())
        if not files:
            raise DatasetError(f"class folder {str(class_dir)!r} has no images")
        for file in files:
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(f"{str(file)!r} is not an image file (suffix {file.suffix!r})")
            img = cv2.imread(str(file), flag)
            if img is None:
                raise DatasetError(f"{str(file)!r} could not be read as an image")
            if size is None:
                size = (int(img.shape[0]), int(img.shape[1]))
            if img.shape[:2] != size:
                img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            if color == "rgb":
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            images.append(img.reshape(size[0], size[1], -1))
            raw_labels.append(class_dir.name)
    y, labels = _encode_labels(raw_labels)
    data = Dataset(
        name=path.name,
        kind="image",
        X=np.stack(images).astype(np.float32),
        y=y,
        labels=labels,
        value_max=255.0,
        color=color,
    )
    _check_classes(path.name, y, labels)
    return data


def load_dataset(
    name: str,
    *,
    path: Path | None = None,
    label_column: str | None = None,
    image_size: tuple[int, int] | None = None,
    color: Literal["gray", "rgb", "bgr"] = "gray",
) -> Dataset:
    if name == "digits":
        return load_digits()
    if name == "iris":
        return load_iris()
    if name == "csv":
        if path is None:
            raise DatasetError("a CSV dataset needs --path to the file")
        return load_csv(path, label_column)
    if name == "images":
        if path is None:
            raise DatasetError("an image dataset needs --path to a folder of class folders")
        return load_image_folder(path, size=image_size, color=color)
    raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
