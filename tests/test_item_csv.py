"""The one item-CSV reader (data/item_csv.py) used by the client, show_recommendations and the benchmarks."""
import pytest

from data.item_csv import read_items, read_titles
from schema import contract


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_file_and_a_folder_of_files_read_alike(tmp_path):
    (tmp_path / "items").mkdir()
    _write(tmp_path / "items" / "b.csv", "item_id,title,categories,description\ni3,Gamma,Drama,long text\n")
    first = _write(tmp_path / "items" / "a.csv", "item_id,title,categories\ni1,Alpha,Action|Crime\ni2,Beta,\n")
    items = read_items(str(tmp_path / "items"))
    assert items[contract.ITEM_ID] == ["i1", "i2", "i3"]                   # files in name order, rows in file order
    assert items[contract.DESCRIPTION] == ["", "", "long text"]           # an optional column a file lacks is ""
    assert read_titles(first) == {"i1": "Alpha", "i2": "Beta"}
    assert read_titles(str(tmp_path / "items")) == {"i1": "Alpha", "i2": "Beta", "i3": "Gamma"}
    assert list(items) == list(contract.ITEM_COLUMNS)


def test_a_file_without_a_required_column_is_named(tmp_path):
    movies = _write(tmp_path / "movies.csv", "movieId,title,genres\n1,Heat (1995),Action\n")
    with pytest.raises(ValueError, match=r"movies\.csv.*\['item_id'\]"):
        read_titles(movies)


def test_no_csv_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No item CSV"):
        read_items(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No item CSV"):
        read_items(str(tmp_path / "missing.csv"))
