"""The downloader's files on disk (receiver.plugins.files), on a temporary directory: safe
path segments, distinct labels, extensions, and the part file that is either committed whole
or removed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from receiver.plugins import SavedFile
from receiver.plugins.files import (
    PartFile,
    extension,
    path_segment,
    unchanged,
    unique,
    writable_directory,
)

pytestmark = pytest.mark.both_backends


def test_a_safe_external_task_id_is_kept_as_it_is() -> None:
    assert path_segment("kh-01JD0000000000000000000000") == "kh-01JD0000000000000000000000"


@pytest.mark.parametrize(
    ("value", "prefix"),
    [("../x", "_._x-"), (".hidden", "_hidden-"), ("a/b c", "a_b_c-"), ("", "-"), ("é", "_-")],
)
def test_an_unsafe_value_is_replaced_and_marked_with_a_hash_of_the_original(
    value: str, prefix: str
) -> None:
    segment = path_segment(value)
    assert segment == prefix + hashlib.sha256(value.encode()).hexdigest()[:8]


def test_a_long_value_is_cut_and_two_long_values_stay_distinct() -> None:
    first, second = path_segment("a" * 150 + "1"), path_segment("a" * 150 + "2")
    assert first != second
    assert len(first) == len(second) == 100 + 9


def test_a_label_already_taken_gets_the_next_number() -> None:
    taken: set[str] = set()
    assert [unique("image-0", taken) for _ in range(3)] == ["image-0", "image-0-2", "image-0-3"]
    assert taken == {"image-0", "image-0-2", "image-0-3"}


@pytest.mark.parametrize(
    ("url_path", "content_type", "expected"),
    [
        ("/a/B.PNG", "application/octet-stream", ".png"),
        ("/a/video", "video/mp4", ".mp4"),
        ("/a/file.php", "image/jpeg", ".jpg"),
        ("/a/file", "", ".bin"),
        ("/a/file", "application/x-unknown-kind", ".bin"),
    ],
)
def test_the_extension_is_the_media_suffix_else_the_content_types_else_bin(
    url_path: str, content_type: str, expected: str
) -> None:
    assert extension(url_path, content_type) == expected


async def test_a_committed_part_file_is_the_whole_file_under_its_final_name(
    tmp_path: Path,
) -> None:
    final = tmp_path / "new" / "image-0.png"
    with PartFile(final) as part:
        part.write(b"abc")
        part.write(b"def")
        sha256 = await part.commit()
    assert final.read_bytes() == b"abcdef"
    assert (part.size, sha256) == (6, hashlib.sha256(b"abcdef").hexdigest())
    assert sorted(p.name for p in final.parent.iterdir()) == ["image-0.png"]
    assert unchanged(SavedFile("u", str(final), 6, sha256))
    final.write_bytes(b"abcdeF")
    assert not unchanged(SavedFile("u", str(final), 6, sha256))


def test_an_error_before_the_commit_removes_the_part_and_keeps_the_old_file(
    tmp_path: Path,
) -> None:
    final = tmp_path / "image-0.png"
    final.write_bytes(b"old")
    with pytest.raises(ValueError, match="refused"), PartFile(final) as part:
        part.write(b"new")
        raise ValueError("refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image-0.png"]
    assert final.read_bytes() == b"old"


def test_a_new_part_file_removes_the_parts_a_killed_process_left_for_that_name(
    tmp_path: Path,
) -> None:
    (tmp_path / ".image-0.png.k1ll3d00.part").write_bytes(b"half")
    (tmp_path / ".image-1.png.k1ll3d00.part").write_bytes(b"other name")
    with PartFile(tmp_path / "image-0.png") as part:
        leftovers = sorted(p.name for p in tmp_path.iterdir() if p != part.path)
        part.discard()
    assert leftovers == [".image-1.png.k1ll3d00.part"]


def test_a_writable_directory_is_created_and_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert writable_directory(Path("a/b")) == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
