import json

import pytest
import yaml

from latentguard.monitors.catalog import FeatureCatalog
from latentguard.monitors.errors import NotFoundError, SAEFormatError

FEATURES = [
    {"index": 3, "label": "Python code", "description": "Source code in Python", "tags": ["code"]},
    {"index": 10, "label": "deception", "description": "The speaker lies or misleads"},
    {"index": 7, "label": "code comments", "description": "comments inside python code"},
    {"index": "42", "description": "Mentions of lying to authorities\nsecond line"},
    {"index": 5, "label": "cooking", "description": "recipes", "tags": ["food"]},
]


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "features.json"
    path.write_text(json.dumps({"features": FEATURES}))
    return FeatureCatalog.load(path, d_sae=64)


def test_get_and_list(catalog):
    assert catalog.get(10).label == "deception"
    assert catalog.get(42).label == "Mentions of lying to authorities"
    with pytest.raises(NotFoundError):
        catalog.get(11)
    assert [e.index for e in catalog.list(0, 3)] == [3, 5, 7]
    assert [e.index for e in catalog.list(3, 10)] == [10, 42]
    assert catalog.labels()[3] == "Python code"
    assert len(catalog) == 5


def test_search_ranks_label_matches_first(catalog):
    assert [e.index for e in catalog.search("deception")][:1] == [10]
    code = [e.index for e in catalog.search("python code")]
    assert code[0] == 3 and set(code) == {3, 7}
    assert [e.index for e in catalog.search("LYING")] == [42]
    assert [e.index for e in catalog.search("food")] == [5]
    assert catalog.search("zebra") == []
    assert catalog.search("code", limit=1) == [catalog.get(3)]
    assert catalog.search("  ") == []


def test_other_shapes(tmp_path):
    p = tmp_path / "features.yaml"
    p.write_text(yaml.safe_dump({"1": "one", "2": {"label": "two", "tags": ["x"]}}))
    cat = FeatureCatalog.load(p)
    assert cat.get(1).label == "one" and cat.get(2).tags == ("x",)
    q = tmp_path / "list.json"
    q.write_text(json.dumps([{"index": 0, "label": "zero"}]))
    assert FeatureCatalog.load(q).get(0).label == "zero"


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps(5), json.dumps([1, 2]), json.dumps({"x": "label"}),
     json.dumps([{"index": -1}]), json.dumps([{"index": 99}])],
)
def test_bad_catalogs(tmp_path, content):
    p = tmp_path / "features.json"
    p.write_text(content)
    with pytest.raises(SAEFormatError):
        FeatureCatalog.load(p, d_sae=64)
