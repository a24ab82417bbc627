"""The vision-language demo data: real scikit-image photographs and their descriptions, written at
run time in both record layouts, readable by the VL loader with no bad record."""
import json

import pytest

pytest.importorskip("skimage")

from planc.demo_vl_assets import describe, make_vl_demo_assets  # noqa: E402
from runtime.data.bad_records import BadRecords  # noqa: E402
from runtime.data.multimodal.docs import VLDocMaker, build_vl_store  # noqa: E402
from runtime.data.sources import Source, read_records  # noqa: E402

import vlfix  # noqa: E402


def test_describe_keeps_the_description_and_drops_links():
    import skimage.data

    title, details = describe(skimage.data.astronaut.__doc__)
    assert title == "Color image of the astronaut Eileen Collins."
    assert "Eileen Collins" in details and "http" not in details and "Returns" not in details


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_vl_demo_assets(tmp_path_factory.mktemp("vl_demo"))


def test_both_layouts_load_without_bad_records(assets):
    llava = json.loads(open(assets["llava"]).read())
    hf = [json.loads(line) for line in open(assets["hf"])]
    assert len(hf) == len(llava) >= 20
    assert any("video" in r for r in llava) and any("images" in r for r in llava)
    stores = []
    for path in (assets["hf"], assets["llava"]):
        proc = vlfix.processor("tiny-qwen3-vl", assets["tokenizer"], max_pixels=64 * 64)
        src = Source("demo", path, kind="sft")
        bad = BadRecords()
        stores.append(build_vl_store(read_records(src), VLDocMaker(src, proc, 1024, bad)))
        assert bad.total() == 0, bad.summary()
    a, b = stores
    assert len(a) == len(b) == len(hf)
    assert list(a.patches()) == list(b.patches()) and a.targets() == b.targets()
    assert a.kinds() == {"image", "video"}
