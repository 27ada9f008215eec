"""The contract doc's examples: abridged lists still pass the structure check against the full contract."""

import json

from doc_examples import MAX_LISTED, abridged, drift

CONTRACT = {
    "task": "age",
    "stream": {
        "age": {"gates": [{"gate": g, "per_stream": [{"frames": m} for m in range(1, 11)]} for g in (13, 16, 18)]}
    },
}


def test_long_lists_are_cut_to_their_first_item_and_short_ones_kept():
    shown = abridged(CONTRACT["stream"])
    assert len(shown["age"]["gates"]) == 3 <= MAX_LISTED < 10
    assert [len(g["per_stream"]) for g in shown["age"]["gates"]] == [1, 1, 1]
    assert abridged({"extensions": list(range(8)), "seconds": list(range(60))}) == {
        "extensions": list(range(8)),
        "seconds": [0],
    }


def test_an_abridged_example_does_not_drift_and_a_changed_one_does():
    doc = "<!-- example: age stream -->\n```json\n{body}\n```\n"
    assert drift(CONTRACT, doc.format(body=json.dumps(abridged(CONTRACT["stream"])))) == []
    renamed = abridged(CONTRACT["stream"])
    renamed["age"]["gates"][0]["per_stream"][0] = {"frame": 1}
    assert len(drift(CONTRACT, doc.format(body=json.dumps(renamed)))) == 1
