"""The Omni demo data: CPython's own test recordings (found from the running interpreter) and real
variants of one, written at run time, readable by the Omni loader path with no bad record."""
import pytest

from planc.demo_omni_assets import audiodata, make_omni_demo_assets
from runtime.data.bad_records import BadRecords
from runtime.data.multimodal.docs import VLDocMaker, build_vl_store
from runtime.data.sources import Source, read_records

import omnifix

pytestmark = pytest.mark.skipif(audiodata() is None, reason="this Python has no test/audiodata")


def test_recordings_load_without_bad_records(tmp_path):
    assets = make_omni_demo_assets(tmp_path / "omni_demo")
    assert assets["source"].startswith("CPython's test recordings")
    proc = omnifix.processor("tiny-qwen2.5-omni-thinker", assets["tokenizer"])
    src = Source("demo", assets["records"], kind="sft")
    bad = BadRecords()
    store = build_vl_store(read_records(src), VLDocMaker(src, proc, 256, bad))
    assert bad.total() == 0, bad.summary()
    assert len(store) >= 40 and store.kinds() == {"audio"}
    lengths = {len(store.ids[d]) for d in range(len(store))}
    assert len(lengths) > 3  # clips of different lengths (encodings, variants) give different token counts
