"""Vision-language and Omni training data: conversation records with images, videos and audio clips
(records.py), offline processing (media.py, video.py, audio.py, processor.py, omni.py, template.py;
build.py picks the processor), per-sample mrope positions (positions.py), documents and bad records
(docs.py), packed collation with a dummy vision input and a dummy clip for micro-batches without one
(collate.py), the loader (loader.py) and pre-launch checks (checks.py)."""
from .checks import check_vl_sources
from .collate import Collator, model_inputs
from .loader import build_vl_loader
from .media import MediaError, MediaSettings, settings_for
from .positions import RopeIndex
from .build import build_processor
from .processor import VLProcessor, load_hf_processor, save_hf_processor
from .records import RecordError, conversation
from .template import QWEN_VL_TEMPLATE

__all__ = ["check_vl_sources", "Collator", "model_inputs", "build_vl_loader", "MediaError", "MediaSettings", "settings_for",
           "RopeIndex", "VLProcessor", "build_processor", "load_hf_processor", "save_hf_processor", "RecordError",
           "conversation", "QWEN_VL_TEMPLATE"]
