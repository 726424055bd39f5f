"""An episode file whose meta.json lacks or garbles a field is refused in one line, not a traceback."""

from __future__ import annotations

import json
import re
import zipfile

import pytest

from fewshot_bench.episodes import EpisodeSet, EpisodeSpec
from fewshot_bench.errors import EpisodeError


def _episode_file(tmp_path, **meta_changes):
    """A valid episode file, then its meta.json edited (``None`` deletes a field)."""
    eps = EpisodeSet.draw(EpisodeSpec(2, 1, 1, 3), dataset="toy", split="test", class_names=["a", "b", "c"],
                          class_sizes=[3, 3, 3])
    good = eps.save(tmp_path / "good.episodes.zip")
    bad = tmp_path / "bad.episodes.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "meta.json":
                meta = json.loads(data)
                for key, value in meta_changes.items():
                    if value is None:
                        del meta[key]
                    else:
                        meta[key] = value
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    return bad


@pytest.mark.parametrize("field", ["dataset", "split", "class_names", "ways"])
def test_missing_meta_field_is_one_line(tmp_path, field):
    path = _episode_file(tmp_path, **{field: None})
    with pytest.raises(EpisodeError, match="^" + re.escape(f"episode file {path} lacks '{field}' in meta.json; "
                                                           "regenerate it") + "$"):
        EpisodeSet.load(path)


def test_garbled_meta_field_is_one_line(tmp_path):
    path = _episode_file(tmp_path, class_sizes=["three", 3, 3])
    with pytest.raises(EpisodeError, match="^" + re.escape(f"episode file {path} has an invalid meta.json (")
                       + r"invalid literal for int\(\) .*\); regenerate it$"):
        EpisodeSet.load(path)


def test_the_unedited_file_loads(tmp_path):
    eps = EpisodeSet.load(_episode_file(tmp_path))
    assert (eps.dataset, eps.split, eps.class_sizes) == ("toy", "test", (3, 3, 3))
