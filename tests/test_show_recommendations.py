"""`python -m pipeline.show_recommendations` (the last step of `make run`) on a pushed SavedModel."""
import re

from pipeline import show_recommendations
from serving.synthetic_model import build_synthetic_model


def test_prints_k_distinct_items_with_their_titles(tmp_path, capsys):
    model_base = str(tmp_path / "serving_model" / "tower_recs")
    build_synthetic_model(model_base, 3, num_items=30, warmup=0)
    build_synthetic_model(model_base, 11, num_items=30, seed=1, warmup=0)
    data = tmp_path / "data"
    (data / "interactions" / "eval").mkdir(parents=True)
    (data / "items").mkdir()
    (data / "interactions" / "eval" / "interactions.csv").write_text(
        "user_id,item_id,timestamp,rating,history\n"
        "user_2,item_5,100,4.0,item_1 item_2\n"
        "user_2,item_6,200,4.0,item_1 item_2 item_5\n")
    (data / "items" / "items.csv").write_text(
        "item_id,title,categories,description\n" + "".join(f"item_{i},Title {i},c,d\n" for i in range(30)))

    assert show_recommendations.main(["--model_base", model_base, "--data", str(data), "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert f"Top-5 for user user_2 from {model_base}/11 (history: 3 items)" in out    # latest version, row
    rows = re.findall(r"^\s+\d+\s+(item_\d+)\s+-?\d+\.\d+\s+Title (\d+)$", out, re.M)
    assert len(rows) == 5 and len({item for item, _ in rows}) == 5
    assert all(item == f"item_{title}" for item, title in rows)                 # each title is its item's
    assert not {"item_1", "item_2", "item_5"} & {item for item, _ in rows}      # history excluded
