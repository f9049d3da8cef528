"""Built-in data sources, and the clear errors bad data gets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cloud_hub.registry.datasets import DatasetError, load_dataset


def test_bundled_datasets() -> None:
    digits = load_dataset("digits")
    assert digits.kind == "image"
    assert digits.X.shape == (1797, 8, 8, 1)
    assert digits.labels == [str(i) for i in range(10)]
    iris = load_dataset("iris")
    assert iris.kind == "tabular"
    assert iris.X.shape == (150, 4)
    assert iris.labels == ["setosa", "versicolor", "virginica"]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_with_string_labels(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "d.csv", "a,b,kind\n1,2,cat\n3,4,dog\n5,6,cat\n7,8,dog\n")
    data = load_dataset("csv", path=csv, label_column="kind")
    assert data.feature_names == ["a", "b"]
    assert data.labels == ["cat", "dog"]
    assert data.y.tolist() == [0, 1, 0, 1]
    np.testing.assert_array_equal(data.X[1], [3, 4])


@pytest.mark.parametrize(
    ("text", "label", "message"),
    [
        ("a,b,y\n1,2,0\n3,4,1\n", "kind", "no label column 'kind' (its header has 3 columns)"),
        ("a,b,y\n1,x,0\n3,4,1\n1,2,0\n3,4,1\n", "y", "line 2: column 2 is not numeric"),
        ("a,b,y\n1,inf,0\n3,4,1\n", "y", "line 2: column 2 is not finite"),
        ("a,b,y\n1,2,0\n3,4\n", "y", "line 3: 2 fields, header has 3"),
        ("", "y", "is empty"),
        ("a,y\n", "y", "no rows"),
        ("a,y\n1,0\n2,0\n", "y", "1 class(es)"),
    ],
)
def test_bad_csv_files_are_named(tmp_path: Path, text: str, label: str, message: str) -> None:
    csv = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DatasetError) as err:
        load_dataset("csv", path=csv, label_column=label)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        "hub:$7$101$SECRET==\n",  # a broker password file, named as a dataset
        "a,SECRET\n1,0\n",
        "a,y\nSECRET,0\n",
        "a,y\n1,SECRET\n2,SECRET\n3,other\n",
    ],
)
def test_errors_never_echo_what_the_file_holds(tmp_path: Path, text: str) -> None:
    csv = write_csv(tmp_path / "f.csv", text)
    with pytest.raises(DatasetError) as err:
        load_dataset("csv", path=csv, label_column="y")
    assert "SECRET" not in str(err.value)


def test_missing_csv_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("csv", path=tmp_path / "nope.csv", label_column="y")


def make_image_folder(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for cls, level in (("dark", 40), ("light", 210)):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(rng.normal(level, 10, (12, 10)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / cls / f"{i}.png"), img)
    return root


def test_image_folder_is_read_and_resized(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs")
    data = load_dataset("images", path=folder, image_size=(8, 8))
    assert data.kind == "image"
    assert data.X.shape == (8, 8, 8, 1)
    assert data.labels == ["dark", "light"]
    assert data.value_max == 255.0
    assert data.X[data.y == 0].mean() < data.X[data.y == 1].mean()


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs")
    (folder / "dark" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match=r"broken\.png' could not be read as an image"):
        load_dataset("images", path=folder)


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'mnist': choose one of digits, iris"):
        load_dataset("mnist")
