"""`planc import`: other frameworks' training configs -> .veo plans (VeOmni YAML so far)."""
from .veomni import ImportResult, Note, import_veomni
from .yamlsrc import ImportError_

__all__ = ["import_veomni", "ImportResult", "Note", "ImportError_"]
