"""Image data: a folder with one subfolder per class, and the built-in image sets that installed packages ship.

Rows hold the image as found (a path, raw bytes or an array) with its label; decoding and checking each image is
the image task's job (``tasks/image_classification.py``), so a corrupt file is reported with its row like any other
bad row, and counted when skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunelab.data.sources import Row
from tunelab.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_image_folder(folder: Path) -> tuple[list[Row], dict[str, int]]:
    """``folder/<label>/<image>`` as rows {image: path, label: subfolder name}, in sorted order.

    Files that are not images by their suffix are counted (not read); a class folder without images is an error,
    since its label could never be learnt or evaluated.
    """
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: an image folder needs one subfolder per class (e.g. {folder}/cat/1.jpg); "
                        "found no subfolders")
    rows: list[Row] = []
    report = {"image_files": 0, "other_files_ignored": 0}
    for class_dir in classes:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        report["other_files_ignored"] += len(files) - len(images)
        if not images:
            raise DataError(f"{class_dir}: the class folder '{class_dir.name}' holds no image files "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}); remove it or add its images")
        rows += [Row({"image": str(path), "label": class_dir.name}, str(path), 0) for path in images]
    report["image_files"] = len(rows)
    return rows, report


def digits() -> tuple[list[dict[str, Any]], dict[str, int]]:
    """scikit-learn's handwritten digits: 1,797 greyscale 8x8 images of 0-9 (UCI, shipped inside scikit-learn).

    Pixel values 0..16 are scaled to 0..255 uint8, so they decode like any 8-bit greyscale image.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    rows = [{"image": image, "label": str(int(target))} for image, target in zip(pixels, bunch.target)]
    return rows, {"rows_read": len(rows)}
