"""One reader for users' JSON files: each failure is one line naming the file."""

import pytest

from marft_jax.errors import ConfigError
from marft_jax.jsonfile import read_json, read_jsonl


@pytest.mark.parametrize("text, kwargs, message", [
    (None, {"missing": "a model needs it"}, r"x\.json: file not found \(a model needs it\)$"),
    ("{\"a\": 1,\n}", {}, r"x\.json: invalid JSON at line 2 column 1: "),
    ("[1, 2]", {}, r"x\.json: expected a JSON object at the top level$"),
    ("3", {"top": (dict, list)}, r"expected a JSON object or a JSON array at the top level$"),
    (b"\xff\xfe{}", {}, r"x\.json: cannot read the file"),
])
def test_bad_files_name_the_file(tmp_path, text, kwargs, message):
    path = tmp_path / "x.json"
    if isinstance(text, str):
        path.write_text(text)
    elif text is not None:
        path.write_bytes(text)
    with pytest.raises(ConfigError, match=message) as info:
        read_json(path, **kwargs)
    assert "\n" not in str(info.value)


def test_reads_objects_and_allowed_arrays(tmp_path):
    (tmp_path / "o.json").write_text("{\"a\": [1, 2]}")
    (tmp_path / "l.json").write_text("[{\"role\": \"x\"}]")
    assert read_json(tmp_path / "o.json") == {"a": [1, 2]}
    assert read_json(tmp_path / "l.json", top=(dict, list)) == [{"role": "x"}]


def test_json_lines_plain_and_gzipped(tmp_path):
    import gzip
    text = "{\"a\": 1}\n\n[2]\n"
    (tmp_path / "x.jsonl").write_text(text)
    with gzip.open(tmp_path / "x.jsonl.gz", "wt") as f:
        f.write(text)
    for name in ("x.jsonl", "x.jsonl.gz"):
        assert read_jsonl(tmp_path / name) == [(1, {"a": 1}), (3, [2])]
    (tmp_path / "bad.jsonl").write_text("{}\n{\"a\": \n")
    with pytest.raises(ConfigError, match=r"bad\.jsonl: invalid JSON at line 2 column"):
        read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(text.encode())[:-8])
    with pytest.raises(ConfigError, match=r"cut\.jsonl\.gz: cannot read the file"):
        read_jsonl(tmp_path / "cut.jsonl.gz")
